"""Prometheus metrics with fixed labels only: outcomes, directions, gateway names and replica indexes from the
config. No client address, header or byte ever becomes a label (the relay keeps no per-client records).

With ``--workers N`` every worker runs with ``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor before
``prometheus_client`` is imported: values live in files there, and ``/metrics`` on any worker is the sum over all
of them (counters and the histogram summed; ``veil_relay_in_flight`` summed over live workers; a replica is "up"
only while every live worker has it in rotation). The one per-worker series is
``veil_relay_worker_connections_total{worker="INDEX"}`` (connections each worker accepted).

Every update of a multiprocess value is a write to its memory-mapped file and a pid check (~6 µs of the relay's
~11 µs of metric updates per request). So with workers the per-request updates (outcomes, bytes, retries, the
upstream-time histogram, requests in flight) are added up in plain numbers and written by :meth:`RelayMetrics.flush`:
when this worker serves ``/metrics``, every :data:`FLUSH_SECONDS` (a task of the app), and when it shuts down. What
a scrape shows of the *other* workers is at most :data:`FLUSH_SECONDS` old; a worker killed with SIGKILL loses at
most that much of its counts. One process (``--workers 1``) updates its registry directly, as before.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .pool import ReplicaPool

if TYPE_CHECKING:
    from .shared import WorkerSpec


#: with workers: at most this many seconds between a worker's counting and its counts reaching the shared files
FLUSH_SECONDS: Final = 1.0


class Inc(Protocol):
    """A counter (or its batched stand-in)."""

    def inc(self, amount: float = 1) -> None: ...


class Level(Protocol):
    """A gauge that goes up and down by one (or its batched stand-in)."""

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...


class Observe(Protocol):
    """A histogram (or its batched stand-in)."""

    def observe(self, amount: float) -> None: ...


class _Sum:
    """A counter's increments, added up here until :meth:`flush` writes them as one."""

    __slots__ = ("_target", "pending")

    def __init__(self, target: Counter) -> None:
        self._target = target
        self.pending = 0.0

    def inc(self, amount: float = 1) -> None:
        self.pending += amount

    def flush(self) -> None:
        if self.pending:
            self._target.inc(self.pending)
            self.pending = 0.0


class _Level:
    """A gauge's level, kept here; :meth:`flush` sets the gauge to it."""

    __slots__ = ("_target", "value", "_written")

    def __init__(self, target: Gauge) -> None:
        self._target = target
        self.value = 0.0
        self._written = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def flush(self) -> None:
        if self.value != self._written:
            self._target.set(self.value)
            self._written = self.value


class _Observations:
    """A histogram's observations, counted per bucket here; :meth:`flush` adds the counts and the sum to it (through
    ``prometheus_client``'s per-bucket values: ``Histogram.observe`` takes one observation at a time)."""

    __slots__ = ("_target", "_bounds", "_counts", "_sum")

    def __init__(self, target: Histogram) -> None:
        self._target = target
        self._bounds: list[float] = list(target._upper_bounds)  # ends with +Inf: every value has a bucket
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._sum += amount
        self._counts[bisect_left(self._bounds, amount)] += 1  # the first bucket with amount <= bound, as observe

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        buckets = self._target._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
                counts[i] = 0
        self._target._sum.inc(self._sum)
        self._sum = 0.0


_B = TypeVar("_B", _Sum, _Level, _Observations)


class RelayMetrics:
    """One registry per app, so tests and several apps in one process do not collide. ``batch`` (default: with
    workers) adds the per-request updates up in this process until :meth:`flush`."""

    def __init__(self, pools: Iterable[ReplicaPool], worker: WorkerSpec | None = None,
                 batch: bool | None = None) -> None:
        self.registry = r = CollectorRegistry()
        #: what ``/metrics`` shows: this registry, or with workers the sum of every worker's files
        self.exposition = r
        multiprocess = worker is not None and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.exposition = CollectorRegistry()
            MultiProcessCollector(self.exposition)  # type: ignore[no-untyped-call]
        self.batched = multiprocess if batch is None else batch
        self._pending: list[_Sum | _Level | _Observations] = []
        self.requests = Counter("veil_relay_requests_total", "Forwarded requests by outcome", ["outcome"], registry=r)
        latency = Histogram("veil_relay_upstream_seconds", "Gateway response time (to headers)", registry=r,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))
        in_flight = Gauge("veil_relay_in_flight", "Requests being forwarded", registry=r,
                          multiprocess_mode="livesum")
        self.bytes = Counter("veil_relay_bytes_total", "Bytes relayed", ["direction"], registry=r)
        retries = Counter("veil_relay_retries_total", "Requests sent to another replica after the first could "
                          "not be connected to (nothing had been sent)", registry=r)
        self.latency: Observe = self._batch(_Observations(latency)) if self.batched else latency
        self.in_flight: Level = self._batch(_Level(in_flight)) if self.batched else in_flight
        self.retries: Inc = self._batch(_Sum(retries)) if self.batched else retries
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
        self._outcomes: dict[str, Inc] = {}

    def _batch(self, value: _B) -> _B:
        self._pending.append(value)
        return value

    def _child(self, counter: Counter) -> Inc:
        return self._batch(_Sum(counter)) if self.batched else counter

    def flush(self) -> None:
        """Write what was counted since the last flush (nothing to do without ``batch``)."""
        for value in self._pending:
            value.flush()

    @cached_property
    def bytes_up(self) -> Inc:
        return self._child(self.bytes.labels("up"))

    @cached_property
    def bytes_down(self) -> Inc:
        return self._child(self.bytes.labels("down"))

    def outcome(self, outcome: str) -> Inc:
        """``requests.labels(outcome)``, cached (with ``batch``: its batched stand-in)."""
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self._child(self.requests.labels(outcome))
        return child

