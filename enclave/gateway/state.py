"""Everything a gateway app holds: keys, the published key list and its evidence, engine, API, metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace

from ohttp import Gateway, GatewayKey, KeyRing, encode_list
from transparency.proofs import CERT_KEY as LOG_CERT_KEY

from ..api import Api
from ..attestation import Bundle, EvidenceProvider
from ..attestation.bundle import ConfigValue
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
    #: set when the engine failed to start or failed its self-check: the gateway stops and exits 1 with this reason
    engine_error: str | None = None
    #: the transparency log's proofs (``certs["veil_log"]``) and the key configuration they are for
    log_proofs: tuple[bytes, str] | None = None

    #: the configuration every bundle binds (:meth:`GatewayConfig.attested`)
    attested_config: dict[str, ConfigValue] = field(init=False)

    def __post_init__(self) -> None:
        self._refresh_lock = asyncio.Lock()
        #: set when the published key configuration changes: the log follower looks for its entry at once
        self.log_wake = asyncio.Event()
        self.attested_config = self.config.attested(engine=self.api.engine.kind,
                                                    api_keys_required=self.api.api_keys is not None,
                                                    cache_salt=self.api.cache_salt)
        self.replay = ReplayCache(self.config.replay_window)
        self.gateway = Gateway(self.keyring)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the published key list and, when it changed, the evidence that binds it (blocking: start-up)."""
        self.keyring.purge()
        body = self.keyring.encode_published()
        if self._needs_evidence(body):
            self._publish(body, self.collect(body))
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
                bundle = await asyncio.to_thread(self.collect, body)
            except AttestationError as exc:
                log.error("evidence collection failed; still publishing the previous keys and evidence: %s", exc)
                return
            self._publish(body, bundle)

    def collect(self, body: bytes, nonce: bytes = b"") -> Bundle:
        """Evidence for the key list ``body`` (and a client nonce) that also binds :attr:`attested_config`
        (blocking: call it in a worker thread from a running server)."""
        return self.provider.collect(body, nonce, config=self.attested_config)

    def _needs_evidence(self, body: bytes) -> bool:
        return body != self.keys_body or self.bundle is None or self._evidence_stale()

    def _publish(self, body: bytes, bundle: Bundle) -> None:
        if self.bundle is None or self.bundle.key_config != bundle.key_config:
            self.log_wake.set()
        bundle = self.with_log_proofs(bundle)
        self.keys_body, self.bundle, self.bundle_json = body, bundle, bundle.to_json()

    def with_log_proofs(self, bundle: Bundle) -> Bundle:
        """``bundle`` with the log proofs for its key configuration attached, or none attached: unsigned
        attachments (``certs``), so the signed and bound parts stay as collected."""
        certs = {k: v for k, v in bundle.certs.items() if k != LOG_CERT_KEY}
        if self.log_proofs is not None and self.log_proofs[0] == bundle.key_config:
            certs[LOG_CERT_KEY] = self.log_proofs[1]
        return bundle if certs == bundle.certs else replace(bundle, certs=certs)

    def set_log_proofs(self, key_config: bytes, proofs: str | None) -> None:
        """Keep the log proofs for ``key_config`` (None: it has no unexpired entry) and republish the evidence with
        them if it still binds that key configuration (a rotation meanwhile waits for the next round)."""
        self.log_proofs = None if proofs is None else (key_config, proofs)
        if self.bundle is not None and self.bundle.key_config == key_config:
            self.bundle = self.with_log_proofs(self.bundle)
            self.bundle_json = self.bundle.to_json()

    def refresh_due(self) -> float | None:
        """When the published evidence must be collected again (unix time), or None if only a key change will.

        Evidence that expires (a Nitro document's leaf certificate, an MAA token) is collected again halfway
        through the life it had left when collected, so no client receives a bundle that lapses before it is
        verified; ``Cache-Control`` on the bundle and the keys never reaches past this moment either."""
        expiry = getattr(self.provider, "evidence_expiry", None)
        if expiry is None or self.bundle is None:
            return None
        expires: float | None = expiry(self.bundle)
        if expires is None:
            return None
        return self.bundle.issued_at + max(0.0, expires - self.bundle.issued_at) / 2

    def _evidence_stale(self) -> bool:
        due = self.refresh_due()
        return due is not None and time.time() >= due

    def _new_keys(self) -> list[GatewayKey]:
        """A fresh key for each published one (same KEM and suites: X-Wing and X25519 both rotate), in publication
        order, each under an id reserved in the keyring until it joins it (a rotation that gives up releases it):
        two rotations running at once never pick the same id."""
        now = time.time()
        templates = [k.config for k in self.keyring.published()]
        if not templates:
            return [GatewayKey.generate(self.keyring.reserve_key_id(), not_before=now)]
        new = [GatewayKey.generate(self.keyring.reserve_key_id(), t.kem, t.suites, not_before=now) for t in templates]
        # The keyring's own order for keys made together: post-quantum first, then the highest id.
        new.sort(key=lambda k: (k.config.kem.post_quantum, k.config.key_id), reverse=True)
        return new

    def rotate(self) -> GatewayKey:
        """Generate new keys in memory, publish them with their evidence (collected here, blocking), and retire the
        others after the grace period; returns the first new key. For a running server use :meth:`rotate_async`."""
        new = self._new_keys()
        self.keyring.rotate(new, self.config.rotation_grace)
        self.refresh()
        return new[0]

    async def rotate_async(self) -> GatewayKey | None:
        """Rotate without stalling the server: collect the evidence for the new key list first (in a worker
        thread), and only then switch the keyring and publish the new keys with it. If collection fails nothing
        changes (the old keys are not retired early) and None is returned; else the first new key."""
        new = self._new_keys()
        body = encode_list([k.config for k in new])  # what the keyring publishes after rotate(): the new keys alone
        try:
            async with self._refresh_lock:
                try:
                    bundle = await asyncio.to_thread(self.collect, body)
                except AttestationError as exc:
                    log.error("key rotation postponed: no evidence for the new key: %s", exc)
                    return None
                self.keyring.rotate(new, self.config.rotation_grace)
                self.keyring.purge()
                if self.keyring.encode_published() != body:  # cannot happen with a key valid from now; never split
                    log.error("key rotation: the keyring publishes something else than the new key; not published")
                    return None
                self._publish(body, bundle)
                self.metrics.keys.set(len(self.keyring))
        finally:
            # used up if the keys joined the ring; else (no evidence, cancelled, not published) free again
            for k in new:
                self.keyring.release_key_id(k.config.key_id)
        return new[0]
