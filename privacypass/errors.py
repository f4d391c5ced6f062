"""The error tree of the ``privacypass`` package (h11's names, as in ``ohttp.errors``).

Messages are lowercase, name the item and its sizes, and never contain tokens, key material or client data.
"""

from __future__ import annotations

__all__ = [
    "PrivacyPassError",
    "RemoteProtocolError",
    "DecodeError",
    "UnsupportedError",
    "KeyIdError",
    "VerifyError",
    "LocalProtocolError",
]


class PrivacyPassError(Exception):
    """Base of every error this package raises."""


class RemoteProtocolError(PrivacyPassError):
    """The peer sent bytes that break the protocol; ``status_hint`` is what an issuer answers (RFC 9578 §6.2)."""

    status_hint: int = 400


class DecodeError(RemoteProtocolError):
    """Malformed or truncated challenge, token request, token response, token, header or directory."""


class UnsupportedError(RemoteProtocolError):
    """A token type this package does not implement (anything but 0x0002, grease 0x0000 included)."""

    status_hint = 422


class KeyIdError(RemoteProtocolError):
    """The (truncated) token key id names none of the keys in use."""

    status_hint = 422


class VerifyError(RemoteProtocolError):
    """A signature does not verify: a token's authenticator, a finalized blind signature, or a faulty BlindSign."""

    status_hint = 422


class LocalProtocolError(PrivacyPassError):
    """Caller misuse (a key of the wrong size, a message too long for the modulus): a bug, never a status."""
