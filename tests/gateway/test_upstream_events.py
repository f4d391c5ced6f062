"""The upstream engine's SSE splitter: events that one read brought travel on together (one sealed chunk at the
gateway, none delayed); events split across reads, blank events and CRLF framing come out as before."""

from __future__ import annotations

from typing import Any, AsyncIterator

from enclave.engines.upstream import _sse_events


class _Content:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def iter_any(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p


class _Resp:
    """What ``_sse_events`` uses of an aiohttp response: ``content.iter_any()``, ``release()``, ``close()``."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.content = _Content(pieces)
        self.released = self.closed = False

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


async def _pieces(reads: list[bytes]) -> tuple[list[bytes], Any]:
    resp = _Resp(reads)
    out = [p async for p in _sse_events(resp)]  # type: ignore[arg-type]
    return out, resp


async def test_one_event_per_read_is_one_piece_each() -> None:
    out, resp = await _pieces([b"data: a\n\n", b"data: b\n\n", b"data: [DONE]\n\n"])
    assert out == [b"data: a\n\n", b"data: b\n\n", b"data: [DONE]\n\n"]
    assert resp.released and not resp.closed


async def test_events_available_together_are_one_piece() -> None:
    out, _ = await _pieces([b"data: a\n\n", b'data: {"finish"}\n\ndata: {"usage"}\n\ndata: [DONE]\n\n'])
    assert out == [b"data: a\n\n", b'data: {"finish"}\n\ndata: {"usage"}\n\ndata: [DONE]\n\n']


async def test_an_incomplete_event_waits_for_its_end_and_blank_events_are_dropped() -> None:
    out, _ = await _pieces([b"data: a\n\ndata: b", b"c\n\n\n\ndata: d\n\nda", b"ta: e\n\n", b"\n\n"])
    assert out == [b"data: a\n\n", b"data: bc\n\ndata: d\n\n", b"data: e\n\n"]
    assert b"".join(out) == b"data: a\n\ndata: bc\n\ndata: d\n\ndata: e\n\n"


async def test_crlf_framing_and_an_unterminated_last_event() -> None:
    out, _ = await _pieces([b"data: a\r\n\r\ndata: b\r\n\r\n", b"data: [DONE]"])
    assert out == [b"data: a\n\ndata: b\n\n", b"data: [DONE]\n\n"]
