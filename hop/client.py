"""A lean HTTP/1.1 client for the chain's own hops (relay -> gateway, proxy -> relay, gateway -> engine).

Why not aiohttp's client here: every streamed token crosses each hop once, and aiohttp hands each piece to a
waiting task (a future, a wake-up, a task step) before the caller can pass it on. Measured on the 2-core VM with 16
streams at 10 ms/token (``scripts/bench/bench_hop.py``), a pass-through hop costs about twice the CPU per chunk
that way. Here the response's body pieces can be *pushed*: :meth:`Response.pipe` calls a function from the
socket's ``data_received`` itself, so a relay forwards a chunk with no task switch at all. Pulling
(``async for piece in response``) stays available for callers that transform pieces in a coroutine.

Parsing is llhttp's (through ``httptools``; the same parser aiohttp and uvicorn use), strict: no leniency is
turned on. Limits: at most :data:`MAX_HEAD` bytes of status line and headers and :data:`MAX_HEADERS` headers; a
response must be final (a 1xx is refused). Connections are kept per origin and reused only after a complete
response the server agreed to keep alive, for at most ``idle_timeout`` seconds (shorter than the servers' own
keep-alive, so a reused connection is not closed under a new request).

Failures are :class:`HopError`: :class:`ConnectFailed` when nothing was sent (the caller may try elsewhere),
:class:`ReadTimeout` when the server stayed silent for ``read_timeout``, :class:`BadResponse` otherwise.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httptools

__all__ = ["BadResponse", "ConnectFailed", "HopError", "Origin", "Pool", "ReadTimeout", "Response", "check_target",
           "target_of"]

#: status line plus headers, in bytes
MAX_HEAD: Final = 64 * 1024
MAX_HEADERS: Final = 100
#: a request body's bytes waiting in the socket buffer before the writer waits for the server to read
_WRITE_HIGH: Final = 256 * 1024
#: a chunked body's reads longer than this are parsed in slices of it (see _Conn.data_received)
_FEED_SLICE: Final = 16 * 1024
#: pulled body bytes waiting unread before the socket is no longer read
PULL_HIGH: Final = 256 * 1024


_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET: Final = re.compile(r"/[\x21-\x7e]*")


def target_of(url: str) -> tuple[Origin, str]:
    """``url``'s origin and request target (path and query), both checked as :meth:`Pool.request` needs them
    (ValueError saying what is wrong): for checking a configured URL once, where it is read."""
    origin = Origin.of(url)
    parts = urlsplit(url)
    return origin, check_target((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))


def check_target(target: str) -> str:
    """``target`` if it can be a request target here (an origin-form path and query: no spaces or control
    characters), else ``ValueError``; for checking configured URLs when they are read, not on each request."""
    if not _TARGET.fullmatch(target):
        raise ValueError(f"not a request path without spaces or control characters: {target!r}")
    return target


class HopError(Exception):
    """A hop's request failed."""


class ConnectFailed(HopError):
    """The connection could not be made: nothing of the request was sent. ``timed_out``: the connection attempt
    ran out of time (rather than being refused)."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ReadTimeout(HopError):
    """The server sent nothing for ``read_timeout`` seconds."""


class BadResponse(HopError):
    """The server broke the connection, or answered something that is not a well-formed final HTTP/1.1 response."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: ``http://host:port`` or ``https://host:port``."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        origin = cls(parts.scheme, parts.hostname, port)
        try:
            origin.host_header  # noqa: B018 - a host IDNA cannot encode is refused here, once, not per request
        except UnicodeError:
            raise ValueError(f"not a valid host name: {parts.hostname!r}") from None
        return origin

    @functools.cached_property
    def host_header(self) -> bytes:  # cached: the idna codec is slow enough to show in a profile per request
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")


