"""The issuer directory (RFC 9578 §4): ``application/private-token-issuer-directory`` JSON, both ways.

Sans-I/O: bytes in, bytes out. Keys of token types other than 0x0002, and keys that do not load, are skipped
(kept out of :attr:`Directory.keys`), so a directory that lists something new still works for the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from .auth import b64url_decode, b64url_encode
from .errors import DecodeError
from .tokens import TOKEN_TYPE_BLIND_RSA, TokenKey

__all__ = ["MEDIA_TYPE_DIRECTORY", "WELL_KNOWN_DIRECTORY", "DirectoryKey", "Directory"]

MEDIA_TYPE_DIRECTORY: Final = "application/private-token-issuer-directory"
WELL_KNOWN_DIRECTORY: Final = "/.well-known/private-token-issuer-directory"
#: the largest directory decoded (a fetcher should stop reading past it)
MAX_DIRECTORY_BYTES: Final = 256 * 1024


@dataclass(frozen=True, slots=True)
class DirectoryKey:
    """One listed key: the token key and its ``not-before`` (unix seconds; None: usable now)."""

    key: TokenKey
    not_before: int | None = None

    def usable(self, now: float) -> bool:
        """Whether clients may use it at ``now`` (its not-before has passed)."""
        return self.not_before is None or self.not_before <= now


@dataclass(frozen=True, slots=True)
class Directory:
    """An issuer directory: where to send TokenRequests, and its type-2 keys, most preferred first."""

    issuer_request_uri: str
    keys: tuple[DirectoryKey, ...]

    def usable(self, now: float) -> list[TokenKey]:
        """The keys usable at ``now``, most preferred first."""
        return [k.key for k in self.keys if k.usable(now)]

    def encode(self) -> bytes:
        """The directory's JSON bytes."""
        keys: list[dict[str, Any]] = []
        for k in self.keys:
            item: dict[str, Any] = {"token-type": TOKEN_TYPE_BLIND_RSA, "token-key": b64url_encode(k.key.spki)}
            if k.not_before is not None:
                item["not-before"] = k.not_before
            keys.append(item)
        return json.dumps({"issuer-request-uri": self.issuer_request_uri, "token-keys": keys}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Directory:
        """Parse a directory.

        Raises:
            DecodeError: not JSON, no ``issuer-request-uri``, or ``token-keys`` not a list.
        """
        if len(data) > MAX_DIRECTORY_BYTES:
            raise DecodeError(f"issuer directory too large: {len(data)} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise DecodeError("issuer directory is not JSON") from None
        if not isinstance(doc, dict):
            raise DecodeError("issuer directory is not a JSON object")
        uri = doc.get("issuer-request-uri")
        items = doc.get("token-keys")
        if not isinstance(uri, str) or not uri or not isinstance(items, list):
            raise DecodeError("issuer directory lacks issuer-request-uri or token-keys")
        keys: list[DirectoryKey] = []
        for item in items:
            if not isinstance(item, dict) or item.get("token-type") != TOKEN_TYPE_BLIND_RSA:
                continue
            raw, not_before = item.get("token-key"), item.get("not-before")
            if not isinstance(raw, str) or (not_before is not None and not isinstance(not_before, int)):
                continue
            try:
                keys.append(DirectoryKey(TokenKey.from_spki(b64url_decode(raw)), not_before))
            except DecodeError:
                continue
        return cls(issuer_request_uri=uri, keys=tuple(keys))
