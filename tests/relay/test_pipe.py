"""The relay's streamed answers (forward.py on hop/): pieces go from the gateway's socket callback straight onto the
client's socket. What that must keep: every byte in order, a client that stops reading holds back the gateway
instead of filling the relay's memory, a client that leaves closes the gateway's connection (so the engine stops),
and a stream that grows past the limit is cut."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.harness import traced_peak

from .conftest import MEDIA_CHUNKED_REQ, WELL_KNOWN, MakeRelay

BODY = b"\x01" + bytes(99)


class StreamingGateway:
    """A raw loopback server that answers every POST with a chunked ``message/ohttp-chunked-res`` stream of
    ``pieces`` pieces (``gap`` seconds apart), counting what it got out (each write is drained) and whether the
    relay closed the connection on it."""

    def __init__(self, pieces: list[bytes], gap: float = 0.0) -> None:
        self.pieces = pieces
        self.gap = gap
        self.sent = 0
        self.closed_by_peer = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await reader.read(65536)
            if not data:
                return
            head += data
        if head.startswith(b"GET"):  # the relay's key fetches: not what these tests look at
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: message/ohttp-chunked-res\r\nIncremental: ?1\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for piece in self.pieces:
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
                self.sent += len(piece)
                if self.gap:
                    await asyncio.sleep(self.gap)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            await reader.read()  # until the relay closes or reuses: a read of b"" means it closed
        except (ConnectionError, OSError):
            pass
        self.closed_by_peer.set()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{WELL_KNOWN}"


@pytest.fixture
async def streaming() -> AsyncIterator[Any]:
    made: list[StreamingGateway] = []

    async def make(pieces: list[bytes], gap: float = 0.0) -> StreamingGateway:
        gw = StreamingGateway(pieces, gap)
        gw.server = await asyncio.start_server(gw.handle, "127.0.0.1", 0)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        assert gw.server is not None
        gw.server.close()


def _request(port: int) -> bytes:
    return (b"POST /gw HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%b"
            % (port, MEDIA_CHUNKED_REQ.encode(), len(BODY), BODY))


async def test_every_piece_arrives_in_order(relay: MakeRelay, streaming: Any) -> None:
    pieces = [bytes([i]) * (1 + i * 37 % 500) for i in range(200)]
    gw = await streaming(pieces, gap=0.001)
    client = await relay(gateways={"gw": gw.url})
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_CHUNKED_REQ})
    assert resp.status == 200
    assert resp.headers["Incremental"] == "?1"
    assert await resp.read() == b"".join(pieces)


async def test_a_client_that_stops_reading_holds_the_gateway_back(relay: MakeRelay, streaming: Any) -> None:
    # 64 MiB offered as fast as the relay takes it; a client that reads nothing: the relay stops reading the
    # gateway once its own buffer for the client is full. What is bounded is the memory this process (relay, stand-in
    # gateway and client) holds meanwhile, not what the gateway got out: that is what the kernel's socket buffers
    # between them take, and they autotune up to net.ipv4.tcp_rmem/tcp_wmem's maxima (9 MiB sent with a 4 MiB
    # tcp_wmem max, 58 MiB with 128 MiB maxima). The peak held was 1.8-2.1 MiB either way; a relay that read on
    # regardless holds what the client leaves unread in its heap (53-64 MiB measured with HIGH_WATER at 256 MiB).
    gw = await streaming([bytes(65536)] * 1024)
    client = await relay(gateways={"gw": gw.url}, max_response_bytes=1 << 30)
    port = client.server.port
    with traced_peak() as held:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request(port))
        await writer.drain()
        await asyncio.sleep(1.5)
        peak = held()
    assert peak < 8 << 20, f"{peak} bytes held at the peak (the gateway got {gw.sent} out) for a client reading nothing"
    # and the stream resumes, whole, once the client reads
    total = 0
    async with asyncio.timeout(30):
        while data := await reader.read(1 << 20):
            total += len(data)
            if gw.sent == 64 << 20 and total >= 64 << 20:
                break
    assert gw.sent == 64 << 20
    writer.close()


async def test_a_client_that_leaves_closes_the_gateway_connection(relay: MakeRelay, streaming: Any) -> None:
    gw = await streaming([b"x" * 100] * 1000, gap=0.01)  # 10 s of stream
    client = await relay(gateways={"gw": gw.url})
    port = client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(port))
    await reader.readuntil(b"xxxx")  # the stream has started
    writer.close()
    async with asyncio.timeout(3):  # the next piece finds the client gone: the relay hangs up on the gateway
        await gw.closed_by_peer.wait()
    assert gw.sent < 100 * 1000


async def test_a_stream_past_the_limit_is_cut(relay: MakeRelay, streaming: Any) -> None:
    gw = await streaming([b"y" * 1000] * 20, gap=0.005)
    client = await relay(gateways={"gw": gw.url}, max_response_bytes=5500)
    port = client.server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_request(port))
    async with asyncio.timeout(5):
        got = await reader.read()  # until the relay closes the connection
    assert got.startswith(b"HTTP/1.1 200")
    body = got.split(b"\r\n\r\n", 1)[1]
    assert b"y" * 1000 in body
    assert not body.endswith(b"0\r\n\r\n")  # no final chunk: the client sees truncation, not a short success
    assert body.count(b"y") <= 5500
    async with asyncio.timeout(3):
        await gw.closed_by_peer.wait()


async def _production_relay(gateway_url: str) -> tuple[Any, int]:
    """The relay app served as ``veil relay`` serves it (``web.AppRunner``, as ``web.run_app``): aiohttp's test
    server cancels a handler whose client leaves, which would hide what the relay itself does then."""
    from aiohttp import web

    from proxy.relay import RelayConfig, create_app

    runner = web.AppRunner(create_app(RelayConfig(gateways={"gw": gateway_url})), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def _metrics(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    return text


async def test_a_client_that_leaves_mid_upload_is_counted_not_a_500(streaming: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    gw = await streaming([b"z"])
    runner, port = await _production_relay(gw.url)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /gw HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-chunked-req\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\n\x01abcd\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the relay is forwarding the body as it comes
        writer.transport.abort()  # and the client is gone
        await asyncio.sleep(0.3)
        assert 'veil_relay_requests_total{outcome="client_gone"} 1.0' in await _metrics(port)
        assert "Error handling request" not in caplog.text
    finally:
        await runner.cleanup()


async def test_no_client_address_is_kept_for_the_per_address_key(relay: MakeRelay, streaming: Any) -> None:
    from proxy.relay.state import STATE

    gw = await streaming([b"z"])
    client = await relay(gateways={"gw": gw.url})
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_CHUNKED_REQ})
    assert resp.status == 200
    await resp.read()
    limits = client.server.app[STATE].limits
    assert "127.0.0.1" not in repr(vars(limits))


@pytest.mark.parametrize("url", ["http://a..b/.well-known/ohttp-gateway", "http://h:1/a b",
                                 "http://h:1/\x7f"])
def test_a_gateway_url_the_relay_cannot_request_is_refused_at_start(url: str) -> None:
    from proxy.relay import RelayConfig

    with pytest.raises(ValueError, match="gateway URL"):
        RelayConfig(gateways={"gw": url})
