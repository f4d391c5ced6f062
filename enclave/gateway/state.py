"""Everything a gateway app holds: keys, the published key list and its evidence, engine, API, metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ohttp import Gateway, GatewayKey, KeyRing

from ..api import Api
from ..attestation import Bundle, EvidenceProvider
from .config import GatewayConfig
from .metrics import GatewayMetrics
from .replay import ReplayCache


@dataclass
class GatewayState:
    """Per-app state (aiohttp's "no singletons")."""

    config: GatewayConfig
    keyring: KeyRing
    api: Api
    provider: EvidenceProvider
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    replay: ReplayCache = field(init=False)
    gateway: Gateway = field(init=False)
    keys_body: bytes = b""
    bundle: Bundle | None = None
    bundle_json: bytes = b""
    last_fresh_evidence: float = 0.0

    def __post_init__(self) -> None:
        self.replay = ReplayCache(self.config.replay_window)
        self.gateway = Gateway(self.keyring)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the published key list and, when it changed, the evidence that binds it."""
        self.keyring.purge()
        body = self.keyring.encode_published()
        if body != self.keys_body or self.bundle is None or self._evidence_stale():
            self.keys_body = body
            self.bundle = self.provider.collect(body)
            self.bundle_json = self.bundle.to_json()
        self.metrics.keys.set(len(self.keyring))

    def _evidence_stale(self) -> bool:
        """Evidence that expires (a Nitro document's leaf certificate lives 3 hours) is collected again at half its
        life, so a client never receives a bundle whose certificates lapse before it verifies them."""
        lifetime: float | None = getattr(self.provider, "max_evidence_age", None)
        if not lifetime or self.bundle is None:
            return False
        return time.time() - self.bundle.issued_at > lifetime / 2

    def rotate(self) -> GatewayKey:
        """Generate a new key in memory, publish it, and retire the others after the grace period."""
        current = self.keyring.published()
        template = current[0].config if current else None
        key_id = self.keyring.next_key_id()
        if template is not None:
            new = GatewayKey.generate(key_id, template.kem, template.suites, not_before=time.time())
        else:
            new = GatewayKey.generate(key_id, not_before=time.time())
        self.keyring.rotate(new, self.config.rotation_grace)
        self.refresh()
        return new
