"""Everything a gateway app holds: keys, the published key list and its evidence, engine, API, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from ohttp import Gateway, GatewayKey, KeyRing

from ..api import Api
from ..attestation import Bundle, EvidenceProvider
from ..attestation.errors import AttestationError
from .config import GatewayConfig
from .metrics import GatewayMetrics
from .replay import ReplayCache

log = logging.getLogger("veil.gateway")


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
        self._refresh_lock = asyncio.Lock()
        self.replay = ReplayCache(self.config.replay_window)
        self.gateway = Gateway(self.keyring)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the published key list and, when it changed, the evidence that binds it (blocking: start-up)."""
        self.keyring.purge()
        body = self.keyring.encode_published()
        if self._needs_evidence(body):
            self._publish(body, self.provider.collect(body))
        self.metrics.keys.set(len(self.keyring))

    async def refresh_async(self) -> None:
        """:meth:`refresh` for a running server: evidence is collected in a worker thread (a vTPM quote or an
        IMDS call takes a second or more, and streams must not stall meanwhile). Until it is ready the previous key
        list and its evidence stay published together, so no client sees keys without their evidence; if collection
        fails they stay published and the error is logged."""
        self.keyring.purge()
        self.metrics.keys.set(len(self.keyring))
        if not self._needs_evidence(self.keyring.encode_published()) or self._refresh_lock.locked():
            return  # nothing new, or a collection is under way: serve the current pair meanwhile
        async with self._refresh_lock:
            body = self.keyring.encode_published()  # again: another task may have published it meanwhile
            if not self._needs_evidence(body):
                return
            try:
                bundle = await asyncio.to_thread(self.provider.collect, body)
            except AttestationError as exc:
                log.error("evidence collection failed; still publishing the previous keys and evidence: %s", exc)
                return
            self._publish(body, bundle)

    def _needs_evidence(self, body: bytes) -> bool:
        return body != self.keys_body or self.bundle is None or self._evidence_stale()

    def _publish(self, body: bytes, bundle: Bundle) -> None:
        self.keys_body, self.bundle, self.bundle_json = body, bundle, bundle.to_json()

    def _evidence_stale(self) -> bool:
        """Evidence that expires (a Nitro document's leaf certificate lives 3 hours) is collected again at half its
        life, so a client never receives a bundle whose certificates lapse before it verifies them."""
        lifetime: float | None = getattr(self.provider, "max_evidence_age", None)
        if not lifetime or self.bundle is None:
            return False
        return time.time() - self.bundle.issued_at > lifetime / 2

    def rotate(self) -> GatewayKey:
        """Generate a new key in memory and retire the others after the grace period; the new key is served once
        :meth:`refresh` or :meth:`refresh_async` has evidence for it."""
        current = self.keyring.published()
        template = current[0].config if current else None
        key_id = self.keyring.next_key_id()
        if template is not None:
            new = GatewayKey.generate(key_id, template.kem, template.suites, not_before=time.time())
        else:
            new = GatewayKey.generate(key_id, not_before=time.time())
        self.keyring.rotate(new, self.config.rotation_grace)
        return new

    async def rotate_async(self) -> GatewayKey:
        """:meth:`rotate`, then publish the new key with its evidence once collected (off the event loop)."""
        new = self.rotate()
        await self.refresh_async()
        return new
