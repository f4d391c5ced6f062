"""Writing a piped response onto a server's client connection, with the client's unread bytes bounded.

A hop that pipes (:meth:`hop.Response.pipe`) writes each piece from the upstream socket's callback straight onto
its own client's transport (an aiohttp request's ``request.transport``, once the response's head has gone out
through aiohttp's writer). :class:`Downstream` does that write the way aiohttp's writer would frame it, stops
reading upstream while more than :data:`HIGH_WATER` bytes wait unread by the client (and reads again below
:data:`LOW_WATER`), and ends the upstream response with :class:`ClientGone` once the client's connection closes.
The three aiohttp servers that pipe (relay, gateway, ``veil proxy``) share :class:`HeadWithBody`,
:func:`client_transport` and :func:`cut` from here.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from .client import HopError, Response

__all__ = ["ClientGone", "Downstream", "HIGH_WATER", "LOW_WATER", "HeadWithBody", "client_transport", "cut"]

HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
#: how soon a paused pipe first looks at the client's buffer again, and the longest wait between looks (each wait
#: doubles while the client reads nothing): one check chain per pipe, however many pieces arrive meanwhile
_RECHECK: Final = 0.005
_RECHECK_MAX: Final = 0.2


class ClientGone(HopError):
    """The client's connection closed while a response was being piped to it."""


class Downstream:
    """The client side of a pipe: ``write`` frames a piece (HTTP/1.1 chunked or raw) and sends it."""

    __slots__ = ("upstream", "transport", "chunked", "stall_timeout", "_loop", "_paused", "_since", "_left")

    def __init__(self, upstream: Response, transport: asyncio.Transport, *, chunked: bool,
                 stall_timeout: float | None = None) -> None:
        self.upstream = upstream
        self.transport = transport
        self.chunked = chunked
        #: a client that takes none of its unread bytes for this long is dropped (and the upstream response ended):
        #: else a peer that stops reading would hold the stream, and what feeds it, for good
        self.stall_timeout = stall_timeout if stall_timeout is not None and stall_timeout > 0 else None
        self._loop = asyncio.get_running_loop()
        self._paused = False
        self._since = 0.0  # when the client last took some of its unread bytes (while paused)
        self._left = 0  # its unread bytes then

    def closing(self) -> bool:
        """True (and the upstream response aborted) once the client has gone."""
        if self.transport.is_closing():
            self.upstream.abort(ClientGone("the client closed its connection"))
            return True
        return False

    def write(self, data: bytes) -> None:
        """Send ``data`` (nothing if empty or if the client has gone)."""
        transport = self.transport
        if not data or self.closing():
            return
        # the same bytes aiohttp's own writer sends for one write of a chunked response
        transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        if not self._paused and (left := transport.get_write_buffer_size()) > HIGH_WATER:
            self._paused = True
            self._since, self._left = self._loop.time(), left
            self.upstream.pause_reading()
            self._loop.call_later(_RECHECK, self._drained, _RECHECK)

    def _drained(self, waited: float) -> None:
        if self.closing():
            self._paused = False
            return
        left = self.transport.get_write_buffer_size()
        if left <= LOW_WATER:
            self._paused = False
            self.upstream.resume_reading()
        else:
            now = self._loop.time()
            if left < self._left:  # it reads, slowly: not stalled
                self._since, self._left = now, left
            elif self.stall_timeout is not None and now - self._since >= self.stall_timeout:
                self._paused = False
                self.upstream.abort(ClientGone(f"the client read nothing for {self.stall_timeout:g} s"))
                self.transport.abort()
                return
            wait = min(waited * 2, _RECHECK_MAX)
            self._loop.call_later(wait, self._drained, wait)


class HeadWithBody(web.StreamResponse):
    """A streamed response whose status line and headers leave with its first body bytes, in one send instead of
    two (as aiohttp's own ``web.Response`` does): the next hop can do nothing with the headers alone, and the first
    piece is usually there with the head."""

    _send_headers_immediately = False


def client_transport(request: web.BaseRequest) -> asyncio.Transport:
    """The request's connection, for a :class:`Downstream` to write on; ``ConnectionResetError`` if it has gone."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client closed its connection")
    return transport


def cut(request: web.BaseRequest, resp: web.StreamResponse) -> web.StreamResponse:
    """End a response that has started but cannot be completed: the connection is closed (after the bytes already
    written), so the client sees the body end short of its Content-Length or without its final HTTP chunk, never a
    silent success, and never waits on a kept-alive connection for bytes that will not come."""
    resp.force_close()
    if request.transport is not None:
        request.transport.close()
    return resp