class Response:
    """One response: status and headers once :meth:`Pool.request` returns; the body pulled (``async for``,
    :meth:`read`) or pushed (:meth:`pipe`). Call :meth:`release` when done with it (or :meth:`close` to drop the
    connection); both are safe to call twice."""

    __slots__ = ("status", "headers", "content_length", "_conn", "_pending", "_waiter", "_sink", "_done",
                 "_error", "_finished", "_released", "_pending_bytes", "_held", "_batch")

    def __init__(self, conn: _Conn) -> None:
        self.status = 0
        #: lower-cased names, values as sent (latin-1); a repeated header keeps its last value
        self.headers: dict[str, str] = {}
        self.content_length: int | None = None
        self._conn = conn
        self._pending: list[bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None
        self._done = False  # the whole body has arrived
        self._error: HopError | None = None
        self._finished: asyncio.Future[None] | None = None
        self._released = False
        self._pending_bytes = 0
        self._held = False  # reading paused because pulled pieces wait unread
        self._batch: list[bytes] = []  # piped pieces of the current read

    # -- pulling ---------------------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        while piece := await self.readany():
            yield piece

    async def readany(self) -> bytes:
        """What has arrived of the body (waiting for something if nothing has); ``b""`` at its end."""
        while True:
            if self._pending:
                return self._take_pending()
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    @property
    def done(self) -> bool:
        """The whole body has arrived (some of it may still wait to be read)."""
        return self._done

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; past ``limit`` bytes the connection is dropped and :class:`BadResponse` raised."""
        parts: list[bytes] = []
        total = 0
        async for piece in self:
            total += len(piece)
            if limit is not None and total > limit:
                self.close()
                raise BadResponse(f"response body larger than {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    # -- pushing ---------------------------------------------------------------------------------------------

    def pipe(self, sink: Callable[[bytes], None]) -> None:
        """From now on every body piece is given to ``sink`` as it arrives, from the socket's callback (so ``sink``
        must not block; it may call :meth:`abort`, :meth:`pause_reading`). Pieces that arrived before are given to
        it at once. Then ``await`` :meth:`finished`."""
        self._sink = sink
        # a read held for a puller that is gone is released first: the sink decides from now on (it may pause again)
        if pending := self._take_pending():
            sink(pending)

    def _take_pending(self) -> bytes:
        """What waits unread, in one piece (the socket is read again if it was held for it)."""
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        if self._held:
            self._held = False
            self.resume_reading()
        return pending[0] if len(pending) == 1 else b"".join(pending)

    async def finished(self) -> None:
        """Wait for the end of a piped body; raises the :class:`HopError` that cut it short."""
        if self._error is None and not self._done:
            self._finished = self._conn.loop.create_future()
            try:
                await self._finished
            finally:
                self._finished = None
        if self._error is not None:
            raise self._error

    def abort(self, error: HopError) -> None:
        """Stop the body here: the connection is closed and :meth:`finished` (or the iteration) raises ``error``."""
        if not self._done and self._error is None:
            self._fail(error)
        self.close()

    def pause_reading(self) -> None:
        if self._conn.response is self:  # not once the connection has gone back to the pool
            self._conn.transport_pause(True)

    def resume_reading(self) -> None:
        if self._conn.response is self:
            self._conn.transport_pause(False)

    # -- the end ---------------------------------------------------------------------------------------------

    def release(self) -> None:
        """Done with this response: its connection goes back to the pool if the body was read to its end and the
        server keeps it alive, else it is closed."""
        if self._released:
            return
        self._released = True
        self._conn.response_released(self._done and self._error is None)

    def close(self) -> None:
        """Done with this response; its connection is closed (unless it has already gone back to the pool with
        this response read to its end)."""
        if self._released:
            if self._conn.response is self:
                self._conn.close()
            return
        self._released = True
        self._conn.response_released(False)

    # -- from the connection ---------------------------------------------------------------------------------

    def _body(self, piece: bytes) -> None:
        if self._error is not None:  # aborted (by the sink, on a piece before this one in the same read)
            return
        if self._sink is not None:
            # the pieces of one socket read reach the sink together (see _Conn.data_received): one write onward for
            # what arrived together, as a puller gets it
            self._batch.append(piece)
            return
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        if self._pending_bytes > PULL_HIGH and not self._held:
            # pulled more slowly than it arrives: stop reading the socket until the reader catches up
            self._held = True
            self._conn.transport_pause(True)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _flush(self) -> None:
        """Hand the sink what this read brought."""
        batch = self._batch
        if batch:
            self._batch = []
            if self._error is None and self._sink is not None:
                self._sink(batch[0] if len(batch) == 1 else b"".join(batch))

    def _end(self) -> None:
        self._flush()
        self._done = True
        self._wake()

    def _fail(self, error: HopError) -> None:
        if self._error is None and not self._done:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        for fut in (self._waiter, self._finished):
            if fut is not None and not fut.done():
                fut.set_result(None)


class _Conn(asyncio.Protocol):
    """One connection to an origin; carries one request and its response at a time."""

    def __init__(self, pool: Pool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.origin = origin
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.response: Response | None = None
        self._head: asyncio.Future[None] | None = None
        self._head_bytes = 0
        self._unbodied = 0  # bytes received since the last body piece (head, chunk framing, trailers)
        self._headers = 0
        self._keep_alive = False
        self._sending = False  # a streamed request body is still going out
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self.last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert hasattr(transport, "write")  # uvloop's transports do not subclass asyncio.Transport
        transport.set_write_buffer_limits(high=_WRITE_HIGH)  # type: ignore[attr-defined]
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self.parser is None:  # bytes while no request is out: the server is not speaking HTTP to us
            self.close()
            return
        resp = self.response
        if len(data) > _FEED_SLICE and resp is not None and resp.content_length is None:
            # A chunked body (or a head not parsed yet, which may start one): trailers may follow its last piece in
            # this same read, and on_body zeroes the count of bytes since a body piece after the whole read was
            # counted. Fed in slices, at most one slice after the last piece goes uncounted, so trailers that never
            # end are refused near MAX_HEAD, not once more bytes come (they may never come).
            view = memoryview(data)
            for i in range(0, len(data), _FEED_SLICE):
                if self.parser is None:  # the response ended and its connection went back to the pool: as above
                    self.close()
                    return
                if not self._feed(self.parser, view[i:i + _FEED_SLICE], resp):
                    return
        elif not self._feed(self.parser, data, resp):
            return
        if resp is not None:
            resp._flush()

    def _feed(self, parser: httptools.HttpResponseParser, data: bytes | memoryview, resp: Response | None) -> bool:
        """Parse ``data``; False once the response has failed (what arrived before went to the sink first)."""
        # llhttp hands a header (or a trailer field) over only once it has ended, and httptools keeps what came of it
        # so far: bytes that are not body are counted here, and past MAX_HEAD since the last body piece (a head, or
        # trailers, that never end) the response is refused, after what arrived so far
        self._unbodied += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._error(BadResponse("the server switched protocols"))
            return False
        except httptools.HttpParserError as exc:
            if resp is not None:
                resp._flush()  # what was well-formed before the error still reaches the sink, as it would by chunk
            if resp is not None and resp._error is not None:
                return False  # a callback's own failure (limits below), already recorded
            self._error(BadResponse(f"malformed HTTP response ({exc})"))
            return False
        if self._unbodied > MAX_HEAD and self.parser is not None and (resp is None or not resp._done):
            if resp is not None:
                resp._flush()
            self._error(BadResponse(f"response head or trailers larger than {MAX_HEAD} bytes"))
            return False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self.pool.forget(self)
        self._error(BadResponse("the server closed the connection before the response ended"))
        self._wake_writer()

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # llhttp callbacks

    def on_message_begin(self) -> None:
        resp = self.response
        if resp is not None and resp._done:
            # bytes after the response (a second response to one request, or garbage): they must not reach this
            # response, and the connection is out of step with its requests
            self.close()
            raise BadResponse("bytes after the end of the response")

    def on_status(self, status: bytes) -> None:
        self._count(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        resp = self.response
        assert resp is not None
        self._count(len(name) + len(value) + 4)
        self._headers += 1
        if self._headers > MAX_HEADERS:  # every header line, repeated names too
            self._refuse(BadResponse(f"more than {MAX_HEADERS} response headers"))
        if resp.status:
            return  # a chunked body's trailer: counted, never taken for a header
        resp.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        resp = self.response
        parser = self.parser
        assert resp is not None and parser is not None
        resp.status = parser.get_status_code()
        if resp.status < 200:
            self._refuse(BadResponse(f"interim response {resp.status} where a final one was expected"))
        if "transfer-encoding" not in resp.headers and (cl := resp.headers.get("content-length")) is not None:
            resp.content_length = int(cl)  # llhttp has checked it is a number (and not repeated differently)
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self._unbodied = 0
        self.response._body(body)

    def on_message_complete(self) -> None:
        resp = self.response
        assert resp is not None and self.parser is not None
        # asked now: once this callback returns, llhttp has reset the message's flags and would answer for none
        self._keep_alive = self.parser.should_keep_alive() and not self._sending
        self._cancel_timer()
        self._wake_writer()  # a request body still going out stops (exchange sees the answer)
        resp._end()
        if not resp._released:
            return
        self._recycle()

    # helpers

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD:
            self._refuse(BadResponse(f"response head larger than {MAX_HEAD} bytes"))

    def _refuse(self, error: HopError) -> None:
        """From a parser callback: record ``error`` and stop parsing (llhttp turns the raise into a parse error)."""
        self._error(error)
        raise error

    def _error(self, error: HopError) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        if self.response is not None:
            self.response._fail(error)
        if not self.closed and self.transport is not None and (self.response is None or not self.response._done):
            self.close()

    def transport_pause(self, pause: bool) -> None:
        if self.transport is None or self.closed or pause == self._reading_paused:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.last_data = self.loop.time()  # a paused read is the client's wait, not the server's silence
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            if self.transport.get_write_buffer_size():
                self.transport.abort()  # close() would wait for a server that may never read them
            else:
                self.transport.close()
        self._wake_writer()  # a request body waiting to be written sees the close
        self.closed = True
        self._cancel_timer()
        self.pool.forget(self)

    def response_released(self, complete: bool) -> None:
        if not complete:
            self.close()
        elif self.parser is not None and self.response is not None and self.response._done:
            self._recycle()

    def _recycle(self) -> None:
        parser = self.parser
        if self.closed or parser is None or not self._keep_alive:
            self.close()
            return
        self.transport_pause(False)  # a pause of the response's (its sink paused on the last piece) ends with it
        self.parser = None
        self.response = None
        self.pool.put_back(self)

    # the read timeout: one timer per period, not one per piece

    def _arm_timer(self) -> None:
        timeout = self.pool.read_timeout
        if timeout is not None:
            self.last_data = self.loop.time()
            self._timer = self.loop.call_later(timeout, self._check_silence)

    def _check_silence(self) -> None:
        timeout = self.pool.read_timeout
        assert timeout is not None
        if self._reading_paused:
            self._timer = self.loop.call_later(timeout, self._check_silence)
            return
        left = self.last_data + timeout - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._check_silence)
            return
        self._timer = None
        self._error(ReadTimeout(f"the server sent nothing for {timeout:g} s"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # one exchange

    async def exchange(self, head: bytes, body: bytes | AsyncIterable[bytes] | None) -> Response:
        transport = self.transport
        assert transport is not None
        resp = self.response = Response(self)
        self.parser = httptools.HttpResponseParser(self)
        self._head_bytes = self._unbodied = self._headers = 0
        self._sending = False
        self._keep_alive = False
        self._head = self.loop.create_future()
        self._arm_timer()
        try:
            if body is None or isinstance(body, bytes):
                transport.write(head + body if body else head)
            else:
                transport.write(head)
                self._sending = True
                async for piece in body:
                    if self.closed or resp._done:  # answered before the body ended: the rest is not wanted
                        self._keep_alive = False  # and the server may still be reading it: not reusable
                        break
                    if piece:
                        transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                        # while the request is still going out, the server's silence is expected: only the time
                        # since the last piece counts
                        self.last_data = self.loop.time()
                        if self._writable is not None:
                            await self._writable
                if not self.closed and not resp._done:
                    transport.write(b"0\r\n\r\n")
                self._sending = False
            await self._head
        except BaseException:
            # the body's source failed (the caller's client was too slow, ...) or the answer did: the connection is
            # in an unknown state and is not reused
            self.close()
            head_future = self._head
            if head_future is not None and head_future.done() and not head_future.cancelled():
                head_future.exception()  # retrieved: the caller gets the body's own exception
            raise
        finally:
            self._head = None
        return resp


class Pool:
    """Connections to any number of origins, kept alive between requests."""

    def __init__(self, *, connect_timeout: float | None = None, read_timeout: float | None = None,
                 ssl_context: ssl.SSLContext | None = None, idle_timeout: float = 15.0, max_idle: int = 256) -> None:
        # 0 or less means no limit, as it did for aiohttp's client timeouts these replace
        self.connect_timeout = connect_timeout if connect_timeout is not None and connect_timeout > 0 else None
        self.read_timeout = read_timeout if read_timeout is not None and read_timeout > 0 else None
        self.ssl_context = ssl_context
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self._idle: dict[Origin, list[_Conn]] = {}
        self._all: set[_Conn] = set()

    async def request(self, origin: Origin, method: str, target: str,
                      headers: Iterable[tuple[str, str]] = (),
                      body: bytes | AsyncIterable[bytes] | None = None) -> Response:
        """Send one request and return its response once the status and headers have arrived. ``headers`` must not
        carry ``Host``, ``Content-Length`` or ``Transfer-Encoding``: those come from ``origin`` and ``body``."""
        if not _TOKEN.fullmatch(method) or method == "HEAD":  # a HEAD answer's body framing would be misread
            raise ValueError(f"unsupported method {method!r}")
        check_target(target)
        lines = [b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode("ascii"), target.encode("ascii"),
                                                      origin.host_header)]
        for name, value in headers:
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError("header with a line break")
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if isinstance(body, bytes):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        elif body is not None:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: 0\r\n")
        lines.append(b"\r\n")
        conn = await self._connection(origin)
        return await conn.exchange(b"".join(lines), body)

    async def _connection(self, origin: Origin) -> _Conn:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        use_ssl = self.ssl_context if origin.scheme == "https" else None
        if origin.scheme == "https" and use_ssl is None:
            use_ssl = self.ssl_context = ssl.create_default_context()  # once: it loads the CA store
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Conn(self, origin, loop), origin.host, origin.port,
                                                       ssl=use_ssl)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or exc.__class__.__name__)
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: {why}",
                                timed_out=isinstance(exc, TimeoutError)) from None
        self._all.add(conn)
        return conn

    def put_back(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def forget(self, conn: _Conn) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        """Close every connection (responses still being read end with :class:`BadResponse`)."""
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)
