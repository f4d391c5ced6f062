"""Everything one relay app holds (aiohttp's "no singletons"), and the AppKey it is stored under."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web

import hop

from .config import RelayConfig
from .keycache import KeyCache
from .limits import Admission, ClientLimits, WriteWatchdog, parse_networks
from .metrics import RelayMetrics
from .pool import ReplicaPool, split_urls
from .shared import SharedAdmission, SharedClientLimits, SharedTable, WorkerSpec
from .vsock import VsockBridge


@dataclass
class RelayState:
    """Per-app state; the client session and the vsock bridges are set up by ``create_app``'s cleanup contexts.
    ``worker``: this process is one of ``--workers N``; the per-address limits are then the shared table's."""

    config: RelayConfig
    worker: WorkerSpec | None = None
    session: aiohttp.ClientSession | None = None
    #: the forwarded requests' connections to the gateways (the session fetches keys, evidence and health)
    client: hop.Pool | None = None
    pools: dict[str, ReplicaPool] = field(init=False)
    metrics: RelayMetrics = field(init=False)
    keycache: KeyCache = field(init=False)
    limits: ClientLimits = field(init=False)
    watchdog: WriteWatchdog = field(init=False)
    #: the per-request checks (the rate, ``--max-concurrent``, the address's in flight) in one call (with workers:
    #: one lock); ``limits`` is the address key and the connection count
    admission: Admission | SharedAdmission = field(init=False)
    table: SharedTable | None = field(init=False, default=None)
    bridges: list[VsockBridge] = field(default_factory=list)
    #: ``--require-token``: verifies (without spending) the request's token before it is admitted, or gives the
    #: refusal
    check_token: Callable[[web.Request], Awaitable[web.Response | None]] | None = None
    #: ``--require-token``: spends the request's token right before it is forwarded, or gives the refusal
    redeem: Callable[[web.Request], Awaitable[web.Response | None]] | None = None

    def __post_init__(self) -> None:
        cfg = self.config
        self.pools = {name: ReplicaPool(name, split_urls(urls)) for name, urls in cfg.gateways.items()}
        self.metrics = RelayMetrics(self.pools.values(), worker=self.worker)
        self.keycache = KeyCache(cfg, self.metrics)
        trusted = parse_networks(cfg.trusted_proxies)
        if self.worker is None:
            self.limits = ClientLimits(max_connections=cfg.max_connections_per_address, trusted_proxies=trusted)
            self.admission = Admission(per_minute=cfg.rate_per_minute, max_concurrent=cfg.max_concurrent,
                                       max_in_flight=cfg.max_in_flight_per_address)
        else:
            self.table = table = SharedTable(self.worker.shared_path, self.worker.index)
            self.limits = SharedClientLimits(table, max_connections=cfg.max_connections_per_address,
                                             trusted_proxies=trusted)
            self.limits.accepted = self.metrics.worker_connections
            self.admission = SharedAdmission(table, per_minute=cfg.rate_per_minute, max_concurrent=cfg.max_concurrent,
                                             max_in_flight=cfg.max_in_flight_per_address)
        self.watchdog = WriteWatchdog(cfg.write_timeout)

    def target(self, name: str) -> ReplicaPool | None:
        """The allow-listed gateway ``name``; ``""`` (the path ``/``) names the only one of a one-gateway relay."""
        if name == "" and len(self.pools) == 1:
            return next(iter(self.pools.values()))
        return self.pools.get(name)


STATE = web.AppKey("STATE", RelayState)
