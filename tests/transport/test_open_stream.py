"""The client's stream opening (proxy/transport.py ``_open_stream``), in-process: ciphertext pieces in, an
``InnerResponse`` out whose head has arrived and whose content pieces follow; every failure is a
``VeilClientError`` in the layer it belongs to, and the response is closed once, whatever happens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import ohttp
from ohttp import ChunkedClientRequest, ChunkedGatewayRequest, ChunkedMessageDecoder, GatewayKey, KeyRing, bhttp
from proxy.transport import InnerResponse, VeilClientError, _open_pieces, _open_stream

KEY = GatewayKey.derive(3, b"\x11" * 32)
RING = KeyRing([KEY])
EVENTS = [b"data: {\"n\": 1}\n\n", b"data: {\"n\": 2}\n\n", b"data: [DONE]\n\n"]


def stream(*, end_in_final: bool = True) -> tuple[ChunkedClientRequest, list[bytes]]:
    """A client request and the gateway's chunked response to it, one network write per chunk; ``end_in_final=False``:
    the BHTTP end comes in a non-final chunk (the content is complete, the chunked message is not ended)."""
    creq = ChunkedClientRequest(KEY.config)
    greq = ChunkedGatewayRequest(RING)
    greq.receive_data(creq.encode_chunk(bhttp.encode_request(bhttp.Request(method=b"POST")), final=True))
    greq.receive_data(b"")
    while greq.next_event() is not ohttp.NEED_DATA:
        pass
    enc = greq.response()
    writes = [enc.encode_chunk(bhttp.encode_response_head(200, [("content-type", "text/event-stream")]))]
    writes += [enc.encode_chunk(bhttp.encode_chunk(e)) for e in EVENTS]
    writes.append(enc.encode_chunk(bhttp.encode_end(), final=end_in_final))
    return creq, writes


async def body_of(pieces: list[bytes], fail: BaseException | None = None) -> AsyncIterator[bytes]:
    for p in pieces:
        yield p
    if fail is not None:
        raise fail


class Closer:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def read_all(resp: InnerResponse) -> bytes:
    assert resp.pieces is not None
    return b"".join([p async for p in resp.pieces])


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def odd_splits(data: bytes) -> list[bytes]:
    out, i, step = [], 0, 1
    while i < len(data):
        out.append(data[i : i + step])
        i += step
        step = step * 3 % 31 + 1
    return out


async def open_with(pieces: list[bytes], creq: ChunkedClientRequest, close: Callable[[], None],
                    fail: BaseException | None = None) -> InnerResponse:
    return await _open_pieces(body_of(pieces, fail), close, ChunkedMessageDecoder(creq.response()))


@pytest.mark.parametrize("split", [whole, bytewise, odd_splits])
async def test_stream_opens_and_reads(split: Callable[[bytes], list[bytes]]) -> None:
    creq, writes = stream()
    close = Closer()
    resp = await open_with(split(b"".join(writes)), creq, close)
    assert resp.status == 200 and resp.header(b"content-type") == b"text/event-stream"
    assert close.calls == 0  # the content is still to be read
    assert await read_all(resp) == b"".join(EVENTS)
    assert close.calls == 1


async def test_head_returns_before_the_content_arrives() -> None:
    creq, writes = stream()
    sent: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for w in writes:
            sent.append(w)
            yield w

    resp = await _open_pieces(body(), Closer(), ChunkedMessageDecoder(creq.response()))
    assert len(sent) == 1 and resp.status == 200
    assert resp.pieces is not None
    assert await resp.pieces.__anext__() == EVENTS[0]
    assert len(sent) == 2


async def test_truncated_stream_fails_in_the_content() -> None:
    creq, writes = stream()
    close = Closer()
    resp = await open_with(writes[:-1], creq, close)
    with pytest.raises(VeilClientError, match="stream failed: stream truncated"):
        await read_all(resp)
    assert close.calls == 1


async def test_stream_without_a_head_does_not_open() -> None:
    creq, writes = stream()
    close = Closer()
    with pytest.raises(VeilClientError, match="did not open"):
        await open_with([writes[0][:-3]], creq, close)
    assert close.calls == 1


async def test_tampered_chunk_fails() -> None:
    creq, writes = stream()
    bad = bytearray(writes[2])
    bad[-1] ^= 0x40
    close = Closer()
    resp = await open_with([writes[0], writes[1], bytes(bad), *writes[3:]], creq, close)
    with pytest.raises(VeilClientError, match="stream failed"):
        await read_all(resp)
    assert close.calls == 1


async def test_network_failure_mid_stream() -> None:
    creq, writes = stream()
    close = Closer()
    resp = await open_with(writes[:2], creq, close, fail=aiohttp.ClientPayloadError("cut"))
    with pytest.raises(VeilClientError, match="stream broke: ClientPayloadError") as info:
        await read_all(resp)
    assert info.value.status == 502 and close.calls == 1


async def test_network_failure_before_the_head_closes() -> None:
    creq, _ = stream()
    close = Closer()
    with pytest.raises(VeilClientError, match="stream broke"):
        await open_with([], creq, close, fail=aiohttp.ServerDisconnectedError())
    assert close.calls == 1


@pytest.mark.parametrize("split", [whole, bytewise])
async def test_open_stream_over_loopback(split: Callable[[bytes], list[bytes]]) -> None:
    # The real aiohttp response object, from an in-process server that writes the chunked response in pieces.
    creq, writes = stream()

    async def handler(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_RESPONSE})
        await out.prepare(request)
        for piece in split(b"".join(writes)):
            await out.write(piece)
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/", handler)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        r = await session.post(server.make_url("/"), data=b"")
        resp = await _open_stream(r, creq.response())
        assert resp.status == 200
        assert await read_all(resp) == b"".join(EVENTS)
        assert r.closed
