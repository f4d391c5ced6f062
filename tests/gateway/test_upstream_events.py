"""The upstream engine's SSE splitter: events that one read brought travel on together (one sealed chunk at the
gateway, none delayed); events split across reads, blank events and CRLF framing come out as before. Every case
is also fed whole and byte by byte: the events' bytes must not depend on how the engine's writes were cut."""

from __future__ import annotations

import pytest

from enclave.engines.sse import SseSplitter


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
