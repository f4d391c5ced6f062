"""HPKE (RFC 9180) for OHTTP: algorithm ids and sizes, sender/recipient set-up, and the plain HKDF/AEAD that
RFC 9458 §4.4 uses for responses. This is the only module that imports pyhpke; X-Wing (KEM 0x647A, which pyhpke
lacks) dispatches to :mod:`ohttp._xwing` here, so nothing above this module sees the difference.

Theory of operation: pyhpke does the KEM and the key schedule. Two things are cached per key rather than per
message, because they dominate a gateway's cost: the deserialized private key and its public key (pyhpke's
``decap`` re-derives pkR, one extra scalar multiplication, unless the key object hands back a cached one), and
the ``CipherSuite`` objects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from enum import IntEnum
from functools import lru_cache
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import AEADId as _PAEADId
from pyhpke import CipherSuite, KEMKeyInterface, KEMKeyPair
from pyhpke import KDFId as _PKDFId
from pyhpke import KEMId as _PKEMId

from . import _hkdf, _xwing
from .errors import DecryptError, LocalProtocolError, UnsupportedError

__all__ = ["KemId", "KdfId", "AeadId"]


class KemId(IntEnum):
    """HPKE KEM identifiers (RFC 9180 §7.1) that this package can use."""

    #: DHKEM(P-256, HKDF-SHA256)
    P256_SHA256 = 0x0010
    #: DHKEM(P-384, HKDF-SHA384)
    P384_SHA384 = 0x0011
    #: DHKEM(P-521, HKDF-SHA512)
    P521_SHA512 = 0x0012
    #: DHKEM(X25519, HKDF-SHA256)
    X25519_SHA256 = 0x0020
    #: DHKEM(X448, HKDF-SHA512)
    X448_SHA512 = 0x0021
    #: X-Wing: ML-KEM-768 + X25519 (draft-connolly-cfrg-xwing-kem; "MLKEM768-X25519" in draft-ietf-hpke-pq)
    XWING = 0x647A

    @property
    def n_pk(self) -> int:
        """Length of a public key (Npk)."""
        return _KEM_NPK[self]

    @property
    def n_enc(self) -> int:
        """Length of ``enc`` (Nenc; equal to Npk except for X-Wing: 1120 against 1216)."""
        return _xwing.N_ENC if self is KemId.XWING else _KEM_NPK[self]

    @property
    def post_quantum(self) -> bool:
        """Whether the KEM resists a quantum adversary (the hybrid X-Wing does; the DHKEMs do not)."""
        return self is KemId.XWING

    @property
    def n_sk(self) -> int:
        """Length of a serialized private key."""
        return _KEM_NSK[self]


class KdfId(IntEnum):
    """HPKE KDF identifiers (RFC 9180 §7.2)."""

    HKDF_SHA256 = 0x0001
    HKDF_SHA384 = 0x0002
    HKDF_SHA512 = 0x0003


class AeadId(IntEnum):
    """HPKE AEAD identifiers (RFC 9180 §7.3); export-only (0xFFFF) cannot seal and is not usable for OHTTP."""

    AES_128_GCM = 0x0001
    AES_256_GCM = 0x0002
    CHACHA20_POLY1305 = 0x0003

    @property
    def n_k(self) -> int:
        """Key length."""
        return 16 if self is AeadId.AES_128_GCM else 32

    @property
    def n_n(self) -> int:
        """Nonce length."""
        return 12

    @property
    def n_t(self) -> int:
        """Tag length."""
        return 16


_KEM_NPK: Final = {
    KemId.P256_SHA256: 65,
    KemId.P384_SHA384: 97,
    KemId.P521_SHA512: 133,
    KemId.X25519_SHA256: 32,
    KemId.X448_SHA512: 56,
    KemId.XWING: _xwing.N_PK,
}
_KEM_NSK: Final = {
    KemId.P256_SHA256: 32,
    KemId.P384_SHA384: 48,
    KemId.P521_SHA512: 66,
    KemId.X25519_SHA256: 32,
    KemId.X448_SHA512: 56,
    KemId.XWING: _xwing.N_SK,
}
_HASHES: Final = {KdfId.HKDF_SHA256: "sha256", KdfId.HKDF_SHA384: "sha384", KdfId.HKDF_SHA512: "sha512"}
_HASH_LEN: Final = {KdfId.HKDF_SHA256: 32, KdfId.HKDF_SHA384: 48, KdfId.HKDF_SHA512: 64}


def kem_id(value: int) -> KemId:
    """Map a wire value to a :class:`KemId` or raise :class:`UnsupportedError`."""
    try:
        return KemId(value)
    except ValueError:
        raise UnsupportedError(f"unsupported kem id 0x{value:04x}") from None


def kdf_id(value: int) -> KdfId:
    """Map a wire value to a :class:`KdfId` or raise :class:`UnsupportedError`."""
    try:
        return KdfId(value)
    except ValueError:
        raise UnsupportedError(f"unsupported kdf id 0x{value:04x}") from None


def aead_id(value: int) -> AeadId:
    """Map a wire value to an :class:`AeadId` or raise :class:`UnsupportedError`."""
    try:
        return AeadId(value)
    except ValueError:
        raise UnsupportedError(f"unsupported aead id 0x{value:04x}") from None


class HpkeContext(Protocol):
    """The part of a pyhpke context that OHTTP uses."""

    def seal(self, pt: bytes, aad: bytes = b"") -> bytes: ...

    def open(self, ct: bytes, aad: bytes = b"") -> bytes: ...

    def export(self, exporter_context: bytes, length: int) -> bytes: ...


@lru_cache(maxsize=None)
def cipher_suite(kem: KemId, kdf: KdfId, aead: AeadId) -> CipherSuite:
    """A cached pyhpke suite; building one costs microseconds that a hot path should not pay."""
    return CipherSuite.new(_PKEMId(int(kem)), _PKDFId(int(kdf)), _PAEADId(int(aead)))


def _kem_only(kem: KemId) -> CipherSuite:
    # The KEM half does not depend on KDF/AEAD; any pair gives the same KEM object.
    return cipher_suite(kem, KdfId.HKDF_SHA256, AeadId.AES_128_GCM)


class _CachedPublicKey:
    """Stands in for a ``cryptography`` private key inside pyhpke: ``public_key()`` is computed once."""

    __slots__ = ("_sk", "_pk")

    def __init__(self, sk: Any) -> None:
        self._sk = sk
        self._pk = sk.public_key()

    def public_key(self) -> Any:
        return self._pk

    def exchange(self, *args: Any) -> bytes:
        out: bytes = self._sk.exchange(*args)
        return out


class _RecipientKey(KEMKeyInterface):
    def __init__(self, inner: KEMKeyInterface) -> None:
        super().__init__(_CachedPublicKey(inner.raw))
        self._inner = inner

    def to_private_bytes(self) -> bytes:
        out: bytes = self._inner.to_private_bytes()
        return out


class PrivateKey:
    """An HPKE private key with its public key, deserialized once and reused for every decapsulation.

    For X-Wing the private key is the 32-byte seed (xwing §5.5.1): that is what :meth:`private_bytes` gives and
    :meth:`from_private_bytes` takes.
    """

    __slots__ = ("kem", "_sk", "public_bytes")

    def __init__(self, kem: KemId, sk: KEMKeyInterface | _xwing.XWingPrivateKey, public_bytes: bytes) -> None:
        self.kem = kem
        self._sk: _RecipientKey | _xwing.XWingPrivateKey = (
            sk if isinstance(sk, _xwing.XWingPrivateKey) else _RecipientKey(sk)
        )
        self.public_bytes = public_bytes

    @classmethod
    def _from_xwing(cls, sk: _xwing.XWingPrivateKey) -> PrivateKey:
        return cls(KemId.XWING, sk, sk.public_bytes)

    @classmethod
    def generate(cls, kem: KemId) -> PrivateKey:
        """A fresh random key pair."""
        if kem is KemId.XWING:
            return cls._from_xwing(_xwing.XWingPrivateKey.generate())
        pair = _kem_only(kem).kem.derive_key_pair(_random(kem.n_sk * 2))
        return cls._from_pair(kem, pair)

    @classmethod
    def derive(cls, kem: KemId, ikm: bytes) -> PrivateKey:
        """RFC 9180 DeriveKeyPair(ikm): the same seed always gives the same key pair."""
        # RFC 9180 §7.1.3: ikm SHOULD carry at least Nsk bytes of entropy; below 16 bytes is certainly a mistake.
        if len(ikm) < 16:
            raise LocalProtocolError(f"seed too short: {len(ikm)} bytes, need at least 16 (better {kem.n_sk})")
        if kem is KemId.XWING:
            # hpke-pq §4 DeriveKeyPair; other X-Wing libraries may derive differently, so persist the seed instead.
            return cls._from_xwing(_xwing.XWingPrivateKey.derive(ikm))
        return cls._from_pair(kem, _kem_only(kem).kem.derive_key_pair(ikm))

    @classmethod
    def from_private_bytes(cls, kem: KemId, data: bytes) -> PrivateKey:
        """Load a serialized private key (for tests and key-management integrations)."""
        if len(data) != kem.n_sk:
            raise LocalProtocolError(f"private key must be {kem.n_sk} bytes, got {len(data)}")
        if kem is KemId.XWING:
            return cls._from_xwing(_xwing.XWingPrivateKey(data))
        k = _kem_only(kem).kem
        try:
            sk = k.deserialize_private_key(data)
        except Exception as exc:
            raise LocalProtocolError(f"invalid private key for kem 0x{int(kem):04x}") from exc
        pk = KEMKeyInterface(sk.raw.public_key())
        return cls(kem, sk, _public_bytes(kem, pk.raw))

    @classmethod
    def _from_pair(cls, kem: KemId, pair: KEMKeyPair) -> PrivateKey:
        return cls(kem, pair.private_key, pair.public_key.to_public_bytes())

    def private_bytes(self) -> bytes:
        """The serialized private key (Nsk bytes); callers decide whether it may leave memory."""
        if isinstance(self._sk, _xwing.XWingPrivateKey):
            return self._sk.private_bytes()
        out = self._sk.to_private_bytes()
        # pyhpke 0.6 writes an EC scalar on key_size *bytes* (256 for P-256), zeros first; RFC 9180 wants Nsk.
        return out[-self.kem.n_sk :]

    def setup_recipient(self, kdf: KdfId, aead: AeadId, enc: bytes, info: bytes) -> HpkeContext:
        """SetupBaseR(enc, skR, info); a bad ``enc`` is a :class:`DecryptError`."""
        if isinstance(self._sk, _xwing.XWingPrivateKey):
            return _xwing.setup_base_r(self._sk, enc, int(kdf), int(aead), info)
        suite = cipher_suite(self.kem, kdf, aead)
        try:
            ctx: HpkeContext = suite.create_recipient_context(enc, self._sk, info)
        except Exception as exc:
            raise DecryptError("hpke decapsulation failed") from exc
        return ctx


def _public_bytes(kem: KemId, raw: Any) -> bytes:
    if kem in (KemId.X25519_SHA256, KemId.X448_SHA512):
        out: bytes = raw.public_bytes(Encoding.Raw, PublicFormat.Raw)
    else:
        out = raw.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return out


@lru_cache(maxsize=256)
def _xwing_public_key(public_bytes: bytes) -> _xwing.XWingPublicKey:
    return _xwing.XWingPublicKey(public_bytes)


@lru_cache(maxsize=256)
def _public_key_object(kem: KemId, public_bytes: bytes) -> KEMKeyInterface:
    return _kem_only(kem).kem.deserialize_public_key(public_bytes)


def setup_sender(
    kem: KemId, kdf: KdfId, aead: AeadId, public_key: bytes, info: bytes, ephemeral: bytes | None = None
) -> tuple[bytes, HpkeContext]:
    """SetupBaseS(pkR, info) -> (enc, context); ``ephemeral`` fixes skE (X-Wing: the 64-byte eseed) for test
    vectors only."""
    if kem is KemId.XWING:
        return _xwing.setup_base_s(_xwing_public_key(public_key), int(kdf), int(aead), info, ephemeral)
    suite = cipher_suite(kem, kdf, aead)
    try:
        pkr = _public_key_object(kem, public_key)
    except Exception as exc:
        raise UnsupportedError(f"invalid public key for kem 0x{int(kem):04x}") from exc
    eks = None
    if ephemeral is not None:
        esk = suite.kem.deserialize_private_key(ephemeral)
        eks = KEMKeyPair(esk, suite.kem.deserialize_public_key(_public_bytes(kem, esk.raw.public_key())))
    enc, ctx = suite.create_sender_context(pkr, info, eks=eks)
    return enc, ctx


def hkdf_extract(kdf: KdfId, salt: bytes, ikm: bytes) -> bytes:
    """Plain RFC 5869 HKDF-Extract (not HPKE's LabeledExtract), as RFC 9458 §4.4 requires."""
    return hmac.digest(salt, ikm, _HASHES[kdf])


def hkdf_expand(kdf: KdfId, prk: bytes, info: bytes, length: int) -> bytes:
    """Plain RFC 5869 HKDF-Expand."""
    name = _HASHES[kdf]
    if length <= _HASH_LEN[kdf]:  # one block: the common case, without the loop
        return hmac.digest(prk, info + b"\x01", name)[:length]
    return _hkdf.expand(name, prk, info, length)


class Aead:
    """A raw AEAD key (the response keys of RFC 9458 §4.4 are outside HPKE's context)."""

    __slots__ = ("_cipher",)

    def __init__(self, aead: AeadId, key: bytes) -> None:
        self._cipher: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(key) if aead is AeadId.CHACHA20_POLY1305 else AESGCM(key)
        )

    def seal(self, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
        return self._cipher.encrypt(nonce, pt, aad or None)

    def open(self, nonce: bytes, ct: bytes, aad: bytes) -> bytes:
        try:
            return self._cipher.decrypt(nonce, ct, aad or None)
        except InvalidTag:
            raise DecryptError("response authentication failed") from None


def _random(n: int) -> bytes:
    return os.urandom(n)


def sha256(data: bytes) -> bytes:
    """SHA-256, for callers that hash key configurations."""
    return hashlib.sha256(data).digest()
