"""RSA blind signatures, RFC 9474: the RSABSSA-SHA384 variants on ``cryptography``'s RSA keys.

Sans-I/O: integers and bytes only. The client side (prepare, blind, finalize) is plain modular arithmetic on public
numbers. The signer's private-key operation (:func:`blind_sign`) resists timing: the input is re-blinded with a fresh
random value (so the secret exponentiation never runs on a value the requester chose), the two CRT halves are
computed with GMP's ``mpz_powm_sec`` (``gmpy2.powmod_sec``, whose time and memory-access pattern do not depend on the
exponent or the base), and the result is checked against the public key before release (RFC 9474 §4.3, a fault
guard). Python's ``pow(x, d, n)`` is a sliding-window exponentiation whose timing depends on ``d``; it is never used
with a private exponent here.
"""

from __future__ import annotations

import enum
import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Final

import gmpy2
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import DecodeError, LocalProtocolError, VerifyError

__all__ = [
    "Variant",
    "RSABSSA_SHA384_PSS_RANDOMIZED",
    "RSABSSA_SHA384_PSSZERO_RANDOMIZED",
    "RSABSSA_SHA384_PSS_DETERMINISTIC",
    "RSABSSA_SHA384_PSSZERO_DETERMINISTIC",
    "BlindingState",
    "SigningKey",
    "prepare",
    "emsa_pss_encode",
    "blind",
    "blind_sign",
    "finalize",
    "verify",
    "spki_pss",
    "load_spki",
]

_HASH_LEN: Final = 48  # SHA-384
_PREFIX_LEN: Final = 32  # RFC 9474 §4.1: randomized preparation prepends 32 random bytes

#: AlgorithmIdentifier id-RSASSA-PSS with explicit SHA-384, MGF1-SHA-384, salt 48 (RFC 9578 §6.5), as DER.
PSS_SHA384_ALGORITHM_ID: Final = bytes.fromhex(
    "303d06092a864886f70d01010a3030a00d300b0609608648016503040202"
    "a11a301806092a864886f70d010108300b0609608648016503040202a203020130"
)


class Prepare(enum.Enum):
    """How a message is prepared before signing (RFC 9474 §4.1)."""

    #: the message itself
    IDENTITY = "identity"
    #: 32 random bytes, then the message
    RANDOMIZED = "randomized"


@dataclass(frozen=True, slots=True)
class Variant:
    """One RSABSSA variant (RFC 9474 §5): hash SHA-384, a PSS salt length and a preparation."""

    name: str
    salt_length: int
    prepare: Prepare


RSABSSA_SHA384_PSS_RANDOMIZED: Final = Variant("RSABSSA-SHA384-PSS-Randomized", 48, Prepare.RANDOMIZED)
RSABSSA_SHA384_PSSZERO_RANDOMIZED: Final = Variant("RSABSSA-SHA384-PSSZERO-Randomized", 0, Prepare.RANDOMIZED)
RSABSSA_SHA384_PSS_DETERMINISTIC: Final = Variant("RSABSSA-SHA384-PSS-Deterministic", 48, Prepare.IDENTITY)
RSABSSA_SHA384_PSSZERO_DETERMINISTIC: Final = Variant("RSABSSA-SHA384-PSSZERO-Deterministic", 0, Prepare.IDENTITY)


@dataclass(frozen=True, slots=True)
class BlindingState:
    """What the client keeps between :func:`blind` and :func:`finalize`: the prepared message and ``r^-1 mod n``."""

    prepared_msg: bytes
    inv: int


def _modulus_len(public_key: rsa.RSAPublicKey) -> int:
    return (public_key.key_size + 7) // 8


