"""Optional API keys checked inside the encapsulation. Keys are stored and compared as SHA-256 hashes.

A key identifies its holder to the gateway operator, so it links that user's requests at the gateway (the relay
still hides who sends them). Without keys, the gateway cannot tell users apart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path


class ApiKeyTable:
    """The gateway's table of API keys, by SHA-256; each has a name that becomes the tenant id for prompt-cache
    isolation."""

    def __init__(self, hashed: dict[str, str]) -> None:
        self._hashed = {bytes.fromhex(h): name for h, name in hashed.items()}

    @classmethod
    def load(cls, path: str | None, env_var: str = "VEIL_GATEWAY_API_KEYS") -> ApiKeyTable | None:
        """From a file of ``name:sha256hex`` (or bare ``sha256hex``) lines, and/or plain keys in ``env_var``."""
        hashed: dict[str, str] = {}
        if path:
            for n, line in enumerate(Path(path).read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, _, digest = line.rpartition(":")
                digest = digest.strip().lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"{path}:{n}: expected [name:]<64 hex chars of sha256(key)>")
                hashed[digest] = name.strip() or f"key{n}"
        for i, key in enumerate(k for k in os.environ.get(env_var, "").split(",") if k.strip()):
            hashed[hash_key(key.strip())] = f"env{i + 1}"
        return cls(hashed) if hashed else None

    def check(self, authorization: bytes | None) -> str | None:
        """The key's name if ``authorization`` is ``Bearer <valid key>``, else ``None``."""
        if not authorization or not authorization.lower().startswith(b"bearer "):
            return None
        digest = hashlib.sha256(authorization[7:].strip()).digest()
        found = None
        for h, name in self._hashed.items():  # constant time per entry
            if hmac.compare_digest(h, digest):
                found = name
        return found


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key, the form key files hold."""
    return hashlib.sha256(key.encode()).hexdigest()
