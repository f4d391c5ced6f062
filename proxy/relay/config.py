"""The relay's settings, as one frozen dataclass built by ``veil relay`` or by tests.

Validation lives here, so a bad allow list or proxy network is refused when the config is built (before a socket is
opened), with a message that names the item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import hop

from .limits import parse_networks
from .pool import split_urls
from .vsock import is_vsock_url, parse_vsock_url

if TYPE_CHECKING:
    from .tokens import TokenPolicy

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """Limits and settings; every one has a command-line option."""

    #: name -> URL, or the URLs of replicas ("URL1,URL2" or a list); http(s):// or vsock://CID:PORT/path
    gateways: Mapping[str, str | Sequence[str]]
    max_request_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024
    max_concurrent: int = 1024
    rate_per_minute: int = 600
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    client_timeout: float = 30.0
    #: a request body must arrive within body_timeout s, plus one s per min_rate bytes, max_body_time s at most
    body_timeout: float = 20.0
    min_rate: float = 4096.0
    max_body_time: float = 60.0
    #: a client whose response bytes wait unsent this long (it stopped reading) is dropped (0: never)
    write_timeout: float = 30.0
    max_connections_per_address: int = 128
    max_in_flight_per_address: int = 32
    #: TLS terminators / load balancers whose X-Forwarded-For names the client (addresses or CIDRs)
    trusted_proxies: tuple[str, ...] = ()
    #: at most one drop of a gateway's cached keys and evidence (after a 422 for a cached key id) per this many s
    key_refresh_interval: float = 10.0
    cors_origins: tuple[str, ...] = ()
    min_cache_seconds: float = 5.0
    max_cache_seconds: float = 3600.0
    health_interval: float = 5.0  # seconds between /healthz checks of replicas (0: none)
    #: the Privacy Pass issuer (its URL) whose tokens every forwarded request must carry; None: no tokens
    require_token: str | None = None
    #: where spent tokens are remembered: a SQLite file (replicas on one host share it) or redis://... (any hosts)
    spent_store: str = "veil-relay-spent.sqlite"
    #: origin names in the relay's challenge (empty: tokens for any relay that trusts the issuer)
    token_origin: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, urls in self.gateways.items():
            if not _NAME.match(name):
                raise ValueError(f"gateway name {name!r} must be letters, digits, '.', '_' or '-'")
            if not split_urls(urls):
                raise ValueError(f"gateway {name!r} has no URL")
            for url in split_urls(urls):
                if is_vsock_url(url):
                    parse_vsock_url(url)  # ValueError says what is wrong
                elif not url.startswith(("http://", "https://")):
                    raise ValueError(f"gateway URL {url!r} must be http(s):// or vsock://CID:PORT/path")
                else:  # what the forwarded requests need of it, checked once here rather than failing each request
                    try:
                        hop.target_of(url)
                    except ValueError as exc:
                        raise ValueError(f"gateway URL {url!r}: {exc}") from None
        parse_networks(self.trusted_proxies)  # ValueError says which one is wrong
        if self.require_token is None and self.token_origin:
            raise ValueError("token origins are given but no issuer's tokens are required (--require-token)")
        self.token_policy()  # ValueError names a bad issuer URL

    def token_policy(self) -> TokenPolicy | None:
        """What ``--require-token`` asks of each request, or None when no token is required."""
        if self.require_token is None:
            return None
        from .tokens import TokenPolicy  # here, not at the top: tokens -> cors -> state imports this module

        return TokenPolicy(issuer_url=self.require_token.rstrip("/"), origin_info=self.token_origin)
