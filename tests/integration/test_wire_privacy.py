"""What the relay and the gateway learn beyond the content (issue 15 items 3 and 11), measured on the wire.

The chain is real: the ``openai`` SDK (or raw HTTP) -> ``veil proxy`` -> ``veil relay`` -> a wire observer in this
process -> ``veil gateway`` (echo engine). The observer records the bytes the relay forwards and receives, as an
operator tapping the relay-gateway link would, and, holding the gateway's test key (``--key-file``), opens the
requests to see exactly which headers reach the gateway.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx2 as httpx
import openai
import pytest
from aiohttp import web

import ohttp
from ohttp import bhttp
from ohttp._varint import decode_varint
from ohttp.encapsulation import entropy_len
from proxy import OhttpClient
from proxy.verify import make_verifier

from .conftest import Proc, free_port, start_veil

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
SEED = bytes(range(100, 132))
KEY = ohttp.GatewayKey.derive(3, SEED)


@dataclass
class Exchange:
    """One POST the relay forwarded: the encapsulated request, the inner request it holds, and the answer."""

    content_type: str
    request: bytes
    inner: bhttp.Request
    response: bytearray = field(default_factory=bytearray)


class WireObserver:
    """Stands where the relay thinks the gateway is; records every POST and forwards it, streaming the answer."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> WireObserver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def clear(self) -> None:
        self.exchanges.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ctype = request.headers.get("Content-Type", "")
        if request.method == "POST":
            self.exchanges.append(ex := Exchange(ctype, body, _open(body, ctype)))
        headers = {k: request.headers[k] for k in ("Content-Type", "Accept", "Incremental") if k in request.headers}
        async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
            request.method, self.upstream + request.path_qs, data=body or None, headers=headers
        ) as up:
            out = web.StreamResponse(status=up.status, headers={
                k: up.headers[k] for k in ("Content-Type", "Cache-Control", "Incremental") if k in up.headers})
            out.enable_chunked_encoding()
            await out.prepare(request)
            async for piece in up.content.iter_any():
                if request.method == "POST":
                    ex.response += piece
                await out.write(piece)
            await out.write_eof()
        return out


def _open(body: bytes, ctype: str) -> bhttp.Request:
    """The inner request, opened with the gateway's key (what the gateway itself sees)."""
    if ctype == ohttp.MEDIA_TYPE_REQUEST:
        inner, _ = ohttp.Gateway(ohttp.KeyRing([KEY])).decapsulate(body)
    else:
        dec = ohttp.ChunkedGatewayRequest(ohttp.KeyRing([KEY]))
        dec.receive_data(body)
        dec.receive_data(b"")
        parts = []
        while (ev := dec.next_event()) is not ohttp.NEED_DATA:
            assert isinstance(ev, ohttp.Chunk)
            parts.append(ev.data)
        inner = b"".join(parts)
    return bhttp.decode_request(inner)


def sealed_chunk_sizes(ex: Exchange) -> list[int]:
    """The lengths of the non-final sealed chunks of a chunked response, as the relay reads them off the wire."""
    aead = ohttp.AeadId(int.from_bytes(ex.request[5:7], "big"))
    data, pos, sizes = bytes(ex.response), entropy_len(aead), []
    while True:
        out = decode_varint(data, pos)
        assert out is not None
        length, pos = out
        if length == 0:
            return sizes
        sizes.append(length)
        pos += length


@dataclass
class Chain:
    gateway: Proc
    observer: WireObserver
    relay: Proc
    proxy: Proc


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    key_file = Path(tmp_path_factory.mktemp("key")) / "key.json"
    key_file.write_text(json.dumps({"key_id": 3, "seed": SEED.hex()}))
    gp, rp, pp = free_port(), free_port(), free_port()
    procs: list[Proc] = []
    observer: WireObserver | None = None
    try:
        procs.append(start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}", "--key-file",
                                 str(key_file)], gp))
        observer = WireObserver(f"http://127.0.0.1:{gp}").start()
        procs.append(start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway",
                                 f"gw=http://127.0.0.1:{observer.port}{WELL_KNOWN}"], rp))
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                                 "--insecure-allow-simulated"], pp))
        yield Chain(procs[0], observer, procs[1], procs[2])
    finally:
        for p in reversed(procs):
            p.stop()
            p.log_path.unlink(missing_ok=True)
        if observer is not None:
            observer.stop()


