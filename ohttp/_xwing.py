"""X-Wing (draft-connolly-cfrg-xwing-kem-10), HPKE KEM 0x647A (MLKEM768-X25519 of draft-ietf-hpke-pq-04), and the
HPKE base-mode key schedule over it, with Export. Imports only ``cryptography``, hashlib and :mod:`ohttp.errors`.

Theory of operation: ``cryptography`` has ML-KEM-768 (from its 64-byte seed, encapsulate, decapsulate) and X25519,
but its HPKE is single-shot (no context, no sequence numbers, no Export), and OHTTP needs Export for the response
key and the sequence for chunks. So the KEM is composed here from those primitives, and RFC 9180's key schedule runs
on HMAC (two-stage HKDF KDFs) or SHAKE (the single-stage KDFs of hpke-pq §5, for the published vectors). There is no
lattice arithmetic in this module. The private key is the 32-byte seed and nothing else (xwing §5.5.1): it is what
is stored and exchanged, and the expanded keys are derived from it when the key is loaded.

Deterministic encapsulation (a fixed 64-byte ``eseed``) needs ML-KEM's derandomized Encaps, which ``cryptography``
does not offer; tests supply one through :data:`derandomized_mlkem_encaps` (a pure-Python ML-KEM, test-only).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Callable, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from . import _hkdf
from .errors import DecryptError, LocalProtocolError, UnsupportedError

__all__: list[str] = []

#: HPKE KEM id of X-Wing (draft-ietf-hpke-pq §8.2, "MLKEM768-X25519").
KEM_ID: Final = 0x647A
#: Serialized private key (the seed), public key, encapsulated key and shared secret lengths.
N_SK: Final = 32
N_PK: Final = 1216
N_ENC: Final = 1120
N_SECRET: Final = 32
#: Length of the encapsulation randomness for the derandomized form (xwing §5.4.1): ML-KEM m || X25519 scalar.
N_ESEED: Final = 64

#: The combiner's 6-byte label, ``\\.//^\\`` (xwing §5.3).
XWING_LABEL: Final = b"\x5c\x2e\x2f\x2f\x5e\x5c"
_MLKEM_PK: Final = 1184
_MLKEM_CT: Final = 1088
_HPKE_V1: Final = b"HPKE-v1"
_KEM_SUITE_ID: Final = b"KEM" + KEM_ID.to_bytes(2, "big")
_MODE_BASE: Final = b"\x00"

#: ``(ek, m) -> (shared_secret, ciphertext)``: FIPS 203 ML-KEM.Encaps_internal, for fixed-vector tests only.
MlKemEncapsDerand = Callable[[bytes, bytes], tuple[bytes, bytes]]
#: Set by tests (pytest ``monkeypatch``) to allow a fixed ``eseed``; ``None`` in the product.
derandomized_mlkem_encaps: MlKemEncapsDerand | None = None

# Two-stage KDFs (RFC 9180 §7.2): id -> (hash name, Nh).
_HKDF: Final = {0x0001: ("sha256", 32), 0x0002: ("sha384", 48), 0x0003: ("sha512", 64)}
# Single-stage KDFs (hpke-pq §5): id -> (hashlib constructor name, Nh). Not usable with OHTTP (RFC 9458 §4.4 needs
# Extract/Expand), kept for the HPKE vectors.
_SHAKE: Final = {0x0010: ("shake_128", 32), 0x0011: ("shake_256", 64)}
# AEADs: id -> (Nk, Nn).
_AEAD: Final = {0x0001: (16, 12), 0x0002: (32, 12), 0x0003: (32, 12)}


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def expand_seed(seed: bytes) -> tuple[bytes, bytes]:
    """SHAKE256(seed, 96) split into the ML-KEM-768 (d, z) seed (64 bytes) and the X25519 scalar (32 bytes)."""
    if len(seed) != N_SK:
        raise LocalProtocolError(f"x-wing private key must be {N_SK} bytes, got {len(seed)}")
    expanded = hashlib.shake_256(seed).digest(96)
    return expanded[:64], expanded[64:]


def _labeled_derive_shake256(ikm: bytes, suite_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
    return _labeled_derive("shake_256", ikm, suite_id, label, context, length)


def _labeled_derive(name: str, ikm: bytes, suite_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
    # hpke-pq §5: ikm || "HPKE-v1" || suite_id || lp(label) || I2OSP(L, 2) || context, then SHAKE to L bytes.
    data = ikm + _HPKE_V1 + suite_id + len(label).to_bytes(2, "big") + label + length.to_bytes(2, "big") + context
    out: bytes = getattr(hashlib, name)(data).digest(length)
    return out


class XWingPrivateKey:
    """An X-Wing decapsulation key: the 32-byte seed, with its expanded keys and public key computed once."""

    __slots__ = ("_seed", "_mlkem", "_x25519", "_pk_x", "public_bytes")

    def __init__(self, seed: bytes) -> None:
        d_z, x_scalar = expand_seed(seed)
        self._seed = bytes(seed)
        self._mlkem = MLKEM768PrivateKey.from_seed_bytes(d_z)
        self._x25519 = X25519PrivateKey.from_private_bytes(x_scalar)
        self._pk_x = self._x25519.public_key().public_bytes_raw()
        #: ML-KEM-768 encapsulation key (1184 bytes) || X25519 public key (32 bytes).
        self.public_bytes: bytes = self._mlkem.public_key().public_bytes_raw() + self._pk_x

    @classmethod
    def generate(cls) -> XWingPrivateKey:
        """A fresh key from the operating system's randomness (xwing §5.2 GenerateKeyPair)."""
        return cls(os.urandom(N_SK))

    @classmethod
    def derive(cls, ikm: bytes) -> XWingPrivateKey:
        """HPKE DeriveKeyPair(ikm) of hpke-pq §4: seed = SHAKE256.LabeledDerive(ikm, "DeriveKeyPair", "", 32).

        Not the xwing draft's own §5.6 rule (SHAKE256(ikm, 32)); store the seed, not the ikm, to stay portable.
        """
        return cls(_labeled_derive_shake256(ikm, _KEM_SUITE_ID, b"DeriveKeyPair", b"", N_SK))

    def private_bytes(self) -> bytes:
        """The 32-byte seed (SerializePrivateKey is the identity)."""
        return self._seed

    def decapsulate(self, enc: bytes) -> bytes:
        """xwing §5.4 Decapsulate; a wrong-length ``enc`` or a low-order X25519 point is a :class:`DecryptError`.

        A tampered ML-KEM ciphertext decapsulates to a wrong secret (implicit rejection): it fails at the AEAD.
        """
        if len(enc) != N_ENC:
            raise DecryptError(f"x-wing encapsulated key is {len(enc)} bytes, need {N_ENC}")
        ct_x = enc[_MLKEM_CT:]
        try:
            ss_m = self._mlkem.decapsulate(enc[:_MLKEM_CT])
            ss_x = self._x25519.exchange(X25519PublicKey.from_public_bytes(ct_x))
        except ValueError:
            raise DecryptError("x-wing decapsulation failed") from None
        return _combine(ss_m, ss_x, ct_x, self._pk_x)


