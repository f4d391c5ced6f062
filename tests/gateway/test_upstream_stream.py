"""The gateway in front of an ``--engine upstream`` server, whose streams are piped from the engine's socket onto the
relay's connection (``enclave.engines.sse``, ``ohttp_routes._pipe_events``): what the client gets when the engine
streams, breaks off, stalls or floods, and what the engine sees when the client goes away.

The engine is a scripted HTTP/1.1 server on raw asyncio streams (so it can break a response anywhere, and see its
connection close); the message's content picks the script."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

import hop
import ohttp
from enclave.attestation import SimulatedProvider
from enclave.engines import UpstreamEngine
from enclave.engines.sse import MAX_EVENT
from enclave.gateway import GatewayConfig, create_app
from enclave.gateway.app_state_keys import STATE
from ohttp import GatewayKey, KeyRing, bhttp
from tests.harness import traced_peak

from .conftest import WELL_KNOWN, Gateway, GatewayFactory, chat_request, dated, sse_data

EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(5)]
#: the flood: events of 32 KiB, 60 MiB in all, padded still under the client's 64 MiB limit on a response's content.
#: What the engine gets out before a reader that reads nothing holds it back is what the socket buffers on the way
#: take, and they autotune up to net.ipv4.tcp_rmem/tcp_wmem's maxima: 10-16 MiB with a 4 MiB tcp_wmem max, 35-40
#: MiB with 32 MiB maxima, the whole flood with 128 MiB ones. So the tests bound what the gateway holds (HELD_BOUND)
FLOOD_EVENT = b"data: " + b"x" * (32 * 1024 - 8) + b"\n\n"
FLOOD_EVENTS = 1920
#: "flood-on" sends FLOOD_EVENTs until the gateway hangs up, or this much (past any socket buffers: then it ends)
FLOOD_ON_GUARD = 256 << 20
#: the most this process (gateway, stand-in engine and client) may allocate at its peak while the client reads
#: nothing: 2.8-3.4 MiB measured, whatever the sysctls. A gateway that did not pause (hop.pipe.HIGH_WATER set to
#: 256 MiB) holds what the sockets' buffers leave of the flood: 55 MiB at its peak with a 4 MiB tcp_wmem max, 37 MiB
#: with 32 MiB maxima; with 128 MiB ones they take it all, and only the write-timeout test (whose flood goes on)
#: tells such a gateway apart there
HELD_BOUND = 8 << 20
#: what the "endless" engine sends without ending its event (then it ends the body): past the gateway's bound
ENDLESS = MAX_EVENT + 2 * 1024 * 1024


@dataclass
class Engine:
    """The scripted engine: its URL, and what it saw."""

    url: str = ""
    #: set when a streamed answer's connection was closed by the gateway before the script ended
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    #: bytes of the flood's events written into the socket (each write drained) so far
    flooded: int = 0
    connections: int = 0


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%b\r\n" % (len(data), data))
    await writer.drain()


async def _watch_eof(reader: asyncio.StreamReader, engine: Engine) -> None:
    try:
        if await reader.read(1):
            return
    except ConnectionError:  # reset: closed with our bytes unread
        pass
    engine.hung_up.set()


async def _script(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, engine: Engine) -> bool:
    """Answer one chat request; False when the connection is not to be used again."""
    if name == "refuse":  # the connection closes before any answer
        return False
    if name == "silent":  # no answer at all
        await _watch_eof(reader, engine)
        return False
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    if name == "ok":
        for event in EVENTS[:3]:
            await _chunk(writer, event)
            await asyncio.sleep(0.01)
        await _chunk(writer, EVENTS[3] + EVENTS[4][:7])  # two reads that cut one event apart
        await asyncio.sleep(0.01)  # (two reads: the gateway hands on the events of one read together)
        await _chunk(writer, EVENTS[4][7:] + b"data: [DONE]\n\n")
        await _chunk(writer, b"")
        return True
    if name == "break":
        for event in EVENTS[:2]:
            await _chunk(writer, event)
        await asyncio.sleep(0.05)
        writer.transport.abort()  # no final HTTP chunk: the engine died mid-stream
        return False
    if name == "stall":
        await _chunk(writer, EVENTS[0])
        await _watch_eof(reader, engine)  # and say nothing more
        return False
    if name == "slow":  # a long stream, one token every 20 ms, until the gateway hangs up
        watch = asyncio.ensure_future(_watch_eof(reader, engine))
        try:
            for i in range(2000):
                if watch.done():
                    break
                await _chunk(writer, b'data: {"n": %d}\n\n' % i)
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass
        await asyncio.wait_for(watch, 30)
        return False
    if name == "endless":  # an event whose lines go on and on, its blank line never sent
        watch = asyncio.ensure_future(_watch_eof(reader, engine))
        try:
            await _chunk(writer, EVENTS[0])
            line = b"data: " + b"x" * (64 * 1024 - 7) + b"\n"
            for _ in range(ENDLESS // len(line)):
                if watch.done():
                    break
                await _chunk(writer, line)
            await _chunk(writer, b"")
        except ConnectionError:
            pass
        try:
            await asyncio.wait_for(watch, 10)
        except TimeoutError:
            pass
        return False
    if name in ("flood", "flood-on"):
        events = FLOOD_EVENTS if name == "flood" else FLOOD_ON_GUARD // len(FLOOD_EVENT)
        for _ in range(events):
            try:
                await _chunk(writer, FLOOD_EVENT)
            except ConnectionError:  # the gateway closed the connection mid-flood
                engine.hung_up.set()
                raise
            engine.flooded += len(FLOOD_EVENT)
        await _chunk(writer, b"data: [DONE]\n\n")
        await _chunk(writer, b"")
        return True
    raise AssertionError(name)


async def _serve(engine: Engine, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    engine.connections += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next((int(v) for n, _, v in (h.partition(": ") for h in lines[1:])
                           if n.lower() == "content-length"), 0)
            body = await reader.readexactly(length) if length else b""
            if lines[0].startswith("GET /v1/models "):
                answer = orjson.dumps({"object": "list", "data": [{"id": "echo", "object": "model"}]})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(answer), answer))
                await writer.drain()
                continue
            if not await _script(orjson.loads(body)["messages"][0]["content"], reader, writer, engine):
                break
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    eng = Engine()
    server = await asyncio.start_server(lambda r, w: _serve(eng, r, w), "127.0.0.1", 0)
    eng.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield eng
        server.close()


MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def gateway_on(gateway_for: GatewayFactory, engine: Engine) -> MakeGateway:
    """A gateway on the scripted engine (``read_timeout`` for the upstream engine, the rest GatewayConfig's)."""

    async def make(read_timeout: float = 600.0, **config: Any) -> Gateway:
        upstream = UpstreamEngine(engine.url, read_timeout=read_timeout)
        gw = await gateway_for(engine=upstream, **config)
        for _ in range(200):
            if upstream.healthy():
                return gw
            await asyncio.sleep(0.01)
        raise AssertionError("the upstream engine did not come up")

    return make


def _events(content: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in sse_data(content).split(b"\n\n") if e]


async def test_a_stream_arrives_event_by_event_and_whole_events_only(gateway_on: MakeGateway) -> None:
    gw = await gateway_on()
    got = await gw.stream(chat_request("ok", stream=True))
    assert got.head.status == 200 and got.head.headers == ((b"content-type", b"text/event-stream"),)
    assert all(len(p) % 256 == 0 for p in got.pieces)  # each sealed chunk padded
    assert [sse_data(p) for p in got.pieces] == [*EVENTS[:3], EVENTS[3], EVENTS[4] + b"data: [DONE]\n\n"]
    assert got.chunks == 1 + 5 + 1
    assert gw.state.metrics.registry.get_sample_value("veil_gateway_stream_chunks_total") == 5


@pytest.mark.parametrize("config", [{"coalesce_ms": 50.0}, {"pad_to": 0}])
async def test_the_same_events_with_coalescing_and_without_padding(gateway_on: MakeGateway,
                                                                   config: dict[str, Any]) -> None:
    gw = await gateway_on(**config)
    got = await gw.stream(chat_request("ok", stream=True))
    assert _events(got.content) == [*EVENTS, b"data: [DONE]\n\n"]


async def test_a_stream_over_plain_ohttp_comes_whole(gateway_on: MakeGateway) -> None:
    gw = await gateway_on()
    _, resp = await gw.roundtrip(chat_request("ok", stream=True))
    assert resp.status == 200 and _events(resp.content) == [*EVENTS, b"data: [DONE]\n\n"]


def _engine_error(event: bytes) -> dict[str, Any]:
    assert event.startswith(b"data: ")
    err: dict[str, Any] = orjson.loads(event[6:])["error"]
    return err


async def test_an_engine_that_breaks_mid_stream_ends_it_in_an_error_event(gateway_on: MakeGateway) -> None:
    gw = await gateway_on()
    got = await gw.stream(chat_request("break", stream=True))  # read to its proper end: never a silent success
    events = _events(got.content)
    assert events[:2] == EVENTS[:2] and len(events) == 3
    assert _engine_error(events[2])["code"] == "engine_unavailable"


async def test_an_engine_that_stalls_mid_stream_hits_the_read_timeout(gateway_on: MakeGateway,
                                                                      engine: Engine) -> None:
    gw = await gateway_on(read_timeout=0.3)
    got = await asyncio.wait_for(gw.stream(chat_request("stall", stream=True)), 30)
    events = _events(got.content)
    assert events[0] == EVENTS[0] and len(events) == 2
    assert "ReadTimeout" in _engine_error(events[1])["message"]
    await asyncio.wait_for(engine.hung_up.wait(), 10)  # and its connection is closed


@pytest.mark.parametrize("config", [{}, {"coalesce_ms": 50.0}])
async def test_an_event_that_never_ends_is_cut_off_with_an_error_event(gateway_on: MakeGateway, engine: Engine,
                                                                       config: dict[str, Any]) -> None:
    gw = await gateway_on(**config)  # piped, and pulled
    got = await asyncio.wait_for(gw.stream(chat_request("endless", stream=True)), 30)
    events = _events(got.content)
    assert events[0] == EVENTS[0] and len(events) == 2
    assert _engine_error(events[1])["code"] == "engine_unavailable"
    assert len(got.content) < 64 * 1024  # nothing of the unfinished event was passed on
    await asyncio.wait_for(engine.hung_up.wait(), 10)  # and the engine's connection is closed (vLLM aborts)


async def test_an_event_that_never_ends_over_plain_ohttp(gateway_on: MakeGateway, engine: Engine) -> None:
    gw = await gateway_on()
    _, resp = await asyncio.wait_for(gw.roundtrip(chat_request("endless", stream=True)), 30)
    events = _events(resp.content)
    assert resp.status == 200 and events[0] == EVENTS[0] and len(events) == 2
    assert _engine_error(events[1])["code"] == "engine_unavailable"
    await asyncio.wait_for(engine.hung_up.wait(), 10)


async def test_an_engine_connection_idle_past_uvicorns_keep_alive_is_not_reused(
        gateway_on: MakeGateway, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = await gateway_on()
    await gw.stream(chat_request("ok", stream=True))
    reused = engine.connections
    await gw.stream(chat_request("ok", stream=True))
    assert engine.connections == reused  # kept alive between two requests close together
    # 4.5 s later (uvicorn, vLLM's server, closes an idle connection after 5 s): a request sent on the idle
    # connection might meet the engine closing it, so a fresh one is made
    real = time.monotonic
    monkeypatch.setattr(hop.client, "time", SimpleNamespace(monotonic=lambda: real() + 4.5))
    got = await gw.stream(chat_request("ok", stream=True))
    assert got.head.status == 200 and engine.connections == reused + 1


@pytest.mark.parametrize("script", ["silent", "refuse"])
async def test_an_engine_that_fails_before_its_head_is_an_openai_503(gateway_on: MakeGateway, script: str) -> None:
    gw = await gateway_on(read_timeout=0.3)
    got = await asyncio.wait_for(gw.stream(chat_request(script, stream=True)), 30)
    assert got.head.status == 503
    assert orjson.loads(got.content)["error"]["code"] == "engine_unavailable"


async def _open_stream(gw: Gateway, content: str) -> tuple[Any, ohttp.ChunkedClientRequest]:
    """A chunked request for a stream, its response with only the head read."""
    creq = ohttp.ChunkedClientRequest(await gw.key_config())
    wire = creq.encode_chunk(bhttp.encode_request(dated(chat_request(content, stream=True))), final=True)
    resp = await gw.client.post(WELL_KNOWN, data=wire,
                                headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_REQUEST, "Incremental": "?1"})
    assert resp.status == 200
    return resp, creq


@pytest.fixture
async def served(engine: Engine) -> AsyncIterator[tuple[str, web.Application]]:
    """A gateway on the scripted engine served as ``veil gateway`` serves it (``web.run_app``'s defaults): unlike
    the test server, aiohttp does not cancel a handler whose client has gone, so the gateway must notice itself."""
    upstream = UpstreamEngine(engine.url)
    app = create_app(engine=upstream, keyring=KeyRing([GatewayKey.generate(1)]), provider=SimulatedProvider(),
                     config=GatewayConfig())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        for _ in range(200):
            if upstream.healthy():
                break
            await asyncio.sleep(0.01)
        assert runner.addresses
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


async def test_a_client_gone_mid_stream_closes_the_engines_connection(
        served: tuple[str, web.Application], engine: Engine) -> None:
    base, app = served
    async with aiohttp.ClientSession() as s:
        async with s.get(base + WELL_KNOWN) as r:
            config = ohttp.decode_list(await r.read())[0]
        creq = ohttp.ChunkedClientRequest(config)
        wire = creq.encode_chunk(bhttp.encode_request(dated(chat_request("slow", stream=True))), final=True)
        resp = await s.post(base + WELL_KNOWN, data=wire,
                            headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_REQUEST, "Incremental": "?1"})
        assert resp.status == 200
        await resp.content.read(200)
        resp.close()  # hang up after the first bytes of a 40 s stream
        await asyncio.wait_for(engine.hung_up.wait(), 10)  # vLLM aborts the generation when this happens
        metrics = app[STATE].metrics
        for _ in range(100):
            if metrics.registry.get_sample_value("veil_gateway_requests_total",
                                                 {"framing": "chunked", "outcome": "client_gone"}) == 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the gateway did not count the client as gone")
        engine.hung_up.clear()
        resp = await s.post(base + WELL_KNOWN, data=ohttp.ChunkedClientRequest(config).encode_chunk(
            bhttp.encode_request(dated(chat_request("ok", stream=True))), final=True),
            headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_REQUEST, "Incremental": "?1"})
        assert resp.status == 200 and len(await resp.read()) > 0  # and the gateway goes on serving


