"""Writing a piped response onto a server's client connection, with the client's unread bytes bounded.

A hop that pipes (:meth:`hop.Response.pipe`) writes each piece from the upstream socket's callback straight onto
its own client's transport (an aiohttp request's ``request.transport``, once the response's head has gone out
through aiohttp's writer). :class:`Downstream` does that write the way aiohttp's writer would frame it, stops
reading upstream while more than :data:`HIGH_WATER` bytes wait unread by the client (and reads again below
:data:`LOW_WATER`), and ends the upstream response with :class:`ClientGone` once the client's connection closes.
"""

from __future__ import annotations

import asyncio
from typing import Final

from .client import HopError, Response

__all__ = ["ClientGone", "Downstream", "HIGH_WATER", "LOW_WATER"]

HIGH_WATER: Final = 256 * 1024
LOW_WATER: Final = 64 * 1024
#: how often a paused pipe looks at the client's buffer again (only while paused)
_RECHECK: Final = 0.005


class ClientGone(HopError):
    """The client's connection closed while a response was being piped to it."""


class Downstream:
    """The client side of a pipe: ``write`` frames a piece (HTTP/1.1 chunked or raw) and sends it."""

    __slots__ = ("upstream", "transport", "chunked", "_loop")

    def __init__(self, upstream: Response, transport: asyncio.Transport, *, chunked: bool) -> None:
        self.upstream = upstream
        self.transport = transport
        self.chunked = chunked
        self._loop = asyncio.get_running_loop()

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
        if transport.get_write_buffer_size() > HIGH_WATER:
            self.upstream.pause_reading()
            self._loop.call_later(_RECHECK, self._drained)

    def _drained(self) -> None:
        if self.closing():
            return
        if self.transport.get_write_buffer_size() <= LOW_WATER:
            self.upstream.resume_reading()
        else:
            self._loop.call_later(_RECHECK, self._drained)