class XWingPublicKey:
    """An X-Wing encapsulation key, parsed once (clients cache it per key configuration)."""

    __slots__ = ("_mlkem", "_x25519", "_pk_x", "public_bytes")

    def __init__(self, public_bytes: bytes) -> None:
        if len(public_bytes) != N_PK:
            raise UnsupportedError(f"x-wing public key is {len(public_bytes)} bytes, need {N_PK}")
        try:
            self._mlkem = MLKEM768PublicKey.from_public_bytes(public_bytes[:_MLKEM_PK])
        except ValueError:
            raise UnsupportedError("invalid ml-kem-768 encapsulation key") from None
        self._pk_x = bytes(public_bytes[_MLKEM_PK:])
        self._x25519 = X25519PublicKey.from_public_bytes(self._pk_x)
        self.public_bytes = bytes(public_bytes)

    def encapsulate(self, eseed: bytes | None = None) -> tuple[bytes, bytes]:
        """xwing §5.4 Encapsulate -> ``(shared_secret, enc)``; ``eseed`` (64 bytes) is for test vectors only."""
        if eseed is None:
            ss_m, ct_m = self._mlkem.encapsulate()
            eph = X25519PrivateKey.generate()
        else:
            if len(eseed) != N_ESEED:
                raise LocalProtocolError(f"x-wing eseed must be {N_ESEED} bytes, got {len(eseed)}")
            if derandomized_mlkem_encaps is None:
                raise LocalProtocolError("a fixed x-wing eseed needs a derandomized ml-kem (test vectors only)")
            ss_m, ct_m = derandomized_mlkem_encaps(self.public_bytes[:_MLKEM_PK], eseed[:32])
            eph = X25519PrivateKey.from_private_bytes(eseed[32:])
        ct_x = eph.public_key().public_bytes_raw()
        try:
            ss_x = eph.exchange(self._x25519)
        except ValueError:
            raise UnsupportedError("x-wing public key has a low-order x25519 point") from None
        return _combine(ss_m, ss_x, ct_x, self._pk_x), ct_m + ct_x


# ---------------------------------------------------------------------------------------------------------------
# HPKE (RFC 9180 §5, base mode) with KEM 0x647A


def suite_id(kdf: int, aead: int) -> bytes:
    """``"HPKE" || kem_id || kdf_id || aead_id``."""
    return b"HPKE" + KEM_ID.to_bytes(2, "big") + kdf.to_bytes(2, "big") + aead.to_bytes(2, "big")