async def test_a_slow_reader_holds_the_engine_back_and_still_gets_everything(gateway_on: MakeGateway,
                                                                             engine: Engine) -> None:
    gw = await gateway_on()
    with traced_peak() as held:
        resp, creq = await _open_stream(gw, "flood")
        for _ in range(100):  # the engine writes what the sockets and the gateway's bounded buffer take, then waits
            before = engine.flooded
            await asyncio.sleep(0.05)
            if engine.flooded == before:
                break
        peak = held()
    assert 0 < engine.flooded
    # a gateway that read on regardless would hold what of the flood the sockets' buffers did not take
    assert peak < HELD_BOUND, f"{peak} bytes held at the peak (the engine got {engine.flooded} out)"
    dec, bdec = creq.response(), bhttp.BHTTPDecoder(expect="response")
    size = 0
    async for piece in resp.content.iter_any():
        dec.receive_data(piece)
        while (chunk := dec.next_event()) is not ohttp.NEED_DATA:
            assert isinstance(chunk, ohttp.Chunk)
            bdec.receive_data(chunk.data)
            while (ev := bdec.next_event()) is not ohttp.NEED_DATA:
                if isinstance(ev, bhttp.Data):
                    size += len(sse_data(ev.data))
    dec.receive_data(b"")
    while (chunk := dec.next_event()) is not ohttp.NEED_DATA:
        assert isinstance(chunk, ohttp.Chunk) and chunk.final
    assert engine.flooded == FLOOD_EVENTS * len(FLOOD_EVENT)
    assert size == engine.flooded + len(b"data: [DONE]\n\n")


async def test_a_relay_that_reads_nothing_past_the_write_timeout_is_dropped_and_the_engine_closed(
        gateway_on: MakeGateway, engine: Engine) -> None:
    gw = await gateway_on(write_timeout=0.5)
    with traced_peak() as held:
        # never read: the relay stopped reading. A flood with no end: socket buffers that took all of a bounded one
        # would let the engine finish before the gateway gives up (and then there is no stream left to cut)
        resp, _ = await _open_stream(gw, "flood-on")
        try:
            # the engine is held back, then its connection closed once nothing was taken for write_timeout
            await asyncio.wait_for(engine.hung_up.wait(), 10)
            peak = held()
        finally:
            resp.close()
    assert peak < HELD_BOUND, f"{peak} bytes held at the peak (the engine got {engine.flooded} out)"