def _i2osp(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _os2ip(data: bytes) -> int:
    return int.from_bytes(data, "big")


def _mgf1_sha384(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha384(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def prepare(variant: Variant, msg: bytes, *, msg_prefix: bytes | None = None) -> bytes:
    """RFC 9474 §4.1 Prepare: ``msg`` or 32 random bytes then ``msg`` (``msg_prefix`` injects them, for vectors)."""
    if variant.prepare is Prepare.IDENTITY:
        if msg_prefix:
            raise LocalProtocolError(f"{variant.name} takes no message prefix")
        return msg
    prefix = secrets.token_bytes(_PREFIX_LEN) if msg_prefix is None else msg_prefix
    if len(prefix) != _PREFIX_LEN:
        raise LocalProtocolError(f"message prefix must be {_PREFIX_LEN} bytes, got {len(prefix)}")
    return prefix + msg


def emsa_pss_encode(msg: bytes, em_bits: int, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017 §9.1.1) with SHA-384 and MGF1-SHA-384."""
    em_len = (em_bits + 7) // 8
    if em_len < _HASH_LEN + len(salt) + 2:
        raise LocalProtocolError(f"modulus too short for PSS: {em_len} bytes, salt {len(salt)}")
    m_hash = hashlib.sha384(msg).digest()
    h = hashlib.sha384(b"\x00" * 8 + m_hash + salt).digest()
    db = b"\x00" * (em_len - len(salt) - _HASH_LEN - 2) + b"\x01" + salt
    masked = bytearray(a ^ b for a, b in zip(db, _mgf1_sha384(h, em_len - _HASH_LEN - 1), strict=True))
    masked[0] &= 0xFF >> (8 * em_len - em_bits)
    return bytes(masked) + h + b"\xbc"


def blind(
    variant: Variant,
    public_key: rsa.RSAPublicKey,
    prepared_msg: bytes,
    *,
    salt: bytes | None = None,
    r: int | None = None,
) -> tuple[bytes, BlindingState]:
    """RFC 9474 §4.2 Blind: ``(blinded_msg, state)``. ``salt`` and ``r`` inject the random values, for vectors.

    Raises:
        LocalProtocolError: an injected salt of the wrong length or an ``r`` with no inverse mod n.
        VerifyError: the encoded message shares a factor with n (never for a real key; RFC 9474 §4.2 step 4).
    """
    numbers = public_key.public_numbers()
    n, e = numbers.n, numbers.e
    k = _modulus_len(public_key)
    if salt is None:
        salt = secrets.token_bytes(variant.salt_length)
    elif len(salt) != variant.salt_length:
        raise LocalProtocolError(f"{variant.name} salt must be {variant.salt_length} bytes, got {len(salt)}")
    encoded = emsa_pss_encode(prepared_msg, n.bit_length() - 1, salt)
    m = _os2ip(encoded)
    if math.gcd(m, n) != 1:
        raise VerifyError("encoded message is not invertible mod n")
    if r is None:
        while True:
            r = secrets.randbelow(n - 2) + 2
            if math.gcd(r, n) == 1:
                break
    elif not 1 < r < n or math.gcd(r, n) != 1:
        raise LocalProtocolError("blind r must be in (1, n) and invertible mod n")
    inv = pow(r, -1, n)
    blinded = (m * pow(r, e, n)) % n
    return _i2osp(blinded, k), BlindingState(prepared_msg=prepared_msg, inv=inv)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key's numbers as GMP integers, prepared once for :func:`blind_sign`; never logged or printed."""

    n: gmpy2.mpz
    e: gmpy2.mpz
    p: gmpy2.mpz
    q: gmpy2.mpz
    dmp1: gmpy2.mpz
    dmq1: gmpy2.mpz
    iqmp: gmpy2.mpz

    @classmethod
    def from_private_key(cls, private_key: rsa.RSAPrivateKey) -> SigningKey:
        """Prepare ``private_key`` for signing."""
        numbers = private_key.private_numbers()
        return cls(
            n=gmpy2.mpz(numbers.public_numbers.n), e=gmpy2.mpz(numbers.public_numbers.e),
            p=gmpy2.mpz(numbers.p), q=gmpy2.mpz(numbers.q),
            dmp1=gmpy2.mpz(numbers.dmp1), dmq1=gmpy2.mpz(numbers.dmq1), iqmp=gmpy2.mpz(numbers.iqmp),
        )

    def __repr__(self) -> str:
        return f"SigningKey(<{int(self.n).bit_length()}-bit RSA, private>)"


def blind_sign(key: SigningKey | rsa.RSAPrivateKey, blinded_msg: bytes) -> bytes:
    """RFC 9474 §4.3 BlindSign: ``blinded_msg^d mod n``, timing-safe (see the module's docstring), checked.

    Raises:
        DecodeError: ``blinded_msg`` is not exactly the modulus length, or is not below n.
        VerifyError: the signature does not verify (a fault during signing); nothing is released.
    """
    sk = key if isinstance(key, SigningKey) else SigningKey.from_private_key(key)
    k = (int(sk.n).bit_length() + 7) // 8
    if len(blinded_msg) != k:
        raise DecodeError(f"blinded message must be {k} bytes, got {len(blinded_msg)}")
    m = gmpy2.mpz(_os2ip(blinded_msg))
    if m >= sk.n:
        raise DecodeError("blinded message out of range: not below the modulus")
    # Base blinding: sign m * b^e, then multiply by b^-1. b is fresh and secret, so the values that go through the
    # secret-exponent operations are uniformly random and unknown to the requester.
    while True:
        b = gmpy2.mpz(secrets.randbelow(int(sk.n) - 2) + 2)
        if gmpy2.gcd(b, sk.n) == 1:
            break
    x = (m * gmpy2.powmod(b, sk.e, sk.n)) % sk.n
    s_p = gmpy2.powmod_sec(x % sk.p, sk.dmp1, sk.p)
    s_q = gmpy2.powmod_sec(x % sk.q, sk.dmq1, sk.q)
    s_blinded = s_q + ((sk.iqmp * (s_p - s_q)) % sk.p) * sk.q
    s = (s_blinded * gmpy2.invert(b, sk.n)) % sk.n
    if gmpy2.powmod(s, sk.e, sk.n) != m:
        raise VerifyError("blind signature failed its own check; not released")
    return _i2osp(int(s), k)


def _pss(salt_length: int) -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=salt_length)


def verify(variant: Variant, public_key: rsa.RSAPublicKey, prepared_msg: bytes, sig: bytes) -> None:
    """RSASSA-PSS-VERIFY of ``sig`` over ``prepared_msg`` with the variant's salt length.

    Raises:
        VerifyError: the signature does not verify (or is the wrong length).
    """
    if len(sig) != _modulus_len(public_key):
        raise VerifyError(f"signature must be {_modulus_len(public_key)} bytes, got {len(sig)}")
    try:
        public_key.verify(sig, prepared_msg, _pss(variant.salt_length), hashes.SHA384())
    except InvalidSignature:
        raise VerifyError("signature does not verify") from None


def finalize(variant: Variant, public_key: rsa.RSAPublicKey, state: BlindingState, blind_sig: bytes) -> bytes:
    """RFC 9474 §4.4 Finalize: unblind ``blind_sig`` and verify it; the signature over ``state.prepared_msg``.

    Raises:
        DecodeError: ``blind_sig`` is not the modulus length.
        VerifyError: the unblinded signature does not verify (a misbehaving signer or the wrong key).
    """
    n = public_key.public_numbers().n
    k = _modulus_len(public_key)
    if len(blind_sig) != k:
        raise DecodeError(f"blind signature must be {k} bytes, got {len(blind_sig)}")
    z = _os2ip(blind_sig)
    if z >= n:
        raise DecodeError("blind signature out of range: not below the modulus")
    sig = _i2osp((z * state.inv) % n, k)
    verify(variant, public_key, state.prepared_msg, sig)
    return sig


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def spki_pss(public_key: rsa.RSAPublicKey) -> bytes:
    """The SubjectPublicKeyInfo DER with the id-RSASSA-PSS OID and SHA-384/MGF1/salt-48 parameters (RFC 9578 §6.5).

    ``cryptography`` writes RSA keys as rsaEncryption SPKIs, whose hash would be another token key id.
    """
    pkcs1 = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    bit_string = b"\x03" + _der_length(len(pkcs1) + 1) + b"\x00" + pkcs1
    body = PSS_SHA384_ALGORITHM_ID + bit_string
    return b"\x30" + _der_length(len(body)) + body


def load_spki(spki: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from its id-RSASSA-PSS SPKI (exactly the form :func:`spki_pss` writes).

    Raises:
        DecodeError: not DER, not RSA, or not the RSASSA-PSS SHA-384 form (another form has another key id).
    """
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"token key is not a valid SubjectPublicKeyInfo ({len(spki)} bytes)") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise DecodeError("token key is not an RSA key")
    if spki_pss(key) != spki:
        raise DecodeError("token key is not in the RSASSA-PSS SHA-384 SubjectPublicKeyInfo form")
    return key
