"""``ChunkedStream`` (proxy/transport.py): a chunked OHTTP response read through a :class:`hop.Pool`, pulled
(``async for``) or piped (decrypted in the socket's callback); both give the same content and the same errors, and
a response read to its end leaves its connection in the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import hop
import ohttp
from ohttp import ChunkedMessageDecoder
from proxy.transport import ChunkedStream, VeilClientError

from .test_open_stream import EVENTS, bytewise, stream, whole


async def serving(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> TestServer:
    """A started test server answering ``POST /`` with ``handler``."""
    app = web.Application()
    app.router.add_post("/", handler)
    server = TestServer(app)
    await server.start_server()
    return server


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

    return await serving(handler)


@asynccontextmanager
async def pool_on(server: TestServer, read_timeout: float | None = None) -> AsyncIterator[hop.Pool]:
    """A pool for requests to ``server``; both closed at the end."""
    pool = hop.Pool() if read_timeout is None else hop.Pool(read_timeout=read_timeout)
    try:
        yield pool
    finally:
        await pool.close()
        await server.close()


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
    async with pool_on(server) as pool:
        s = await opened(server, pool, creq)
        assert await READERS[read](s) == b"".join(EVENTS)
        assert sum(len(v) for v in pool._idle.values()) == 1  # back in the pool for the next request


@pytest.mark.parametrize("read", READERS)
async def test_missing_final_chunk_fails(read: str) -> None:
    creq, writes = stream()
    server = await serve(writes[:-1])
    async with pool_on(server) as pool:
        s = await opened(server, pool, creq)
        with pytest.raises(VeilClientError, match="stream failed: stream truncated"):
            await READERS[read](s)


@pytest.mark.parametrize("read", READERS)
async def test_tampered_chunk_fails(read: str) -> None:
    creq, writes = stream()
    bad = bytearray(writes[2])
    bad[-1] ^= 0x40
    gate = asyncio.Event()  # the bad chunk comes after the head has opened
    server = await serve([writes[0], writes[1], bytes(bad), *writes[3:]], gate=gate)
    async with pool_on(server) as pool:
        s = await opened(server, pool, creq)
        gate.set()
        with pytest.raises(VeilClientError, match="stream failed"):
            await READERS[read](s)
        assert not pool._idle.get(s.upstream._conn.origin)  # dropped, not reused


@pytest.mark.parametrize("read", READERS)
async def test_connection_cut_mid_stream_breaks_it(read: str) -> None:
    creq, writes = stream()
    server = await serve(writes[:2], cut=True)
    async with pool_on(server) as pool:
        s = await opened(server, pool, creq)
        with pytest.raises(VeilClientError, match="stream broke: BadResponse") as info:
            await READERS[read](s)
        assert info.value.status == 502


# -- the content ended before the HTTP body did (a gateway that ends the message in a non-final chunk) -------------


def early_end() -> tuple[ohttp.ChunkedClientRequest, bytes]:
    """A chunked response whose BHTTP end comes in a non-final chunk: its content is complete, and the HTTP body
    may still go on after it (a final chunk; here whatever the relay sends)."""
    creq, writes = stream(end_in_final=False)
    return creq, b"".join(writes)


async def serve_after(message: bytes, gate: asyncio.Event, then: str) -> TestServer:
    """Writes ``message``, waits for ``gate``, then: ``junk`` (1 MiB more of HTTP body, then its end), ``stall``
    (the HTTP body never ends) or ``cut`` (the connection closes)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_RESPONSE})
        out.enable_chunked_encoding()
        await out.prepare(request)
        await out.write(message)
        await gate.wait()
        if then == "junk":
            for _ in range(16):
                await out.write(b"\x5a" * 65536)
            await out.write_eof()
        elif then == "cut":
            assert request.transport is not None
            request.transport.close()
        else:
            await asyncio.Event().wait()  # until the server closes
        return out

    return await serving(handler)


async def test_bytes_after_the_content_are_taken_and_ignored_when_piped() -> None:
    """The whole message was pulled (as ``veil proxy`` pulls its first piece) before more than hop.PULL_HIGH bytes
    followed it: piping must still take them, or reading stays paused and the stream never finishes."""
    creq, message = early_end()
    gate = asyncio.Event()
    server = await serve_after(message, gate, "junk")
    async with pool_on(server) as pool:
        r = await pool.request(hop.Origin.of(str(server.make_url("/"))), "POST", "/", body=b"x")
        dec = ChunkedMessageDecoder(creq.response())
        got = b""
        while len(got) < len(message):  # all of it in the decoder, none of what follows
            got += await r.readany()
        dec.receive_data(got)
        s = ChunkedStream(r, dec)
        assert (await s.open()).status == 200
        gate.set()
        for _ in range(500):  # the bytes after the end pile up unread until reading pauses
            if r._held:
                break
            await asyncio.sleep(0.01)
        assert r._held
        assert await asyncio.wait_for(push(s), 10) == b"".join(EVENTS)
        assert sum(len(v) for v in pool._idle.values()) == 1  # the HTTP body ended well: the connection is kept


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("then", ["stall", "cut"])
async def test_a_connection_lost_after_the_content_is_no_failure(read: str, then: str) -> None:
    """The content has ended; the HTTP body then stalls (read timeout) or breaks: the stream has succeeded, and
    the connection is dropped, not reused."""
    creq, message = early_end()
    gate = asyncio.Event()
    gate.set()
    server = await serve_after(message, gate, then)
    async with pool_on(server, read_timeout=0.3) as pool:
        s = await opened(server, pool, creq)
        assert await asyncio.wait_for(READERS[read](s), 10) == b"".join(EVENTS)
        assert not pool._idle.get(s.upstream._conn.origin)