def sdk(chain: Chain) -> openai.OpenAI:
    return openai.OpenAI(base_url=chain.proxy.base + "/v1", api_key="sk-local-unused", max_retries=0)


# -- item 3: sizes on the relay's wire --------------------------------------------------------------------------------


def test_stream_chunk_sizes_do_not_spell_out_token_lengths(chain: Chain) -> None:
    """An answer whose tokens have 30 different lengths used to give 30 different sealed-chunk sizes."""
    words = [chr(ord("a") + n % 26) * n for n in range(1, 31)]
    random.Random(15).shuffle(words)
    text = " ".join(words)
    chain.observer.clear()
    parts = [c.choices[0].delta.content or "" for c in sdk(chain).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": text}], stream=True) if c.choices]
    assert "".join(parts) == text
    (ex,) = chain.observer.exchanges
    assert ex.content_type == ohttp.MEDIA_TYPE_CHUNKED_REQUEST
    sizes = sealed_chunk_sizes(ex)[1:]  # after the response head: one chunk per SSE event
    assert len(sizes) >= 30
    assert len(set(sizes)) <= 2, f"{len(set(sizes))} sealed-chunk sizes: {sorted(set(sizes))}"


def test_whole_responses_are_padded_to_a_bucket(chain: Chain) -> None:
    chain.observer.clear()
    for n in (1, 40, 150):
        r = sdk(chain).chat.completions.create(model="echo", messages=[{"role": "user", "content": "x" * n}])
        assert r.choices[0].message.content == "x" * n
    sizes = {len(ex.response) for ex in chain.observer.exchanges}
    assert len(sizes) == 1, sizes


@pytest.mark.parametrize("stream", [False, True])
def test_request_sizes_collapse_to_buckets(chain: Chain, stream: bool) -> None:
    """The encapsulated request's size used to be the prompt's length plus a constant."""
    chain.observer.clear()
    prompts = ["hi", "x" * 10, "y " * 50, "z" * 400, "w" * 700]
    for p in [*prompts, "v" * 3000]:
        r = sdk(chain).chat.completions.create(model="echo", messages=[{"role": "user", "content": p}], stream=stream)
        if stream:
            list(r)  # type: ignore[call-overload]
    sizes = [len(ex.request) for ex in chain.observer.exchanges]
    inner_sizes = {len(ex.request) - 7 - 32 - 16 - (1 if stream else 0) for ex in chain.observer.exchanges}
    assert len(set(sizes[:5])) == 1, sizes  # every short prompt looks alike
    assert sizes[5] > sizes[0]  # a long one lands in a larger bucket
    assert all(n % 1024 == 0 for n in inner_sizes), inner_sizes


# -- item 11: what the proxy lets through ------------------------------------------------------------------------------


HOSTILE = {
    "X-Real-IP": "10.1.2.3", "True-Client-IP": "10.1.2.3", "X-Forwarded-For": "10.1.2.3", "Forwarded": "for=10.1.2.3",
    "Referer": "https://intranet.example/secret-project",
    "Accept-Language": "fr-CH, fr;q=0.9", "Sec-CH-UA": '"Chromium";v="130"', "Sec-CH-UA-Platform": '"Linux"',
    "Sec-CH-UA-Mobile": "?0", "Idempotency-Key": "idem-123", "User-Agent": "my-laptop/1.0", "Cookie": "s=1",
    "X-Request-Id": "req-9", "OpenAI-Organization": "org-1", "DNT": "1", "Via": "1.1 corp-proxy",
}
ALLOWED = {"content-type", "accept", "authorization", "openai-beta", "x-veil-tenant", "date"}


async def test_only_allowed_headers_reach_the_gateway(chain: Chain) -> None:
    chain.observer.clear()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
        for stream in (False, True):
            # The proxy's own page is the one Origin it answers (proxy/client/guard.py); it must not travel on.
            async with s.post(chain.proxy.base + "/v1/chat/completions", json={**body, "stream": stream},
                              headers={**HOSTILE, "Origin": chain.proxy.base, "Accept": "application/json",
                                       "OpenAI-Beta": "assistants=v2"}) as r:
                assert r.status == 200
                await r.read()
        async with s.get(chain.proxy.base + "/v1/models", headers=HOSTILE) as r:
            assert r.status == 200
    # The SDK's own fingerprint (X-Stainless-OS, -Arch, -Runtime-Version, -Package-Version, ...) stays home too.
    sdk(chain).chat.completions.create(model="echo", messages=[{"role": "user", "content": "sdk"}])
    assert len(chain.observer.exchanges) == 4
    for ex in chain.observer.exchanges:
        names = {n.decode() for n, _ in ex.inner.headers}
        assert names <= ALLOWED, names - ALLOWED
        assert "date" in names
        values = b" ".join(v for _, v in ex.inner.headers)
        for leak in (b"10.1.2.3", b"intranet", b"127.0.0.1", b"fr-CH", b"Chromium", b"idem-123", b"my-laptop", b"Linux"):
            assert leak not in values
    assert (b"openai-beta", b"assistants=v2") in chain.observer.exchanges[0].inner.headers


def test_the_in_process_transport_sends_only_allowed_headers(chain: Chain) -> None:
    from proxy.client import VeilTransport

    chain.observer.clear()
    transport = VeilTransport(chain.relay.base + "/gw", allow_simulated=True)
    client = openai.OpenAI(base_url="http://veil.invalid/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(transport=transport, headers=HOSTILE))
    try:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "in process"}])
    finally:
        client.close()
        transport.close()
    (ex,) = chain.observer.exchanges
    names = {n.decode() for n, _ in ex.inner.headers}
    assert names <= ALLOWED and "date" in names, names


