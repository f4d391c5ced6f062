"""Attacks on ``veil relay``'s time, slots, connections and key cache, against real processes on loopback (issue 15,
items 4, 10 and 13). No assertion depends on how fast this machine is: each waits for the behaviour, with a
generous bound."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import ohttp
from ohttp import bhttp
from proxy import OhttpClient
from proxy.verify import make_verifier

from .conftest import Proc, free_port

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
HEAD = b"POST /gw HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-req\r\nContent-Length: 1000\r\n\r\n"


def gateway(veil_process: Callable[..., Proc], *extra: str) -> Proc:
    gp = free_port()
    return veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}", *extra], gp)


def relay(veil_process: Callable[..., Proc], target: str, *extra: str) -> Proc:
    rp = free_port()
    return veil_process(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw={target}", *extra], rp)


async def in_flight(relay: Proc) -> float:
    async with aiohttp.ClientSession() as s, s.get(relay.base + "/metrics") as r:
        m = re.search(r"^veil_relay_in_flight (\S+)$", await r.text(), re.M)
        assert m is not None
        return float(m.group(1))


async def wait_in_flight(relay: Proc, n: int, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while await in_flight(relay) != n:
        assert time.monotonic() < deadline, f"the relay never had {n} requests in flight"
        await asyncio.sleep(0.1)


async def drip(port: int, *, local: str = "127.0.0.1", every: float = 1.0, bound: float = 60.0) -> bytes:
    """Send a request head, then one body byte every ``every`` seconds, until the relay answers or hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        writer.write(HEAD)
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            writer.write(b"\x00")
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(4096), every)
            except TimeoutError:
                continue
            return data
        return b"still connected"
    except (ConnectionError, OSError):
        return b"reset"
    finally:
        writer.close()


def client(relay: Proc, local: str = "127.0.0.1") -> OhttpClient:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0), force_close=True))
    return OhttpClient(relay.base + "/gw", verifier=make_verifier(allow_simulated=True), session=session)


async def models_status(c: OhttpClient) -> int:
    try:
        r = await c.request("GET", "/v1/models")
    except Exception as exc:  # the relay's refusal reaches the client as "... answered HTTP 503 ..."
        m = re.search(r"answered HTTP (\d+)", str(exc))
        return int(m.group(1)) if m else 0
    return r.status


async def close(c: OhttpClient) -> None:
    session = c._session
    await c.close()
    if session is not None:
        await session.close()


# -- item 4: slow senders, one address, clients that do not read ---------------------------------------------------


async def test_slow_drip_senders_are_cut_off_and_free_their_slots(veil_process: Callable[..., Proc]) -> None:
    """Two connections dripping a byte a second (well inside --client-timeout, 30 s) held --max-concurrent 2 for
    as long as they liked; now the body deadline cuts them off and a legitimate request gets through."""
    gw = gateway(veil_process)
    r = relay(veil_process, gw.base + WELL_KNOWN, "--max-concurrent", "2", "--body-timeout", "3", "--min-rate", "4096")
    c = client(r)
    try:
        await c.refresh_keys()
        drips = [asyncio.create_task(drip(r.port)) for _ in range(2)]
        await wait_in_flight(r, 2)
        assert await models_status(c) == 503  # the attack works while the drips last ...
        replies = await asyncio.gather(*drips)
        for reply in replies:  # ... and they are cut off with 408, not left to drip for ever
            assert reply.startswith(b"HTTP/1.1 408"), reply[:60]
        assert await models_status(c) == 200
    finally:
        await close(c)


async def test_one_address_cannot_take_every_slot_or_connection(veil_process: Callable[..., Proc]) -> None:
    gw = gateway(veil_process)
    r = relay(veil_process, gw.base + WELL_KNOWN, "--max-concurrent", "4", "--max-in-flight-per-address", "2",
              "--max-connections-per-address", "4", "--body-timeout", "60", "--max-body-time", "60")
    c = client(r, local="127.0.0.3")
    try:
        await c.refresh_keys()
        drips = [asyncio.create_task(drip(r.port, local="127.0.0.2", bound=300)) for _ in range(2)]
        await wait_in_flight(r, 2)
        third = await drip(r.port, local="127.0.0.2", bound=30)
        assert third.startswith(b"HTTP/1.1 429"), third[:60]  # the address has its 2 in flight
        assert await models_status(c) == 200  # another address still has the other slots

        # Connections: 2 drips + 2 idle = the cap of 4; a fifth from that address is closed as it opens.
        idle = [socket.create_connection(("127.0.0.1", r.port), source_address=("127.0.0.2", 0)) for _ in range(2)]
        extra = socket.create_connection(("127.0.0.1", r.port), source_address=("127.0.0.2", 0), timeout=30)
        try:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                assert extra.recv(4096) == b""
            except ConnectionResetError:
                pass
            for s in idle:  # the idle ones under the cap are served
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                s.settimeout(30)
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            extra.close()
            for s in idle:
                s.close()
        for t in drips:
            t.cancel()
        await asyncio.gather(*drips, return_exceptions=True)
    finally:
        await close(c)


