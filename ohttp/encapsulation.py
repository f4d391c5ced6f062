"""Request and response encapsulation (RFC 9458 §4) for clients and gateways.

Response contexts are one-shot, as in the ``ohttp`` crate: a :class:`ClientResponse` or :class:`GatewayResponse`
comes only from encapsulating or decapsulating a request and refuses a second use, so response keys are never
reused. The key schedule helpers here are shared with :mod:`ohttp.chunked`, which differs only in its labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Iterable

from ._hpke import (
    Aead,
    AeadId,
    HpkeContext,
    KdfId,
    KemId,
    hkdf_expand,
    hkdf_extract,
    setup_sender,
)
from .errors import DecodeError, DecryptError, KeyIdError, LocalProtocolError, UnsupportedError
from .keys import GatewayKey, KeyConfig, KeyRing, SymmetricSuite, choose_config, decode_list

__all__ = [
    "ClientRequest",
    "ClientResponse",
    "Gateway",
    "GatewayResponse",
    "MEDIA_TYPE_REQUEST",
    "MEDIA_TYPE_RESPONSE",
    "choose_suite",
]

MEDIA_TYPE_REQUEST: Final = "message/ohttp-req"
MEDIA_TYPE_RESPONSE: Final = "message/ohttp-res"
INFO_REQUEST: Final = b"message/bhttp request"
LABEL_RESPONSE: Final = b"message/bhttp response"
REQUEST_HEADER_LEN: Final = 7

#: The client's preference among what a gateway offers (notes: AES-128-GCM first, ChaCha20 as fallback).
_PREFERENCE: Final = (AeadId.AES_128_GCM, AeadId.CHACHA20_POLY1305, AeadId.AES_256_GCM)


def choose_suite(config: KeyConfig) -> SymmetricSuite:
    """The suite a client uses with ``config``: SHA-256 family and AES-128-GCM when offered."""

    def rank(s: SymmetricSuite) -> tuple[int, int]:
        return (_PREFERENCE.index(s.aead), int(s.kdf))

    return min(config.suites, key=rank)


def build_header(key_id: int, kem: KemId, suite: SymmetricSuite) -> bytes:
    """``key_id(1) || kem_id(2) || kdf_id(2) || aead_id(2)``."""
    return (
        bytes((key_id,))
        + int(kem).to_bytes(2, "big")
        + int(suite.kdf).to_bytes(2, "big")
        + int(suite.aead).to_bytes(2, "big")
    )


def build_info(label: bytes, header: bytes) -> bytes:
    """``label || 0x00 || header`` (RFC 9458 §4.3)."""
    return label + b"\x00" + header


def entropy_len(aead: AeadId) -> int:
    """max(Nn, Nk): the response nonce length (16 for AES-128-GCM, 32 otherwise)."""
    return max(aead.n_n, aead.n_k)


def response_keys(
    ctx: HpkeContext, label: bytes, enc: bytes, response_nonce: bytes, kdf: KdfId, aead: AeadId
) -> tuple[Aead, bytes]:
    """RFC 9458 §4.4: export a secret, then plain HKDF over ``enc || response_nonce`` to an AEAD key and nonce."""
    secret = ctx.export(label, entropy_len(aead))
    prk = hkdf_extract(kdf, enc + response_nonce, secret)
    return Aead(aead, hkdf_expand(kdf, prk, b"key", aead.n_k)), hkdf_expand(kdf, prk, b"nonce", aead.n_n)


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    """The 7-byte header and ``enc`` at the start of an encapsulated request."""

    key: GatewayKey
    kdf: KdfId
    aead: AeadId
    header: bytes
    enc: bytes
    end: int


def parse_request_header(data: bytes | bytearray, keys: KeyRing) -> ParsedHeader | None:
    """Parse ``hdr || enc``; ``None`` if ``data`` is still too short.

    Raises:
        KeyIdError: unknown or retired key id, or a KEM/suite that key does not offer.
        UnsupportedError: unknown algorithm ids.
    """
    if len(data) < REQUEST_HEADER_LEN:
        return None
    header = bytes(data[:REQUEST_HEADER_LEN])
    key = keys.get(header[0])
    kdf, aead = _suite_of(header[1:7], key.config)
    end = REQUEST_HEADER_LEN + key.config.kem.n_enc
    if len(data) < end:
        return None
    return ParsedHeader(key, kdf, aead, header, bytes(data[REQUEST_HEADER_LEN:end]), end)


@lru_cache(maxsize=1024)
def _suite_of(algs: bytes, config: KeyConfig) -> tuple[KdfId, AeadId]:
    # Cached per (algorithm bytes, key config): both are immutable, and ids parse the same way every time.
    kem_value = int.from_bytes(algs[0:2], "big")
    if kem_value != int(config.kem):
        raise KeyIdError(f"key id {config.key_id} does not use kem 0x{kem_value:04x}")
    try:
        suite = SymmetricSuite(KdfId(int.from_bytes(algs[2:4], "big")), AeadId(int.from_bytes(algs[4:6], "big")))
    except ValueError:
        raise UnsupportedError("unsupported kdf or aead in request header") from None
    if not config.supports(suite):
        raise KeyIdError(f"key id {config.key_id} does not offer the requested kdf/aead")
    return suite.kdf, suite.aead


class ClientResponse:
    """Opens the one response to a request made by :meth:`ClientRequest.encapsulate`."""

    __slots__ = ("_ctx", "_enc", "_kdf", "_aead", "_used")

    def __init__(self, ctx: HpkeContext, enc: bytes, kdf: KdfId, aead: AeadId) -> None:
        self._ctx = ctx
        self._enc = enc
        self._kdf = kdf
        self._aead = aead
        self._used = False

    def decapsulate(self, enc_response: bytes) -> bytes:
        """Open ``response_nonce || ct`` and return the BHTTP response bytes.

        Raises:
            DecodeError: shorter than nonce plus tag.
            DecryptError: authentication failed (tampered, truncated or for another request).
            LocalProtocolError: called twice.
        """
        if self._used:
            raise LocalProtocolError("a response context can be used once")
        self._used = True
        n = entropy_len(self._aead)
        if len(enc_response) < n + self._aead.n_t:
            raise DecodeError(f"encapsulated response truncated: {len(enc_response)} of at least {n + 16} bytes")
        nonce = enc_response[:n]
        aead, aead_nonce = response_keys(self._ctx, LABEL_RESPONSE, self._enc, nonce, self._kdf, self._aead)
        return aead.open(aead_nonce, enc_response[n:], b"")


class ClientRequest:
    """The client side of RFC 9458: encapsulate one request to a verified key configuration."""

    __slots__ = ("config", "suite")

    def __init__(self, config: KeyConfig, suite: SymmetricSuite | None = None) -> None:
        if suite is not None and not config.supports(suite):
            raise LocalProtocolError("the key config does not offer that suite")
        self.config = config
        self.suite = suite or choose_suite(config)

    @classmethod
    def from_config_list(cls, data: bytes) -> ClientRequest:
        """Use the preferred usable config of an ``application/ohttp-keys`` body (:func:`choose_config`)."""
        configs = decode_list(data)
        if not configs:
            raise UnsupportedError("no usable key configuration in the list")
        return cls(choose_config(configs))

    def header(self) -> bytes:
        """The 7-byte request header for this config and suite."""
        return build_header(self.config.key_id, self.config.kem, self.suite)

    def encapsulate(self, request: bytes, *, ephemeral_key: bytes | None = None) -> tuple[bytes, ClientResponse]:
        """Encapsulate BHTTP ``request`` with a fresh HPKE context.

        ``ephemeral_key`` fixes skE; it exists for test vectors and must never be used otherwise.
        Returns the ``message/ohttp-req`` body and the context that opens the response.
        """
        hdr = self.header()
        enc, ctx = setup_sender(
            self.config.kem,
            self.suite.kdf,
            self.suite.aead,
            self.config.public_key,
            build_info(INFO_REQUEST, hdr),
            ephemeral_key,
        )
        ct = ctx.seal(request, b"")
        return hdr + enc + ct, ClientResponse(ctx, enc, self.suite.kdf, self.suite.aead)


class GatewayResponse:
    """Seals the one response to a decapsulated request."""

    __slots__ = ("_ctx", "enc", "key_id", "_kdf", "_aead", "_used")

    def __init__(self, ctx: HpkeContext, enc: bytes, key_id: int, kdf: KdfId, aead: AeadId) -> None:
        self._ctx = ctx
        #: The request's ``enc``: high-entropy and unique per request, the gateway's replay-cache key.
        self.enc = enc
        self.key_id = key_id
        self._kdf = kdf
        self._aead = aead
        self._used = False

    def encapsulate(self, response: bytes, *, response_nonce: bytes | None = None) -> bytes:
        """Seal BHTTP ``response``; ``response_nonce`` is for test vectors only (a fresh random one otherwise)."""
        if self._used:
            raise LocalProtocolError("a response context can be used once")
        self._used = True
        nonce = response_nonce if response_nonce is not None else os.urandom(entropy_len(self._aead))
        aead, aead_nonce = response_keys(self._ctx, LABEL_RESPONSE, self.enc, nonce, self._kdf, self._aead)
        return nonce + aead.seal(aead_nonce, response, b"")


class Gateway:
    """The gateway side of RFC 9458 over a :class:`KeyRing`."""

    __slots__ = ("keys",)

    def __init__(self, keys: KeyRing | Iterable[GatewayKey]) -> None:
        self.keys = keys if isinstance(keys, KeyRing) else KeyRing(keys)

    def decapsulate(self, enc_request: bytes) -> tuple[bytes, GatewayResponse]:
        """Decapsulate ``hdr || enc || ct``.

        Returns the BHTTP request bytes and the one-shot context for the response. Every error here happens
        before protection is removed and is answered unencapsulated with its ``status_hint``.

        Raises:
            DecodeError: shorter than header, ``enc`` and tag (400).
            KeyIdError: unknown or retired key id, or a suite the key does not offer (422).
            UnsupportedError: unknown algorithm ids (400).
            DecryptError: HPKE open failed (422: the client may hold a stale key).
        """
        parsed = parse_request_header(enc_request, self.keys)
        if parsed is None or len(enc_request) < parsed.end + parsed.aead.n_t:
            raise DecodeError(f"encapsulated request truncated: {len(enc_request)} bytes")
        ctx = parsed.key.private_key.setup_recipient(
            parsed.kdf, parsed.aead, parsed.enc, build_info(INFO_REQUEST, parsed.header)
        )
        try:
            request = ctx.open(enc_request[parsed.end :], b"")
        except Exception:
            raise DecryptError("request authentication failed") from None
        return request, GatewayResponse(ctx, parsed.enc, parsed.header[0], parsed.kdf, parsed.aead)
