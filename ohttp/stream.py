"""The BHTTP message inside a chunked OHTTP message, as events: ciphertext in, BHTTP events out, sans-I/O.

One object for both directions: a :class:`~ohttp.ChunkedClientResponse` gives the events of a response (the
client), a :class:`~ohttp.ChunkedGatewayRequest` those of a request (the gateway). It owns nothing but the wiring
between the chunk decoder and :class:`~ohttp.BHTTPDecoder`: chunks are opened only when the BHTTP decoder needs
more bytes, and then every chunk that has arrived, so an error in any chunk received so far surfaces before more
events are handed out.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .bhttp import NEED_DATA, BHTTPDecoder, Data, EndOfMessage, Limits
from .bhttp._messages import Event, _NeedData
from .chunked import Chunk, ChunkedClientResponse, ChunkedGatewayRequest
from .errors import OHTTPError

__all__ = ["ChunkedMessageDecoder"]

C = TypeVar("C", ChunkedClientResponse, ChunkedGatewayRequest)


class ChunkedMessageDecoder(Generic[C]):
    """Incremental decoder of the message inside a chunked OHTTP stream (h11 style).

    ``receive_data(data)`` takes ciphertext as it arrives (``b""`` ends input); ``next_event()`` returns the next
    BHTTP event (:class:`RequestHead` or :class:`ResponseHead`, :class:`InformationalResponse`, :class:`Data`,
    :class:`Trailers`, :class:`EndOfMessage`) or :data:`NEED_DATA`. ``chunks`` is the chunk decoder it wraps
    (at the gateway: ``header_ready``, ``enc``, ``response()``).

    With ``bhttp=False`` the message is not parsed: each chunk's plaintext comes out as :class:`Data` and the final
    chunk as :class:`EndOfMessage`, for a caller that decodes the whole inner message itself.

    Raises (from ``next_event``), and once raised, raises on every later call:
        KeyIdError, UnsupportedError, DecryptError, ChunkError, DecodeError, LimitError: from the chunk decoder
            (see :class:`ChunkedClientResponse`, :class:`ChunkedGatewayRequest`).
        DecodeError, UnsupportedError, LimitError: the BHTTP message is invalid (see :class:`BHTTPDecoder`).
    """

    def __init__(self, chunks: C, *, limits: Limits | None = None, bhttp: bool = True) -> None:
        self.chunks: C = chunks
        expect = "response" if isinstance(chunks, ChunkedClientResponse) else "request"
        self._bhttp = BHTTPDecoder(limits, expect=expect) if bhttp else None
        self._raw: list[Event] = []
        self._failed: type[OHTTPError] | None = None

    def receive_data(self, data: bytes) -> None:
        """Feed ciphertext; ``b""`` marks the end of input."""
        if self._failed is not None:
            raise self._failed("decoder already failed")
        try:
            self.chunks.receive_data(data)
        except OHTTPError as exc:
            self._failed = type(exc)
            raise

    def next_event(self) -> Event | _NeedData:
        """The next event of the inner message, or :data:`NEED_DATA`."""
        if self._failed is not None:
            raise self._failed("decoder already failed")
        try:
            while True:
                ev = self._next_inner()
                if ev is not NEED_DATA or not self._open_chunks():
                    return ev
        except OHTTPError as exc:
            self._failed = type(exc)
            raise

    def _next_inner(self) -> Event | _NeedData:
        if self._bhttp is not None:
            return self._bhttp.next_event()
        return self._raw.pop(0) if self._raw else NEED_DATA

    def _open_chunks(self) -> bool:
        """Open every chunk that has arrived and pass its plaintext on; ``False`` if there was none."""
        opened = False
        while (chunk := self.chunks.next_event()) is not NEED_DATA:
            assert isinstance(chunk, Chunk)
            opened = True
            if self._bhttp is not None:
                if chunk.data:
                    self._bhttp.receive_data(chunk.data)
                if chunk.final:
                    self._bhttp.receive_data(b"")
            else:
                if chunk.data:
                    self._raw.append(Data(chunk.data))
                if chunk.final:
                    self._raw.append(EndOfMessage())
        return opened


