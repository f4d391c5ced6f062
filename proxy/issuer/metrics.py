"""Prometheus metrics with fixed labels only: outcomes and reasons. No API key, subject or client address is ever a
label, and no token or blinded message is ever logged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IssuerMetrics:
    """One registry per app, so tests and several apps in one process do not collide."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.issued = Counter("veil_issuer_tokens_issued_total", "TokenResponses sent", registry=r)
        self.rejected = Counter("veil_issuer_requests_rejected_total", "Token requests refused, by reason",
                                ["reason"], registry=r)
        self.sign_seconds = Histogram("veil_issuer_sign_seconds", "Time of one blind signature", registry=r,
                                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05))
        self.keys = Gauge("veil_issuer_keys", "Keys listed in the directory", registry=r)
        self.rotations = Counter("veil_issuer_key_rotations_total", "Keys made", registry=r)
