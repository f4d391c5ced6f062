"""The whole chain as real processes: the official ``openai`` SDK -> veil proxy -> veil relay -> veil gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import aiohttp
import httpx2 as httpx
import openai
import pytest
from aiohttp import web

import ohttp
from proxy.client import VeilAsyncTransport, VeilTransport

from .conftest import REPO, Chain, Proc, free_port, running_chain, sdk_chat_and_stream

pytestmark = pytest.mark.integration

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    with running_chain() as c:
        yield c


def sdk(chain: Chain) -> openai.OpenAI:
    return openai.OpenAI(base_url=chain.base_url, api_key="sk-local-unused", max_retries=0)


def test_chat_non_stream_through_the_chain(chain: Chain) -> None:
    r = sdk(chain).chat.completions.create(model="echo", messages=[{"role": "user", "content": "hello through veil"}])
    assert r.choices[0].message.content == "hello through veil"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_chat_stream_with_usage_through_the_chain(chain: Chain) -> None:
    words = [f"t{i}" for i in range(40)]
    stream = sdk(chain).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": " ".join(words)}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks = [], None, 0
    for ch in stream:
        chunks += 1
        if ch.choices:
            text.append(ch.choices[0].delta.content or "")
        if ch.usage:
            usage = ch.usage
    assert "".join(text) == " ".join(words)
    assert chunks >= len(words)
    assert usage is not None and usage.completion_tokens == len(words)


def test_tools_are_passed_through(chain: Chain) -> None:
    r = sdk(chain).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "weather in Paris"}], tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
    )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"text": "weather in Paris"}  # type: ignore[union-attr]


def test_models_list(chain: Chain) -> None:
    assert [m.id for m in sdk(chain).models.list()] == ["echo"]


def test_unknown_model_raises_not_found(chain: Chain) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk(chain).chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "x"}])
    assert "gpt-nope" in str(err.value)


def test_invalid_request_raises_bad_request(chain: Chain) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk(chain).chat.completions.create(model="echo", messages=[])


def test_proxy_marks_simulated_attestation(chain: Chain) -> None:
    raw = sdk(chain).chat.completions.with_raw_response.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-veil-attestation"] == "simulated"
    doc = httpx.get(chain.proxy.base + "/v1/veil/attestation").json()
    assert doc["simulated"] is True and doc["trusted"] is False and "SIMULATED" in doc["warning"]


def test_in_process_httpx_transport_sync(chain: Chain) -> None:
    transport = VeilTransport(chain.relay_url, allow_simulated=True)
    client = openai.OpenAI(base_url="http://veil.invalid/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(transport=transport))
    try:
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "in process"}])
        assert r.choices[0].message.content == "in process"
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "a b c d"}], stream=True) if c.choices]
        assert "".join(parts) == "a b c d"
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    finally:
        client.close()
        transport.close()


async def test_in_process_httpx_transport_async(chain: Chain) -> None:
    await sdk_chat_and_stream(VeilAsyncTransport(chain.relay_url, allow_simulated=True), "async too", "x y z")


def test_transport_refuses_simulated_without_the_flag(chain: Chain) -> None:
    transport = VeilTransport(chain.relay_url)  # allow_simulated defaults to False
    client = openai.OpenAI(base_url="http://veil.invalid/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(transport=transport))
    try:
        with pytest.raises(openai.APIConnectionError) as err:
            client.models.list()
        assert "SIMULATED" in str(err.value.__cause__) or "simulated" in repr(err.value.__cause__).lower()
    finally:
        client.close()
        transport.close()


def test_proxy_without_insecure_flag_refuses_simulated(chain: Chain) -> None:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "veil_cli", "proxy", "--listen", f"127.0.0.1:{port}", "--relay",
                          chain.relay_url], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        status, body = None, {}
        while time.monotonic() < deadline:
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=5,
                               json={"model": "echo", "messages": [{"role": "user", "content": "must not be sent"}]})
                status, body = r.status_code, r.json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert status == 502
        assert body["error"]["code"] == "veil_attestation_refused"
        assert "SIMULATED" in body["error"]["message"]
    finally:
        p.terminate()
        out = p.communicate(timeout=10)[0].decode()
    assert "must not be sent" not in out


# -- relay ---------------------------------------------------------------------------------------------------------


class Capture:
    """A stand-in upstream that records exactly what the relay sent it (a wire observer, not a Veil component)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.method == "GET":
            return web.Response(body=b"\x00\x01k", content_type="application/ohttp-keys",
                                headers={"Cache-Control": "max-age=60", "Set-Cookie": "track=me", "Server": "x"})
        return web.Response(body=b"R" + body, content_type="message/ohttp-res",
                            headers={"Set-Cookie": "track=me", "X-Gateway-Secret": "internal"})


