"""The error tree of the ``ohttp`` package (after h11: Remote for the peer's bytes, Local for caller misuse).

Messages are lowercase, name the item and its sizes, and never contain key material or plaintext.
"""

from __future__ import annotations

__all__ = [
    "OHTTPError",
    "RemoteProtocolError",
    "DecodeError",
    "UnsupportedError",
    "KeyIdError",
    "DecryptError",
    "ChunkError",
    "LimitError",
    "LocalProtocolError",
]


class OHTTPError(Exception):
    """Base of every error this package raises."""


class RemoteProtocolError(OHTTPError):
    """The peer sent bytes that break the protocol; ``status_hint`` is the HTTP status a server should answer."""

    status_hint: int = 400


class DecodeError(RemoteProtocolError):
    """Malformed or truncated key configuration, request, response, BHTTP message or chunk."""


class UnsupportedError(RemoteProtocolError):
    """An unknown or unsupported KEM, KDF, AEAD or framing indicator."""


class KeyIdError(RemoteProtocolError):
    """The key identifier is unknown, not yet active, retired, or its KEM/suite does not match (RFC 9458 §6.4)."""

    status_hint = 422


class DecryptError(RemoteProtocolError):
    """AEAD open or KEM decapsulation failed."""

    status_hint = 422


class ChunkError(RemoteProtocolError):
    """A chunked-OHTTP violation: chunk too large, empty non-final chunk, data after final, truncated stream."""


class LimitError(RemoteProtocolError):
    """A configured size limit was exceeded (field section, field count, content)."""

    status_hint = 413


class LocalProtocolError(OHTTPError):
    """The caller misused the API (a one-shot context used twice, data after the final chunk): a bug."""