async def test_client_that_never_reads_its_response_is_dropped(veil_process: Callable[..., Proc]) -> None:
    """A streamed answer much larger than the socket buffers, to a client that never reads: the relay's write waits
    for ever and holds the slot; --write-timeout drops the client instead."""
    gw = gateway(veil_process)
    r = relay(veil_process, gw.base + WELL_KNOWN, "--max-concurrent", "1", "--write-timeout", "2")
    async with aiohttp.ClientSession() as s, s.get(gw.base + WELL_KNOWN) as resp:
        config = ohttp.decode_list(await resp.read())[0]
    words = "ab " * 150_000  # echoed one SSE event per word: tens of MB
    inner = bhttp.encode_request(bhttp.Request(
        method=b"POST", path=b"/v1/chat/completions",
        headers=((b"content-type", b"application/json"), (b"date", formatdate(usegmt=True).encode())),
        content=orjson.dumps({"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]})))
    wire = ohttp.ChunkedClientRequest(config).encode_chunk(inner, final=True)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", r.port))
    c = client(r)
    try:
        await c.refresh_keys()
        sock.sendall(b"POST /gw HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-chunked-req\r\n"
                     + f"Content-Length: {len(wire)}\r\n\r\n".encode() + wire)
        await wait_in_flight(r, 1)
        assert await models_status(c) == 503  # the reader that never reads holds the only slot
        deadline = time.monotonic() + 60
        while (status := await models_status(c)) == 503 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert status == 200
    finally:
        sock.close()
        await close(c)


# -- item 10: junk that draws a 422 must not evict the relay's cached keys -------------------------------------------


@pytest.fixture
async def counting_proxy(veil_process: Callable[..., Proc]) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """A real gateway behind an in-process pass-through that counts the key fetches reaching it."""
    gw = gateway(veil_process)
    counts = {"keys": 0, "attestation": 0}

    async def passthrough(request: web.Request) -> web.Response:
        if request.method == "GET" and request.path == WELL_KNOWN:
            counts["keys"] += 1
        elif request.path.endswith("/veil-attestation"):
            counts["attestation"] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with aiohttp.ClientSession() as s, s.request(request.method, gw.base + request.path_qs,
                                                           data=await request.read(), headers=headers) as up:
            return web.Response(status=up.status, body=await up.read(),
                                headers={k: v for k, v in up.headers.items()
                                         if k in ("Content-Type", "Cache-Control")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", passthrough)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}{WELL_KNOWN}", counts
    await server.close()


async def test_junk_422s_do_not_make_the_relay_refetch_keys(veil_process: Callable[..., Proc],
                                                            counting_proxy: tuple[str, dict[str, int]]) -> None:
    url, counts = counting_proxy
    r = relay(veil_process, url, "--rate-per-minute", "100000", "--key-refresh-interval", "3600")
    async with aiohttp.ClientSession() as s:
        async def get_keys() -> bytes:
            async with s.get(r.base + "/gw") as resp:
                assert resp.status == 200
                return await resp.read()

        async def junk(key_id: int) -> None:
            body = bytes([key_id]) + b"\x00\x20\x00\x01\x00\x01" + bytes(32) + bytes(64)
            async with s.post(r.base + "/gw", data=body, headers={"Content-Type": "message/ohttp-req"}) as resp:
                assert resp.status == 422, await resp.text()

        keys = await get_keys()
        configs = ohttp.decode_list(keys)
        # The junk is X25519-shaped (KEM 0x0020): aim it at the X25519 configuration the relay holds.
        cached_id = next(c.key_id for c in configs if c.kem == ohttp.KemId.X25519_SHA256)
        unknown_id = max(c.key_id for c in configs) + 1
        assert counts["keys"] == 1
        # A key id the relay does not hold: the 422 says nothing about the cached keys.
        for _ in range(20):
            await junk(unknown_id)
            assert await get_keys() == keys
        assert counts["keys"] == 1, counts
        # The cached key id: one drop (it could be a rotation), then no more within --key-refresh-interval.
        for _ in range(20):
            await junk(cached_id)
            assert await get_keys() == keys
        assert counts["keys"] == 2, counts


# -- item 13: a TLS terminator in front of the relay -----------------------------------------------------------------


async def _statuses(relay: Proc, forwarded_for: list[str]) -> list[int]:
    out = []
    async with aiohttp.ClientSession() as s:
        for xff in forwarded_for:
            async with s.post(relay.base + "/gw", data=b"\x00" * 50, headers={
                    "Content-Type": "message/ohttp-req", "X-Forwarded-For": xff}) as resp:
                out.append(resp.status)
    return out


async def test_trusted_proxy_forwarded_for_picks_the_rate_limit_bucket(veil_process: Callable[..., Proc]) -> None:
    gw = gateway(veil_process)
    behind = relay(veil_process, gw.base + WELL_KNOWN, "--rate-per-minute", "2", "--trusted-proxy", "127.0.0.0/8")
    direct = relay(veil_process, gw.base + WELL_KNOWN, "--rate-per-minute", "2")
    if time.monotonic() % 60 > 45:  # the rate window is a fixed minute: do not straddle its end
        await asyncio.sleep(61 - time.monotonic() % 60)
    a, b = "198.51.100.7", "203.0.113.9"
    # Behind a trusted terminator each client has its own bucket; a forged hop to its left changes nothing.
    got = await _statuses(behind, [a, f"1.2.3.4, {a}", a, b, b])
    assert got[:2] != [429, 429] and got[2] == 429 and 429 not in got[3:], got
    # Without --trusted-proxy the header is the client's to forge: it is ignored, everyone shares the peer's bucket.
    got = await _statuses(direct, [a, b, "192.0.2.1"])
    assert 429 not in got[:2] and got[2] == 429, got
    for p in (behind, direct):
        p.stop()
        for addr in (a, b, "1.2.3.4", "192.0.2.1"):
            assert addr not in p.log()


# -- the gateway faces only relays, but its request bodies are bounded in time too ------------------------------------


@pytest.mark.parametrize("media", ["message/ohttp-req", "message/ohttp-chunked-req"])
async def test_gateway_cuts_off_a_slow_body(veil_process: Callable[..., Proc], media: str) -> None:
    gw = gateway(veil_process, "--body-timeout", "2")
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(f"POST {WELL_KNOWN} HTTP/1.1\r\nHost: x\r\nContent-Type: {media}\r\n"
                     "Content-Length: 1000\r\n\r\n".encode())
        reply = b""
        for _ in range(60):  # a byte every half second: no read ever waits long, the whole body never arrives
            writer.write(b"\x00")
            await writer.drain()
            try:
                reply = await asyncio.wait_for(reader.read(4096), 0.5)
                break
            except TimeoutError:
                continue
        assert reply.startswith(b"HTTP/1.1 408"), reply[:60]
    finally:
        writer.close()


# -- answers over --max-response-bytes end; the client is never left waiting -------------------------------------------


@pytest.fixture
async def big_answers() -> AsyncIterator[str]:
    """A stand-in gateway answering POST /whole with 5,000 bytes and a Content-Length, /chunked with 5,000 bytes in
    chunks of 1,000 (no length), /incremental the same marked ``Incremental: ?1``, /broken 1,000 bytes of a
    promised 3,000 (within the limit) before it hangs up."""

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        kind = request.match_info["kind"]
        if kind == "whole":
            return web.Response(body=bytes(5000), content_type="message/ohttp-res")
        resp = web.StreamResponse(headers={"Content-Type": "message/ohttp-chunked-res",
                                           **({"Incremental": "?1"} if kind == "incremental" else {})})
        if kind == "broken":
            resp.content_length = 3000
        else:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(1 if kind == "broken" else 5):
            await resp.write(bytes(1000))
            await asyncio.sleep(0.01)  # separate reads at the relay
        if kind == "broken":
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/{kind}", answer)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


def _exchange(port: int, path: str) -> bytes:
    """One keep-alive request on a raw socket; everything the relay sends until it closes the connection (a relay
    that leaves it open past the bound fails the test, rather than hanging it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-req\r\nContent-Length: 1\r\n"
                  "\r\n\x00".encode())
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            pytest.fail(f"the relay left the connection open after {got[:40]!r}... ({len(got)} bytes)")
        return got


async def test_answers_over_max_response_bytes_end_cleanly(veil_process: Callable[..., Proc],
                                                           big_answers: str) -> None:
    """A whole answer whose Content-Length is over the limit is a 502 (nothing was sent yet); one that grows past the
    limit, or that the gateway breaks off, ends with the connection closed short of its final chunk or length."""
    rp = free_port()
    r = veil_process(["relay", "--listen", f"127.0.0.1:{rp}", "--max-response-bytes", "4096",
                      *(a for k in ("whole", "chunked", "incremental", "broken")
                        for a in ("--gateway", f"{k}={big_answers}/{k}"))], rp)
    async with aiohttp.ClientSession() as s:
        async with s.post(r.base + "/whole", data=b"\x00", headers={"Content-Type": "message/ohttp-req"},
                          timeout=aiohttp.ClientTimeout(total=30)) as resp:
            assert resp.status == 502 and (await resp.json())["title"] == "bad gateway"
    for kind in ("chunked", "incremental"):
        got = await asyncio.to_thread(_exchange, rp, f"/{kind}")
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower(), head
        assert 0 < body.count(bytes(1000)) <= 4 and not body.endswith(b"0\r\n\r\n"), (kind, len(body))
    got = await asyncio.to_thread(_exchange, rp, "/broken")
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 3000" in head.lower() and len(body) < 3000
    async with aiohttp.ClientSession() as s, s.get(r.base + "/metrics") as resp:
        text = await resp.text()
    assert 'veil_relay_requests_total{outcome="response_too_large"} 3.0' in text
    assert 'veil_relay_requests_total{outcome="gateway_broke"} 1.0' in text
