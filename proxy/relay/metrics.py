"""Prometheus metrics with fixed labels only: outcomes, directions, gateway names and replica indexes from the
config. No client address, header or byte ever becomes a label (the relay keeps no per-client records).

With ``--workers N`` every worker runs with ``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor before
``prometheus_client`` is imported: values live in files there, and ``/metrics`` on any worker is the sum over all
of them (counters and the histogram summed; ``veil_relay_in_flight`` summed over live workers; a replica is "up"
only while every live worker has it in rotation). The one per-worker series is
``veil_relay_worker_connections_total{worker="INDEX"}`` (connections each worker accepted).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .pool import ReplicaPool

if TYPE_CHECKING:
    from .shared import WorkerSpec


class RelayMetrics:
    """One registry per app, so tests and several apps in one process do not collide."""

    def __init__(self, pools: Iterable[ReplicaPool], worker: WorkerSpec | None = None) -> None:
        self.registry = r = CollectorRegistry()
        #: what ``/metrics`` shows: this registry, or with workers the sum of every worker's files
        self.exposition = r
        multiprocess = worker is not None and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        self.requests = Counter("veil_relay_requests_total", "Forwarded requests by outcome", ["outcome"], registry=r)
        self.latency = Histogram("veil_relay_upstream_seconds", "Gateway response time (to headers)", registry=r,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))
        self.in_flight = Gauge("veil_relay_in_flight", "Requests being forwarded", registry=r,
                               multiprocess_mode="livesum")
        self.bytes = Counter("veil_relay_bytes_total", "Bytes relayed", ["direction"], registry=r)
        self.retries = Counter("veil_relay_retries_total", "Requests sent to another replica after the first could "
                               "not be connected to (nothing had been sent)", registry=r)
        up = Gauge("veil_relay_replica_up", "1 while a gateway replica is in rotation", ["gateway", "replica"],
                   registry=r, multiprocess_mode="livemin")
        for pool in pools:
            for rep in pool.replicas if len(pool) > 1 else ():
                child = up.labels(pool.name, str(rep.index))
                if multiprocess:  # a function's value is never written to the shared files: set it as it changes
                    child.set(rep.up())
                    rep.on_change = child.set
                else:
                    child.set_function(rep.up)
        #: with workers: ``inc()`` of this worker's accepted-connections counter; None in one process
        self.worker_connections = None if worker is None else Counter(
            "veil_relay_worker_connections_total", "Connections accepted, by worker process (--workers)",
            ["worker"], registry=r).labels(str(worker.index)).inc
        # Labelled children are bound on first use (so /metrics shows a series exactly when it did before) and then
        # reused: ``labels()`` validates its arguments and takes a lock on every call, on the per-request path.
        self._outcomes: dict[str, Counter] = {}

    @cached_property
    def bytes_up(self) -> Counter:
        return self.bytes.labels("up")

    @cached_property
    def bytes_down(self) -> Counter:
        return self.bytes.labels("down")

    def outcome(self, outcome: str) -> Counter:
        """``requests.labels(outcome)``, cached."""
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.requests.labels(outcome)
        return child

