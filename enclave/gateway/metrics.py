"""Prometheus metrics with fixed labels only: no client, prompt or output data ever becomes a label."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    """One registry per app, so tests and several apps in one process do not collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "veil_gateway_requests_total",
            "Encapsulated requests by framing and outcome",
            ["framing", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "veil_gateway_request_seconds",
            "Time from request start to end of response, by framing",
            ["framing"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.first_chunk = Histogram(
            "veil_gateway_first_chunk_seconds",
            "Time from request start to the first response chunk of a stream",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.chunks = Counter("veil_gateway_stream_chunks_total", "Encapsulated stream chunks sent", registry=self.registry)
        self.inner_status = Counter(
            "veil_gateway_inner_responses_total", "Inner responses by status class", ["status_class"], registry=self.registry
        )
        self.engine_up = Gauge("veil_gateway_engine_up", "1 when the engine is healthy", registry=self.registry)
        self.engine_restarts = Counter(
            "veil_gateway_engine_restarts_total", "Times the supervised engine was restarted", registry=self.registry
        )
        self.keys = Gauge("veil_gateway_keys", "Keys in the key ring", registry=self.registry)
        self._children: dict[tuple[str, ...], Any] = {}

    # Labelled children of the per-request metrics, bound on first use (so /metrics shows a series exactly when
    # it did before) and then reused: ``labels()`` validates its arguments and takes a lock on every call.

    def outcome(self, framing: str, outcome: str) -> Counter:
        """``requests.labels(framing, outcome)``, cached."""
        key = ("requests", framing, outcome)
        child: Counter | None = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(framing, outcome)
        return child

    def inner_status_of(self, status: int) -> Counter:
        """``inner_status.labels("<N>xx")`` for an HTTP status, cached."""
        key = ("inner_status", str(status // 100))
        child: Counter | None = self._children.get(key)
        if child is None:
            child = self._children[key] = self.inner_status.labels(f"{status // 100}xx")
        return child

    def latency_of(self, framing: str) -> Histogram:
        """``latency.labels(framing)``, cached."""
        key = ("latency", framing)
        child: Histogram | None = self._children.get(key)
        if child is None:
            child = self._children[key] = self.latency.labels(framing)
        return child
