"""``GET /.well-known/veil-attestation?nonce=`` collects evidence off the event loop, and a provider that fails
gives a plain 503 problem (no traceback, nothing about the failure beyond "unavailable")."""

from __future__ import annotations

import threading
from typing import Any

from enclave.attestation import SimulatedProvider
from enclave.attestation.bundle import Bundle
from enclave.attestation.errors import AttestationError
from enclave.engines import EchoEngine
from enclave.gateway import GatewayConfig, create_app
from ohttp import GatewayKey, KeyRing


class CountingProvider(SimulatedProvider):
    """The simulated provider, noting which thread each collection ran on; optionally failing fresh ones."""

    def __init__(self, fail_fresh: bool = False) -> None:
        super().__init__()
        self.fail_fresh = fail_fresh
        self.threads: list[int] = []

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Any = None) -> Bundle:
        self.threads.append(threading.get_ident())
        if nonce and self.fail_fresh:
            raise AttestationError("the vTPM said no (secret detail)")
        return super().collect(key_config, nonce, gpu_evidence, config)


async def _client(aiohttp_client: Any, provider: CountingProvider) -> Any:
    app = create_app(engine=EchoEngine(), keyring=KeyRing([GatewayKey.generate(0)]), provider=provider,
                     config=GatewayConfig(fresh_evidence_interval=0.0))
    return await aiohttp_client(app)


async def test_fresh_evidence_is_collected_off_the_event_loop(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    provider = CountingProvider()
    client = await _client(aiohttp_client, provider)
    loop_thread = threading.get_ident()
    resp = await client.get("/.well-known/veil-attestation", params={"nonce": "ab" * 32})
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    bundle = Bundle.from_json(await resp.read())
    assert bundle.nonce == b"\xab" * 32
    assert provider.threads[-1] != loop_thread


async def test_failed_fresh_evidence_is_a_503_problem(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    client = await _client(aiohttp_client, CountingProvider(fail_fresh=True))
    resp = await client.get("/.well-known/veil-attestation", params={"nonce": "00" * 32})
    assert resp.status == 503 and resp.content_type == "application/problem+json"
    body = await resp.text()
    assert "evidence unavailable" in body and "secret detail" not in body and "Traceback" not in body
    # The cached evidence for the published keys is still served.
    assert (await client.get("/.well-known/veil-attestation")).status == 200


class ExpiringProvider(CountingProvider):
    """Evidence that stays verifiable for 2 seconds after collection (a Nitro document: its leaf's lifetime)."""

    def evidence_expiry(self, bundle: Bundle) -> float:
        return bundle.issued_at + 2.0


async def test_expiring_evidence_is_collected_again_at_half_its_life(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    provider = ExpiringProvider()
    client = await _client(aiohttp_client, provider)
    first = await client.get("/.well-known/veil-attestation")
    assert int(first.headers["Cache-Control"].removeprefix("max-age=")) <= 1  # capped by the evidence, not the keys
    first_bundle = Bundle.from_json(await first.read())
    same = Bundle.from_json(await (await client.get("/.well-known/veil-attestation")).read())
    assert same.issued_at == first_bundle.issued_at
    await asyncio.sleep(1.1)
    later = Bundle.from_json(await (await client.get("/.well-known/veil-attestation")).read())
    assert later.issued_at > first_bundle.issued_at and later.key_config == first_bundle.key_config


class SlowProvider(CountingProvider):
    """Collection takes as long as a vTPM quote plus an IMDS call can."""

    delay = 0.6

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Any = None) -> Bundle:
        import time

        time.sleep(self.delay)
        return super().collect(key_config, nonce, gpu_evidence, config)


async def test_rotation_with_slow_evidence_neither_stalls_the_loop_nor_splits_keys_from_evidence(
    aiohttp_client: Any,
) -> None:
    import asyncio
    import time

    from enclave.gateway.app_state_keys import STATE

    client = await _client(aiohttp_client, SlowProvider())
    state = client.server.app[STATE]
    old_keys = await (await client.get("/.well-known/ohttp-gateway")).read()
    rotation = asyncio.ensure_future(state.rotate_async())
    await asyncio.sleep(0.05)
    # While the evidence for the new key is collected, the loop answers at once, with the old keys and evidence.
    started = time.monotonic()
    keys = await (await client.get("/.well-known/ohttp-gateway")).read()
    bundle = Bundle.from_json(await (await client.get("/.well-known/veil-attestation")).read())
    assert time.monotonic() - started < SlowProvider.delay / 2
    assert keys == old_keys == bundle.key_config
    await rotation
    new_keys = await (await client.get("/.well-known/ohttp-gateway")).read()
    new_bundle = Bundle.from_json(await (await client.get("/.well-known/veil-attestation")).read())
    assert new_keys != old_keys and new_bundle.key_config == new_keys


class FailingAfterStartProvider(CountingProvider):
    calls = 0

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Any = None) -> Bundle:
        self.calls += 1
        if self.calls > 1:
            raise AttestationError("device gone")
        return super().collect(key_config, nonce, gpu_evidence, config)


async def test_failed_collection_keeps_the_previous_keys_and_evidence(aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    from enclave.gateway.app_state_keys import STATE

    client = await _client(aiohttp_client, FailingAfterStartProvider())
    state = client.server.app[STATE]
    before = await (await client.get("/.well-known/ohttp-gateway")).read()
    assert await state.rotate_async() is None  # postponed: no evidence for the new key
    keys = await (await client.get("/.well-known/ohttp-gateway")).read()
    bundle = Bundle.from_json(await (await client.get("/.well-known/veil-attestation")).read())
    assert keys == before == bundle.key_config
    # The published key was not retired by the failed rotation: it stays accepted past any grace period.
    (published,) = state.keyring.published()
    assert published.published and published.not_after is None
