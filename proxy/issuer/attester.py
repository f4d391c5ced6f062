"""Who may get tokens: the attester hook (RFC 9576 §3). The issuer sees the attester's verdict (a subject and its
limit), never a prompt, a relay or a gateway.

The default, :class:`ApiKeyAttester`, issues to holders of an API key (``Authorization: Bearer KEY``), keys stored and
compared as SHA-256 hashes. Another attester (account login, payment) is a ``MODULE:FACTORY`` whose factory takes the
:class:`~.config.IssuerConfig` and returns an object with ``async attest(request) -> Attestation``.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from .config import IssuerConfig


@dataclass(frozen=True)
class Attestation:
    """The attester's verdict: an opaque subject (only ever a key for counting, never logged) and its limit of
    tokens per window (None: the issuer's default; 0: unlimited)."""

    subject: bytes
    limit: int | None = None


class AttestationRefused(Exception):
    """The client gets no tokens: ``status`` (401 or 403) and a short reason that becomes a metric label."""

    def __init__(self, status: int, reason: str, *, challenge: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.challenge = status, reason, challenge


class Attester(Protocol):
    """Decides whether a token request deserves tokens."""

    async def attest(self, request: web.Request) -> Attestation:
        """The verdict for ``request``.

        Raises:
            AttestationRefused: no tokens for this client.
        """
        ...


class ApiKeyAttester:
    """Holders of an API key, each with its own limit."""

    def __init__(self, hashed: dict[bytes, int | None]) -> None:
        self._hashed = hashed

    @classmethod
    def load(cls, path: str | None, env_var: str = "VEIL_ISSUER_API_KEYS") -> ApiKeyAttester:
        """From a file of ``[name:]sha256hex[:limit]`` lines and/or plain keys (comma-separated) in ``env_var``.

        Raises:
            ValueError: a line that is not of that form (it names the file and line, never the line's content).
        """
        hashed: dict[bytes, int | None] = {}
        if path:
            for n, line in enumerate(Path(path).read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split(":")
                limit: int | None = None
                if len(parts) >= 2 and parts[-1].isdigit() and len(parts[-1]) != 64:
                    limit = int(parts.pop())
                digest = parts[-1].strip().lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"{path}:{n}: expected [name:]<64 hex chars of sha256(key)>[:limit]")
                hashed[bytes.fromhex(digest)] = limit
        for key in (k.strip() for k in os.environ.get(env_var, "").split(",")):
            if key:
                hashed[hashlib.sha256(key.encode()).digest()] = None
        return cls(hashed)

    def __len__(self) -> int:
        return len(self._hashed)

    async def attest(self, request: web.Request) -> Attestation:
        """A valid ``Authorization: Bearer KEY``; the subject is the key's hash."""
        auth = request.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise AttestationRefused(401, "no_api_key", challenge='Bearer realm="veil-issuer"')
        digest = hashlib.sha256(auth[7:].strip().encode()).digest()
        found: bytes | None = None
        for h in self._hashed:  # compare with every entry, in constant time each
            if hmac.compare_digest(h, digest):
                found = h
        if found is None:
            raise AttestationRefused(401, "bad_api_key", challenge='Bearer realm="veil-issuer"')
        return Attestation(subject=found, limit=self._hashed[found])


def load_attester(config: IssuerConfig) -> Attester:
    """The attester ``config`` names.

    Raises:
        ValueError: a plug-in that cannot be imported, or an API-key attester with no keys.
    """
    if config.attester == "api-key":
        attester = ApiKeyAttester.load(config.api_keys_file)
        if not len(attester):
            raise ValueError("the api-key attester needs keys: --api-keys-file or $VEIL_ISSUER_API_KEYS")
        return attester
    module, _, factory = config.attester.partition(":")
    try:
        made: Attester = getattr(importlib.import_module(module), factory)(config)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load attester {config.attester!r}: {exc}") from None
    return made
