"""Attacks on a real ``veil gateway`` process (issue 15): a request that costs seconds to decode, prefix-cache
probing through client-chosen salts, and replays of requests without a ``Date``."""

from __future__ import annotations

import asyncio
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import aiohttp
import orjson
import pytest

import ohttp
from ohttp import bhttp
from proxy import OhttpClient
from proxy.verify import make_verifier

from .conftest import Proc, free_port

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
PROBLEM_DATE = "https://iana.org/assignments/http-problem-types#date"


def gateway_args(port: int, *extra: str) -> list[str]:
    return ["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", *extra]


async def fetch_config(gw: Proc) -> ohttp.KeyConfig:
    """The gateway's X25519 configuration (it publishes X-Wing first): the replay tests fix a 32-byte ephemeral
    key so that two encapsulations are byte-identical."""
    async with aiohttp.ClientSession() as s, s.get(gw.base + WELL_KNOWN) as r:
        return next(c for c in ohttp.decode_list(await r.read()) if c.kem == ohttp.KemId.X25519_SHA256)


async def post_raw(gw: Proc, body: bytes, ctype: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(gw.base + WELL_KNOWN, data=body,
                                                    headers={"Content-Type": ctype}) as r:
        return r.status, await r.read()


def client_for(gw: Proc) -> OhttpClient:
    return OhttpClient(gw.base + WELL_KNOWN, keys_url=gw.base + WELL_KNOWN,
                       attestation_url=gw.base + "/.well-known/veil-attestation",
                       verifier=make_verifier(allow_simulated=True))


# -- item 5: one request must not hold the event loop ---------------------------------------------------------------


async def _healthz_latencies(gw: Proc, stop: asyncio.Event) -> list[float]:
    out: list[float] = []
    async with aiohttp.ClientSession() as s:
        while not stop.is_set():
            t0 = time.perf_counter()
            async with s.get(gw.base + "/healthz") as r:
                assert r.status == 200
            out.append(time.perf_counter() - t0)
            await asyncio.sleep(0.01)
    return out


@pytest.mark.parametrize("framing", ["bhttp-chunks", "ohttp-chunks"])
async def test_millions_of_tiny_chunks_get_a_clear_error_and_healthz_stays_fast(
    veil_process: Callable[..., Proc], framing: str
) -> None:
    """A ~4 MiB request of one-byte pieces (2M indeterminate-length BHTTP chunks inside one OHTTP message, or 200k
    chunked-OHTTP chunks) took the gateway ~3 s of synchronous decoding; /healthz waited 2.7 s behind it."""
    port = free_port()
    gw = veil_process(gateway_args(port), port)  # the default 4 MiB request limit
    config = await fetch_config(gw)
    head = bhttp.encode_request_head(bhttp.Request(
        method="POST", path="/v1/chat/completions",
        headers=[("content-type", "application/json"), ("date", formatdate(usegmt=True))]))
    if framing == "bhttp-chunks":
        inner = head + b"\x01{" * 2_000_000 + b"\x00\x00"
        wire, ctx = ohttp.ClientRequest(config).encapsulate(inner)
        ctype = ohttp.MEDIA_TYPE_REQUEST
    else:
        creq = ohttp.ChunkedClientRequest(config)
        wire = b"".join([creq.encode_chunk(head), *(creq.encode_chunk(b"{") for _ in range(200_000)),
                         creq.encode_chunk(b"\x00\x00", final=True)])
        ctype = ohttp.MEDIA_TYPE_CHUNKED_REQUEST
    assert 3_500_000 < len(wire) < 4 * 1024 * 1024
    stop = asyncio.Event()
    poller = asyncio.create_task(_healthz_latencies(gw, stop))
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    status, body = await post_raw(gw, wire, ctype)
    took = time.perf_counter() - t0
    await asyncio.sleep(0.2)
    stop.set()
    latencies = await poller
    assert max(latencies) < 0.5, f"/healthz waited {max(latencies):.2f}s behind one request"
    assert took < 1.5, f"the hostile request took {took:.2f}s"
    if framing == "bhttp-chunks":
        # Decapsulated fine, so the error is encapsulated: an inner 413 in OpenAI error JSON.
        assert status == 200, body
        resp = bhttp.decode_response(ctx.decapsulate(body))
        assert resp.status == 413
        err = orjson.loads(resp.content)["error"]
        assert err["code"] == "request_too_complex" and "content chunks" in err["message"]
    else:
        # Refused while still decapsulating: an outer 413 problem.
        assert status == 413 and b"request chunks" in body
    c = client_for(gw)
    try:
        assert (await c.request("GET", "/v1/models")).status == 200
    finally:
        await c.close()


# -- item 6: every route is salted by the gateway; a client's cache_salt never reaches the engine ---------------------


class RecordingUpstream(ThreadingHTTPServer):
    """An OpenAI-compatible stand-in on loopback (``--engine upstream``) that records every body it receives. It
    runs in its own thread: the test's event loop is blocked while ``veil_process`` waits for the gateway."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: RecordingUpstream

    def _answer(self, doc: dict[str, Any]) -> None:
        body = orjson.dumps(doc)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer({"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append((self.path, orjson.loads(body)))
        self._answer({"id": "x", "object": "stand-in", "choices": [], "data": []})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


ROUTES = {
    "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "my secret prompt"}]},
    "/v1/completions": {"model": "m", "prompt": "my secret prompt"},
    "/v1/responses": {"model": "m", "input": "my secret prompt"},
    "/v1/embeddings": {"model": "m", "input": "my secret prompt"},
}


async def _send_all(gw: Proc, headers: list[tuple[str, str]]) -> None:
    c = client_for(gw)
    try:
        for path, body in ROUTES.items():
            r = await c.request("POST", path, [("content-type", "application/json"), *headers],
                                orjson.dumps({**body, "cache_salt": "victims-salt"}))
            assert r.status == 200, (path, r.body)
    finally:
        await c.close()


async def test_every_route_gets_the_gateways_salt_and_never_the_clients(
    veil_process: Callable[..., Proc], upstream: RecordingUpstream
) -> None:
    """A tenant that sends another tenant's salt (or none, on /v1/responses) must not share that tenant's prefix
    cache: the engine sees only salts the gateway made."""
    port = free_port()
    gw = veil_process(gateway_args(port, "--engine", "upstream", "--upstream-url", upstream.url), port)
    await _send_all(gw, [])
    await _send_all(gw, [("x-veil-tenant", "acme")])
    await _send_all(gw, [("x-veil-tenant", "acme")])
    assert [p for p, _ in upstream.bodies] == list(ROUTES) * 3
    salts = [b.get("cache_salt") for _, b in upstream.bodies]
    assert all(isinstance(s, str) and len(s) >= 24 and s != "victims-salt" for s in salts), salts
    anonymous, acme1, acme2 = salts[:4], salts[4:8], salts[8:]
    assert len(set(anonymous)) == 4  # no tenant: a fresh salt per request
    assert acme1 == acme2 and len(set(acme1)) == 1 and not set(acme1) & set(anonymous)


async def test_cache_salt_off_forwards_no_salt_at_all(
    veil_process: Callable[..., Proc], upstream: RecordingUpstream
) -> None:
    port = free_port()
    gw = veil_process(gateway_args(port, "--engine", "upstream", "--upstream-url", upstream.url, "--cache-salt",
                                   "off"), port)
    await _send_all(gw, [])
    assert len(upstream.bodies) == 4
    assert all("cache_salt" not in b for _, b in upstream.bodies)


# -- item 9: Date is required, so a replay cannot outlive the replay cache --------------------------------------------


async def _undated_models(gw: Proc, config: ohttp.KeyConfig, eph: bytes) -> tuple[bytes, Any]:
    inner = bhttp.encode_request(bhttp.Request(method="GET", path="/v1/models"))
    return ohttp.ClientRequest(config).encapsulate(inner, ephemeral_key=eph)


async def test_undated_requests_are_refused_and_cannot_be_replayed_later(veil_process: Callable[..., Proc]) -> None:
    """Without a Date, a request's only protection was its ``enc`` in the replay cache: once the cache forgot it
    (2 x --replay-window), the relay could replay it and the gateway served it again."""
    port = free_port()
    gw = veil_process(gateway_args(port, "--replay-window", "1"), port)
    config = await fetch_config(gw)
    import os

    eph = os.urandom(32)
    for _ in range(2):  # the first time, and again after the replay cache has forgotten the enc
        wire, ctx = await _undated_models(gw, config, eph)
        status, body = await post_raw(gw, wire, ohttp.MEDIA_TYPE_REQUEST)
        assert status == 200
        resp = bhttp.decode_response(ctx.decapsulate(body))
        assert resp.status == 400 and orjson.loads(resp.content)["type"] == PROBLEM_DATE
        assert resp.header(b"date") is not None
        await asyncio.sleep(2.3)
    # A dated request replayed after the cache forgot it is refused by the Date window instead.
    inner = bhttp.encode_request(bhttp.Request(method="GET", path="/v1/models",
                                               headers=[("date", formatdate(usegmt=True))]))
    wire, ctx = ohttp.ClientRequest(config).encapsulate(inner, ephemeral_key=eph)
    wire2, ctx2 = ohttp.ClientRequest(config).encapsulate(inner, ephemeral_key=eph)
    assert wire == wire2
    status, body = await post_raw(gw, wire, ohttp.MEDIA_TYPE_REQUEST)
    assert bhttp.decode_response(ctx.decapsulate(body)).status == 200
    await asyncio.sleep(2.3)
    status, body = await post_raw(gw, wire2, ohttp.MEDIA_TYPE_REQUEST)
    replayed = bhttp.decode_response(ctx2.decapsulate(body))
    assert replayed.status == 400 and orjson.loads(replayed.content)["type"] == PROBLEM_DATE


async def test_allow_missing_date_is_an_explicit_opt_out(veil_process: Callable[..., Proc]) -> None:
    port = free_port()
    gw = veil_process(gateway_args(port, "--allow-missing-date"), port)
    import os

    wire, ctx = await _undated_models(gw, await fetch_config(gw), os.urandom(32))
    status, body = await post_raw(gw, wire, ohttp.MEDIA_TYPE_REQUEST)
    assert bhttp.decode_response(ctx.decapsulate(body)).status == 200
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "veil_cli", *gateway_args(free_port(), "--require-date",
                                                                          "--allow-missing-date")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not both" in r.stderr


async def test_the_python_client_always_sends_a_date(veil_process: Callable[..., Proc]) -> None:
    port = free_port()
    gw = veil_process(gateway_args(port), port)  # Date required
    c = client_for(gw)
    try:
        assert (await c.request("GET", "/v1/models")).status == 200
        assert not hasattr(c, "send_date")  # no switch to turn it off
    finally:
        await c.close()