class _Kdf:
    """LabeledExtract/Expand (two-stage) or LabeledDerive (single-stage) under one suite id."""

    __slots__ = ("kdf_id", "_sid", "_name", "n_h", "single_stage")

    def __init__(self, kdf: int, sid: bytes) -> None:
        self.kdf_id = kdf
        self._sid = sid
        if kdf in _HKDF:
            self._name, self.n_h = _HKDF[kdf]
            self.single_stage = False
        elif kdf in _SHAKE:
            self._name, self.n_h = _SHAKE[kdf]
            self.single_stage = True
        else:
            raise UnsupportedError(f"unsupported kdf id 0x{kdf:04x}")

    def extract(self, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return hmac.digest(salt, _HPKE_V1 + self._sid + label + ikm, self._name)

    def expand(self, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        labeled = length.to_bytes(2, "big") + _HPKE_V1 + self._sid + label + info
        return _hkdf.expand(self._name, prk, labeled, length)

    def derive(self, ikm: bytes, label: bytes, context: bytes, length: int) -> bytes:
        return _labeled_derive(self._name, ikm, self._sid, label, context, length)


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


class XWingContext:
    """An HPKE base-mode context (sender or recipient): seal/open with the sequence number, and Export.

    Satisfies ``ohttp._hpke.HpkeContext``. Sequence numbers advance on each seal (sender) or successful open
    (recipient), as RFC 9180 §5.2 says; a failed open does not advance it.
    """

    __slots__ = ("_kdf", "_cipher", "base_nonce", "exporter_secret", "key", "_seq")

    def __init__(self, kdf: int, aead: int, shared_secret: bytes, info: bytes) -> None:
        if aead not in _AEAD:
            raise UnsupportedError(f"unsupported aead id 0x{aead:04x}")
        n_k, n_n = _AEAD[aead]
        k = _Kdf(kdf, suite_id(kdf, aead))
        if k.single_stage:
            # hpke-pq §5: one LabeledDerive over lp(psk) || lp(ss), context mode || lp(psk_id) || lp(info).
            secrets = _lp(b"") + _lp(shared_secret)
            context = _MODE_BASE + _lp(b"") + _lp(info)
            out = k.derive(secrets, b"secret", context, n_k + n_n + k.n_h)
            key, base_nonce, exporter_secret = out[:n_k], out[n_k : n_k + n_n], out[n_k + n_n :]
        else:
            psk_id_hash = k.extract(b"", b"psk_id_hash", b"")
            info_hash = k.extract(b"", b"info_hash", info)
            ks_context = _MODE_BASE + psk_id_hash + info_hash
            secret = k.extract(shared_secret, b"secret", b"")
            key = k.expand(secret, b"key", ks_context, n_k)
            base_nonce = k.expand(secret, b"base_nonce", ks_context, n_n)
            exporter_secret = k.expand(secret, b"exp", ks_context, k.n_h)
        self._kdf = k
        self._cipher: AESGCM | ChaCha20Poly1305 = ChaCha20Poly1305(key) if aead == 0x0003 else AESGCM(key)
        #: Exposed for test vectors; never log them.
        self.key = key
        self.base_nonce = base_nonce
        self.exporter_secret = exporter_secret
        self._seq = 0

    def _nonce(self) -> bytes:
        n = len(self.base_nonce)
        if self._seq >= (1 << (8 * n)) - 1:
            raise LocalProtocolError("hpke sequence number overflow")
        return (int.from_bytes(self.base_nonce, "big") ^ self._seq).to_bytes(n, "big")

    def seal(self, pt: bytes, aad: bytes = b"") -> bytes:
        """Seal ``pt`` with the next nonce."""
        ct = self._cipher.encrypt(self._nonce(), pt, aad or None)
        self._seq += 1
        return ct

    def open(self, ct: bytes, aad: bytes = b"") -> bytes:
        """Open ``ct`` with the next nonce; :class:`DecryptError` if authentication fails."""
        try:
            pt = self._cipher.decrypt(self._nonce(), ct, aad or None)
        except InvalidTag:
            raise DecryptError("hpke open failed") from None
        self._seq += 1
        return pt

    def export(self, exporter_context: bytes, length: int) -> bytes:
        """RFC 9180 §5.3 Export (LabeledExpand or, single-stage, LabeledDerive of ``"sec"``)."""
        if self._kdf.single_stage:
            return self._kdf.derive(self.exporter_secret, b"sec", exporter_context, length)
        if length > 255 * self._kdf.n_h:
            raise LocalProtocolError(f"export length {length} too large")
        return self._kdf.expand(self.exporter_secret, b"sec", exporter_context, length)


def setup_base_s(
    public_key: XWingPublicKey | bytes, kdf: int, aead: int, info: bytes, eseed: bytes | None = None
) -> tuple[bytes, XWingContext]:
    """SetupBaseS(pkR, info) -> ``(enc, context)``; ``eseed`` fixes the encapsulation for test vectors only."""
    pk = public_key if isinstance(public_key, XWingPublicKey) else XWingPublicKey(public_key)
    shared_secret, enc = pk.encapsulate(eseed)
    return enc, XWingContext(kdf, aead, shared_secret, info)


def setup_base_r(private_key: XWingPrivateKey, enc: bytes, kdf: int, aead: int, info: bytes) -> XWingContext:
    """SetupBaseR(enc, skR, info)."""
    return XWingContext(kdf, aead, private_key.decapsulate(enc), info)
