"""``/healthz`` while the engine starts, once it serves, and after it failed to start; ``/metrics``."""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Iterator

import orjson
import pytest

from enclave.engines import EchoEngine, EngineUnavailable, InnerResponse
from enclave.engines.selfcheck import EngineSelfCheckFailed

from .conftest import Gateway, GatewayFactory, chat_request


class SlowStartEngine(EchoEngine):
    """The echo engine, unavailable until ``ready`` is set (as vLLM is while it loads its model)."""

    kind = "slow"

    def __init__(self) -> None:
        super().__init__()
        self.ready = asyncio.Event()

    async def start(self) -> None:
        await self.ready.wait()

    def healthy(self) -> bool:
        return self.ready.is_set()

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> InnerResponse:
        if not self.ready.is_set():
            raise EngineUnavailable("the engine is starting")
        return await super().call(method, path, body, stream=stream)


class FailingEngine(EchoEngine):
    """An engine whose start raises ``error``."""

    kind = "failing"

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def start(self) -> None:
        raise self.error

    def healthy(self) -> bool:
        return False


@pytest.fixture
def sigterms() -> Iterator[list[int]]:
    """SIGTERMs this process receives during the test (a gateway whose engine fails stops itself with one)."""
    got: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    previous = signal.signal(signal.SIGTERM, note)
    yield got
    signal.signal(signal.SIGTERM, previous)


async def health(gw: Gateway) -> tuple[int, dict[str, object]]:
    resp = await gw.client.get("/healthz")
    assert resp.content_type == "application/json"
    return resp.status, orjson.loads(await resp.read())


async def test_healthz_is_ok_when_the_engine_serves(gateway: Gateway) -> None:
    assert await health(gateway) == (200, {"status": "ok", "engine": "echo", "attestation": "simulated"})


async def test_healthz_is_503_starting_until_the_engine_is_up(gateway_for: GatewayFactory) -> None:
    engine = SlowStartEngine()
    gw = await gateway_for(engine)
    assert await health(gw) == (503, {"status": "starting", "engine": "slow", "attestation": "simulated"})
    # Keys and evidence are served meanwhile; requests get an encapsulated 503.
    assert (await gw.client.get("/.well-known/ohttp-gateway")).status == 200
    _, resp = await gw.roundtrip(chat_request("too early"))
    assert resp.status == 503 and orjson.loads(resp.content)["error"]["code"] == "engine_unavailable"
    engine.ready.set()
    await asyncio.sleep(0)
    assert (await health(gw))[0] == 200
    _, resp = await gw.roundtrip(chat_request("now"))
    assert resp.status == 200


@pytest.mark.parametrize(
    ("error", "what"),
    [(EngineUnavailable("vLLM exited with code 1"), "failed to start"),
     (EngineSelfCheckFailed("the model answered nonsense"), "failed its start-up self-check")],
)
async def test_an_engine_that_fails_to_start_stops_the_gateway_and_healthz_says_so(
    gateway_for: GatewayFactory, sigterms: list[int], error: Exception, what: str
) -> None:
    gw = await gateway_for(FailingEngine(error))
    for _ in range(100):
        if sigterms:
            break
        await asyncio.sleep(0.01)
    assert sigterms == [signal.SIGTERM]  # stopped as SIGTERM would stop it; run() then exits non-zero
    assert gw.state.engine_error == f"the engine {what}: {error}"
    assert await health(gw) == (503, {"status": "engine failed", "engine": "failing", "attestation": "simulated"})


async def test_metrics_show_the_engine_and_fixed_labels_only(gateway: Gateway) -> None:
    await gateway.roundtrip(chat_request("count me"))
    resp = await gateway.client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert "veil_gateway_engine_up 1.0" in text
    assert 'veil_gateway_requests_total{framing="plain",outcome="ok"} 1.0' in text
    assert 'veil_gateway_inner_responses_total{status_class="2xx"} 1.0' in text
    assert "count me" not in text
