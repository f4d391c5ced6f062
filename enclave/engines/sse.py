"""An engine's server-sent events, split into whole events as its bytes arrive, pulled or pushed.

Why two ways: the gateway passes every token through here. Pulled (``async for``), each read wakes a task before
the event can be sealed; pushed (:meth:`SseStream.pipe`), the events are handed to a function from the engine
socket's own callback (see :mod:`hop.client`), which seals and writes them to the relay with no task switch per
token. Both give the complete events that have arrived, joined: pushed, those of one socket read; pulled, those of
the reads since the last pull (one read, unless the puller fell behind). They are available already, so joining
delays none of them, and the gateway seals and sends one chunk instead of one per event. The pieces carry no
framing of their own: the splitter takes its input cut anywhere (an HTTP chunk, a read, a byte).

An engine that breaks off, stays silent past the pool's read timeout, or sends more than :data:`MAX_EVENT` bytes
without ending an event, is :class:`EngineUnavailable`; a stream given up before its end closes the engine's
connection, which makes vLLM abort the generation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import hop

from .base import EngineUnavailable

__all__ = ["MAX_EVENT", "EventTooLarge", "SseSplitter", "SseStream"]

_BLANK: Final = b"\n\n"
#: The most bytes of an unfinished event (since the last blank line) kept while waiting for its end. Without a bound,
#: an engine that never sends a blank line would grow the gateway's memory for as long as it streams. Generous, as a
#: real event can be large: a chat token's is a few hundred bytes, but ``/v1/completions`` with ``echo`` and
#: ``logprobs`` sends the whole prompt with its tokens' logprobs in the first event (some 70 bytes a token, so several
#: MiB for a long prompt). 16 MiB takes that for prompts of about 200k tokens, and bounds a broken engine's streams
#: at a few GiB even with hundreds of them at once (each is cut off as soon as it passes the bound).
MAX_EVENT: Final = 16 * 1024 * 1024


class EventTooLarge(EngineUnavailable):
    """The engine sent more than :data:`MAX_EVENT` bytes without ending an event."""


class SseSplitter:
    """Sans-I/O: :meth:`feed` takes bytes as they arrive and returns the complete events among them (``b""`` if
    none), each ending in a blank line, blank events dropped, CRLF framing turned into LF; :meth:`end` returns
    what is left at the end of the body (an unterminated last event, terminated). An unfinished event past
    :data:`MAX_EVENT` bytes is :class:`EventTooLarge` (from :meth:`feed`; the splitter is then empty)."""

    __slots__ = ("_parts", "_size")

    def __init__(self) -> None:
        # the unfinished event's pieces, joined only once its end arrives (a large event costs no copy per read)
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, piece: bytes) -> bytes:
        if not self._size and piece.endswith(_BLANK) and piece.count(_BLANK) == 1 and b"\r" not in piece:
            return b"" if piece.isspace() else piece  # the usual read: exactly one whole event
        if b"\r" in piece:
            piece = piece.replace(b"\r\n", b"\n")
        if self._size:
            if _BLANK not in piece and not (piece[:1] == b"\n" and self._parts[-1][-1:] == b"\n"):
                self._keep(piece)  # still no end
                return b""
            buf = b"".join((*self._parts, piece))
            self._parts, self._size = [], 0
        else:
            buf = piece
        if (i := buf.rfind(_BLANK)) < 0:
            self._keep(buf)
            return b""
        end = i + 2
        if end == len(buf):
            ready = buf
        else:
            ready = buf[:end]
            self._keep(buf[end:])
        if ready.count(_BLANK) == 1:
            return b"" if ready.isspace() else ready
        events = [e for e in ready.split(_BLANK) if e.strip()]
        return _BLANK.join(events) + _BLANK if events else b""

    def _keep(self, piece: bytes) -> None:
        if not piece:
            return
        self._size += len(piece)
        if self._size > MAX_EVENT:
            self._parts, self._size = [], 0
            raise EventTooLarge(f"more than {MAX_EVENT} bytes without the end of an event")
        self._parts.append(piece)

    def end(self) -> bytes:
        buf = b"".join(self._parts)
        self._parts, self._size = [], 0
        if not buf.strip():
            return b""
        return buf if buf.endswith(_BLANK) else buf.rstrip(b"\n") + _BLANK


class SseStream:
    """The events of an engine's ``text/event-stream`` answer (``upstream``, whose head has arrived): iterate it
    (an ``AsyncIterator[bytes]``, as :class:`~enclave.engines.base.InnerResponse` carries), or :meth:`pipe` it
    and ``await`` :meth:`finished`. Either way its end releases the connection; :meth:`aclose` before the end
    closes it."""

    __slots__ = ("upstream", "_split", "_sink", "_sink_error", "_too_large", "_ended")

    def __init__(self, upstream: hop.Response) -> None:
        self.upstream = upstream
        self._split = SseSplitter()
        self._sink: Callable[[bytes], None] | None = None
        self._sink_error: Exception | None = None
        self._too_large: EventTooLarge | None = None
        self._ended = False

    # -- pulling ---------------------------------------------------------------------------------------------

    def __aiter__(self) -> SseStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._ended:
            try:
                piece = await self.upstream.readany()
            except hop.HopError as exc:
                self.close()
                raise EngineUnavailable(f"engine stream broke: {type(exc).__name__}") from None
            except BaseException:  # cancelled: the reader has given up on the stream
                self.close()
                raise
            if not piece:
                self._ended = True
                self.upstream.release()
                if tail := self._split.end():
                    return tail
                break
            try:
                ready = self._split.feed(piece)
            except EventTooLarge:
                self.close()
                raise
            if ready:
                return ready
        raise StopAsyncIteration

    # -- pushing ---------------------------------------------------------------------------------------------

    def pipe(self, sink: Callable[[bytes], None]) -> None:
        """From now on give every piece of complete events to ``sink``, from the engine socket's callback (so it
        must not block; it may pause or abort :attr:`upstream`, as :class:`hop.Downstream` does)."""
        self._sink = sink
        self.upstream.pipe(self._piece)

    def _piece(self, piece: bytes) -> None:
        assert self._sink is not None
        try:
            ready = self._split.feed(piece)
        except EventTooLarge as exc:  # the engine's fault: finished() raises it, as for an engine that broke off
            self._too_large = exc
            self.upstream.abort(hop.BadResponse(str(exc)))
            return
        try:
            if ready:
                self._sink(ready)
        except Exception as exc:  # a bug in the sink: the stream stops here, and finished() raises it
            self._sink_error = exc
            self.upstream.abort(hop.BadResponse("the stream's consumer failed"))

    async def finished(self) -> None:
        """Wait for the end of a piped stream; its last, unterminated event (if any) goes to the sink first.
        Raises :class:`EngineUnavailable` when the engine broke off, stayed silent too long or sent an event past
        :data:`MAX_EVENT`, and the :class:`hop.HopError` the sink aborted with otherwise (:class:`hop.ClientGone`,
        ...)."""
        assert self._sink is not None
        try:
            await self.upstream.finished()
        except hop.HopError as exc:
            self.close()
            if self._sink_error is not None:
                raise self._sink_error from None
            if self._too_large is not None:
                raise self._too_large from None
            if isinstance(exc, hop.ClientGone):  # not the engine's failure: the consumer's own
                raise
            raise EngineUnavailable(f"engine stream broke: {type(exc).__name__}") from None
        except BaseException:
            self.close()
            raise
        self._ended = True
        self.upstream.release()
        if tail := self._split.end():
            self._sink(tail)

    # -- the end ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Give up on the stream: unless it has ended, the engine's connection is closed (vLLM then aborts)."""
        self._ended = True
        self.upstream.close()

    async def aclose(self) -> None:
        self.close()