@pytest.fixture
async def capture() -> Any:
    cap = Capture()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", cap.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    cap.url = f"http://127.0.0.1:{port}/.well-known/ohttp-gateway"  # type: ignore[attr-defined]
    yield cap
    await runner.cleanup()


@pytest.fixture
def relay_for(veil_process: Callable[..., Proc]) -> Callable[..., Proc]:
    def make(url: str, *extra: str) -> Proc:
        port = free_port()
        return veil_process(["relay", "--listen", f"127.0.0.1:{port}", "--gateway", f"gw={url}", *extra], port)

    return make


async def test_relay_strips_identifying_headers_and_forwards_bytes_unchanged(capture: Any, relay_for: Any) -> None:
    relay = relay_for(capture.url)
    body = bytes(range(256)) * 3
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async with s.post(relay.base + "/gw", data=body, headers={
            "Content-Type": ohttp.MEDIA_TYPE_REQUEST, "Cookie": "session=abc", "Authorization": "Bearer sk-secret",
            "User-Agent": "my-laptop/1.0", "X-Forwarded-For": "10.1.2.3", "Forwarded": "for=10.1.2.3",
            "X-Request-Id": "req-123", "Accept-Language": "fr", "Proxy-Authorization": "Basic x",
        }) as r:
            assert r.status == 200
            assert await r.read() == b"R" + body
            assert "Set-Cookie" not in r.headers and "X-Gateway-Secret" not in r.headers
    headers, received = capture.requests[0]
    assert received == body
    lowered = {k.lower() for k in headers}
    for h in ("cookie", "authorization", "user-agent", "x-forwarded-for", "forwarded", "x-request-id",
              "accept-language", "proxy-authorization", "via", "x-real-ip"):
        assert h not in lowered, h
    assert headers["Content-Type"] == ohttp.MEDIA_TYPE_REQUEST
    assert lowered <= {"content-type", "content-length", "host", "accept", "transfer-encoding"}
    assert "127.0.0.1" not in json.dumps(headers).replace(capture.url.split("/")[2], "")


async def test_relay_refuses_other_targets_and_media_types(capture: Any, relay_for: Any) -> None:
    relay = relay_for(capture.url)
    async with aiohttp.ClientSession() as s:
        for path in ("/other", "/http://evil.example/", "/gw/../x"):
            async with s.post(relay.base + path, data=b"x", headers={"Content-Type": ohttp.MEDIA_TYPE_REQUEST}) as r:
                assert r.status in (403, 404), path
        async with s.post(relay.base + "/gw", data=b"x", headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
    assert capture.requests == []


async def test_relay_limits_size_and_rate(capture: Any, relay_for: Any) -> None:
    relay = relay_for(capture.url, "--max-request-bytes", "1000", "--rate-per-minute", "5")
    async with aiohttp.ClientSession() as s:
        async with s.post(relay.base + "/gw", data=b"x" * 2000, headers={"Content-Type": ohttp.MEDIA_TYPE_REQUEST}) as r:
            assert r.status == 413
        statuses = []
        for _ in range(6):
            async with s.post(relay.base + "/gw", data=b"ok", headers={"Content-Type": ohttp.MEDIA_TYPE_REQUEST}) as r:
                statuses.append(r.status)
    assert statuses[:4] == [200] * 4 and statuses[-1] == 429


async def test_relay_caches_keys_for_their_lifetime(capture: Any, relay_for: Any) -> None:
    relay = relay_for(capture.url)
    async with aiohttp.ClientSession() as s:
        bodies = []
        for _ in range(3):
            async with s.get(relay.base + "/gw", headers={"Accept": ohttp.MEDIA_TYPE_KEYS}) as r:
                assert r.status == 200 and "Set-Cookie" not in r.headers
                bodies.append(await r.read())
    assert len(set(bodies)) == 1
    assert len([h for h, _ in capture.requests]) == 1  # one upstream fetch served all three clients


async def test_relay_dead_gateway_gives_502_quickly(relay_for: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/.well-known/ohttp-gateway"
    relay = relay_for(dead)
    async with aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.post(relay.base + "/gw", data=b"x", headers={"Content-Type": ohttp.MEDIA_TYPE_REQUEST}) as r:
            assert r.status == 502
        assert time.monotonic() - t0 < 2


async def test_relay_slow_gateway_gives_504(capture: Any, relay_for: Any) -> None:
    capture.delay = 3
    relay = relay_for(capture.url, "--read-timeout", "0.5")
    async with aiohttp.ClientSession() as s:
        async with s.post(relay.base + "/gw", data=b"x", headers={"Content-Type": ohttp.MEDIA_TYPE_REQUEST}) as r:
            assert r.status == 504