# -- coalescing ----------------------------------------------------------------------------------------------------------


async def test_coalesce_ms_joins_events_without_delaying_the_first_beyond_the_window(veil_process: object) -> None:
    import time

    port = free_port()
    gw: Proc = veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}",  # type: ignore[operator]
                             "--echo-token-delay", "0.01", "--coalesce-ms", "150"], port)
    c = OhttpClient(gw.base + WELL_KNOWN, keys_url=gw.base + WELL_KNOWN,
                    attestation_url=gw.base + "/.well-known/veil-attestation",
                    verifier=make_verifier(allow_simulated=True))
    words = " ".join(f"w{i}" for i in range(60))
    try:
        t0 = time.monotonic()
        r = await c.request("POST", "/v1/chat/completions", [("content-type", "application/json")],
                            json.dumps({"model": "echo", "stream": True,
                                        "messages": [{"role": "user", "content": words}]}).encode(), chunked=True)
        assert r.pieces is not None
        arrivals = [(time.monotonic() - t0, p) async for p in r.pieces]
    finally:
        await c.close()
    body = b"".join(p for _, p in arrivals)
    assert body.count(b"data: ") == 60 + 3 and body.endswith(b"data: [DONE]\n\n")
    assert 3 <= len(arrivals) <= 12, len(arrivals)  # 63 events in ~0.6 s: a handful of batches
    assert arrivals[0][0] < 0.15 + 0.5  # the first token waited at most the window (plus start-up slack)
    assert all(len(p) % 256 == 0 for _, p in arrivals)  # each batch padded as a whole
