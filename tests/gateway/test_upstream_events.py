"""The upstream engine's SSE splitter: events that one read brought travel on together (one sealed chunk at the
gateway, none delayed); events split across reads, blank events and CRLF framing come out as before. Every case
is also fed whole and byte by byte: the events' bytes must not depend on how the engine's writes were cut."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import hop
from enclave.engines import EngineUnavailable
from enclave.engines.sse import MAX_EVENT, SseSplitter, SseStream


def _pieces(reads: list[bytes]) -> list[bytes]:
    split = SseSplitter()
    out = [ready for r in reads if (ready := split.feed(r))]
    if tail := split.end():
        out.append(tail)
    return out


CASES = [
    ([b"data: a\n\n", b"data: b\n\n", b"data: [DONE]\n\n"], [b"data: a\n\n", b"data: b\n\n", b"data: [DONE]\n\n"]),
    ([b"data: a\n\n", b'data: {"finish"}\n\ndata: {"usage"}\n\ndata: [DONE]\n\n'],
     [b"data: a\n\n", b'data: {"finish"}\n\ndata: {"usage"}\n\ndata: [DONE]\n\n']),
    ([b"data: a\n\ndata: b", b"c\n\n\n\ndata: d\n\nda", b"ta: e\n\n", b"\n\n"],
     [b"data: a\n\n", b"data: bc\n\ndata: d\n\n", b"data: e\n\n"]),
    ([b"data: a\r\n\r\ndata: b\r\n\r\n", b"data: [DONE]"], [b"data: a\n\ndata: b\n\n", b"data: [DONE]\n\n"]),
    ([b"\n\n", b"\n\n\n\n", b"  \n\n"], []),
    ([b"data: x\n", b"\n"], [b"data: x\n\n"]),
    ([b"data: unterminated\n"], [b"data: unterminated\n\n"]),
]


@pytest.mark.parametrize(("reads", "expected"), CASES)
def test_pieces_as_read(reads: list[bytes], expected: list[bytes]) -> None:
    assert _pieces(reads) == expected


# (CRLF is folded per read: a CR and its LF split across two reads stay apart, as before)
@pytest.mark.parametrize(("reads", "expected"), [c for c in CASES if b"\r" not in b"".join(c[0])])
def test_the_same_events_whole_and_byte_by_byte(reads: list[bytes], expected: list[bytes]) -> None:
    whole = b"".join(reads)
    want = b"".join(expected)
    assert b"".join(_pieces([whole])) == want
    assert b"".join(_pieces([whole[i:i + 1] for i in range(len(whole))])) == want
    # byte by byte, every piece is exactly one event: nothing is held back once its blank line has arrived
    assert all(p.count(b"\n\n") == 1 for p in _pieces([whole[i:i + 1] for i in range(len(whole))]))


# -- the bound on an unfinished event ------------------------------------------------------------------------------

def test_an_unfinished_event_past_the_bound_fails_the_stream() -> None:
    split = SseSplitter()
    line = b"data: " + b"x" * (64 * 1024 - 7) + b"\n"
    with pytest.raises(EngineUnavailable):  # (EventTooLarge: the path of an engine that broke off)
        for _ in range(MAX_EVENT // len(line) + 2):
            assert split.feed(line) == b""
    assert split.end() == b""  # nothing kept


def test_an_event_up_to_the_bound_still_passes_and_the_bound_is_per_event() -> None:
    split = SseSplitter()
    line = b"data: " + b"x" * (64 * 1024 - 7) + b"\n"
    n = MAX_EVENT // len(line)
    for _ in range(2):  # two such events in a row: only the unfinished one counts
        assert all(split.feed(line) == b"" for _ in range(n))
        assert split.feed(b"\n") == line * n + b"\n"
    # a single read larger than the bound, its events whole: passed on (reads are far smaller in practice)
    assert split.feed(line * (n + 1) + b"\n") == line * (n + 1) + b"\n"


class _Upstream:
    """A piped ``hop.Response`` as SseStream uses it: the body's reads handed to the sink one by one."""

    def __init__(self, reads: list[bytes]) -> None:
        self.reads = reads
        self.error: hop.HopError | None = None
        self.closed = self.released = False

    def pipe(self, sink: Callable[[bytes], None]) -> None:
        for read in self.reads:
            if self.error is not None:
                break
            sink(read)

    async def finished(self) -> None:
        if self.error is not None:
            raise self.error

    def abort(self, error: hop.HopError) -> None:
        self.error = error
        self.closed = True

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        self.released = True


async def _pushed(reads: list[bytes]) -> tuple[list[bytes], _Upstream]:
    upstream = _Upstream(reads)
    stream = SseStream(upstream)  # type: ignore[arg-type]
    out: list[bytes] = []
    stream.pipe(out.append)
    await stream.finished()
    return out, upstream


@pytest.mark.parametrize(("reads", "expected"), CASES)
async def test_pushed_pieces_are_the_pulled_ones_however_the_reads_were_cut(reads: list[bytes],
                                                                            expected: list[bytes]) -> None:
    # hop's pipe hands the sink one piece per socket read (the HTTP chunks of that read joined): the events of
    # one read travel on together, whether that read held one HTTP chunk or several
    out, upstream = await _pushed(reads)
    assert out == expected == _pieces(reads) and upstream.released and not upstream.closed


async def test_a_pushed_event_past_the_bound_ends_the_stream_as_a_broken_engine() -> None:
    line = b"data: " + b"x" * (64 * 1024 - 7) + b"\n"
    reads = [b"data: a\n\n", *[line] * (MAX_EVENT // len(line) + 2), b"\n"]
    upstream = _Upstream(reads)
    stream = SseStream(upstream)  # type: ignore[arg-type]
    out: list[bytes] = []
    stream.pipe(out.append)
    with pytest.raises(EngineUnavailable):
        await stream.finished()
    assert out == [b"data: a\n\n"] and upstream.closed and not upstream.released


async def test_a_pulled_event_past_the_bound_ends_the_stream_as_a_broken_engine() -> None:
    line = b"data: " + b"x" * (64 * 1024 - 7) + b"\n"
    reads = [b"data: a\n\n", *[line] * (MAX_EVENT // len(line) + 2), b"\n", b""]

    class Pulled(_Upstream):
        async def readany(self) -> bytes:
            return self.reads.pop(0)

    upstream = Pulled(reads)
    stream = SseStream(upstream)  # type: ignore[arg-type]
    assert await stream.__anext__() == b"data: a\n\n"
    with pytest.raises(EngineUnavailable):
        await stream.__anext__()
    assert upstream.closed
