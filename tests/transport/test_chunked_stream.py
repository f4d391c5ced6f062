"""``ChunkedStream`` (proxy/transport.py): a chunked OHTTP response read through a :class:`hop.Pool`, pulled
(``async for``) or piped (decrypted in the socket's callback); both give the same content and the same errors, and
a response read to its end leaves its connection in the pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import hop
import ohttp
from ohttp import ChunkedMessageDecoder
from proxy.transport import ChunkedStream, VeilClientError

from .test_open_stream import EVENTS, bytewise, stream, whole


async def serve(writes: list[bytes], *, cut: bool = False, gate: asyncio.Event | None = None) -> TestServer:
    """Answers with ``writes``; with ``gate``, all but the first only once it is set."""

    async def handler(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_RESPONSE})
        out.enable_chunked_encoding()
        await out.prepare(request)
        for i, piece in enumerate(writes):
            if i == 1 and gate is not None:
                await gate.wait()
            await out.write(piece)
        if cut:
            assert request.transport is not None
            request.transport.close()
            return out
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_post("/", handler)
    server = TestServer(app)
    await server.start_server()
    return server


async def opened(server: TestServer, pool: hop.Pool, creq: ohttp.ChunkedClientRequest) -> ChunkedStream:
    r = await pool.request(hop.Origin.of(str(server.make_url("/"))), "POST", "/", body=b"x")
    s = ChunkedStream(r, ChunkedMessageDecoder(creq.response()))
    head = await s.open()
    assert head.status == 200
    return s


async def pull(s: ChunkedStream) -> bytes:
    return b"".join([p async for p in s])


async def push(s: ChunkedStream) -> bytes:
    out: list[bytes] = []
    s.pipe(out.append)
    await s.finished()
    return b"".join(out)


READERS = {"pull": pull, "push": push}


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("split", [whole, bytewise])
async def test_content_and_the_connection_is_kept(read: str, split: Callable[[bytes], list[bytes]]) -> None:
    creq, writes = stream()
    server = await serve(split(b"".join(writes)))
    pool = hop.Pool()
    try:
        s = await opened(server, pool, creq)
        assert await READERS[read](s) == b"".join(EVENTS)
        assert sum(len(v) for v in pool._idle.values()) == 1  # back in the pool for the next request
    finally:
        await pool.close()
        await server.close()


@pytest.mark.parametrize("read", READERS)
async def test_missing_final_chunk_fails(read: str) -> None:
    creq, writes = stream()
    server = await serve(writes[:-1])
    pool = hop.Pool()
    try:
        s = await opened(server, pool, creq)
        with pytest.raises(VeilClientError, match="stream failed: stream truncated"):
            await READERS[read](s)
    finally:
        await pool.close()
        await server.close()


@pytest.mark.parametrize("read", READERS)
async def test_tampered_chunk_fails(read: str) -> None:
    creq, writes = stream()
    bad = bytearray(writes[2])
    bad[-1] ^= 0x40
    gate = asyncio.Event()  # the bad chunk comes after the head has opened
    server = await serve([writes[0], writes[1], bytes(bad), *writes[3:]], gate=gate)
    pool = hop.Pool()
    try:
        s = await opened(server, pool, creq)
        gate.set()
        with pytest.raises(VeilClientError, match="stream failed"):
            await READERS[read](s)
        assert not pool._idle.get(s.upstream._conn.origin)  # dropped, not reused
    finally:
        await pool.close()
        await server.close()


@pytest.mark.parametrize("read", READERS)
async def test_connection_cut_mid_stream_breaks_it(read: str) -> None:
    creq, writes = stream()
    server = await serve(writes[:2], cut=True)
    pool = hop.Pool()
    try:
        s = await opened(server, pool, creq)
        with pytest.raises(VeilClientError, match="stream broke: BadResponse") as info:
            await READERS[read](s)
        assert info.value.status == 502
    finally:
        await pool.close()
        await server.close()
