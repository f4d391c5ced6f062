"""The issuer's settings, as one frozen dataclass built by ``veil issuer`` or by tests; validated when built."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class IssuerConfig:
    """Key schedule, attester and limits; every one has a command-line option."""

    #: SQLite file holding the issuer's keys (private keys in PEM, file mode 0600) and per-key issuance counts
    state_path: str
    #: the path clients POST TokenRequests to (the directory's issuer-request-uri)
    request_path: str = "/token-request"
    #: seconds a key is the one clients should use, from its not-before until the next key's
    key_lifetime: float = 7 * 24 * 3600.0
    #: seconds a key stays listed (and tokens under it are accepted by relays) after the next key takes over
    key_overlap: float = 24 * 3600.0
    #: seconds a new key is published before it may be used (its not-before), so relays learn it first
    key_publish_ahead: float = 3600.0
    #: Cache-Control max-age of the directory (capped at half of key_publish_ahead)
    directory_max_age: float = 300.0
    #: tokens one API key may get per limit_window seconds (0: no limit)
    tokens_per_key: int = 1000
    limit_window: float = 3600.0
    #: "api-key" (holders of a key in api_keys_file / $VEIL_ISSUER_API_KEYS) or "MODULE:FACTORY" (a plug-in)
    attester: str = "api-key"
    #: file of [name:]sha256hex[:limit] lines, the form the gateway's --api-keys-file uses, plus a per-key limit
    api_keys_file: str | None = None

    def __post_init__(self) -> None:
        if not self.request_path.startswith("/") or self.request_path.startswith("/.well-known/"):
            raise ValueError(f"request path {self.request_path!r} must start with / and not be under /.well-known/")
        if self.key_lifetime <= 0 or self.key_overlap < 0 or self.key_publish_ahead < 0:
            raise ValueError("key lifetime must be positive; overlap and publish-ahead not negative")
        if self.key_publish_ahead >= self.key_lifetime:
            raise ValueError("key publish-ahead must be shorter than the key lifetime")
        if self.tokens_per_key < 0 or self.limit_window <= 0:
            raise ValueError("tokens per key must not be negative and the limit window must be positive")
        if self.attester != "api-key" and ":" not in self.attester:
            raise ValueError(f"attester must be api-key or MODULE:FACTORY, got {self.attester!r}")
