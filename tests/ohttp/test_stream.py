"""ChunkedMessageDecoder: chunked OHTTP in, BHTTP events out, both directions, fed three ways (h11's test_io):
all at once, one byte at a time, and with trailing bytes (zero padding inside the message is left alone;
anything after the final chunk is part of it and fails authentication)."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

import ohttp
from ohttp import (
    NEED_DATA,
    ChunkedClientRequest,
    ChunkedGatewayRequest,
    ChunkedMessageDecoder,
    ChunkError,
    Data,
    DecodeError,
    DecryptError,
    EndOfMessage,
    GatewayKey,
    KemId,
    KeyIdError,
    KeyRing,
    LimitError,
    Limits,
    LocalProtocolError,
    Mode,
    Request,
    RequestHead,
    ResponseHead,
    Trailers,
    bhttp,
)

KEY = GatewayKey.derive(1, b"\x07" * 32, KemId.X25519_SHA256)
RING = KeyRing([KEY])
HEAD = bhttp.encode_response_head(200, [("content-type", "text/event-stream")])
EVENTS = [b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"]


def exchange(request: bytes = b"\x00") -> tuple[ChunkedClientRequest, ChunkedGatewayRequest, bytes]:
    """A client request, the gateway decoder that has read it, and that request's ciphertext."""
    creq = ChunkedClientRequest(KEY.config)
    wire = creq.encode_chunk(request, final=True)
    greq = ChunkedGatewayRequest(RING)
    greq.receive_data(wire)
    greq.receive_data(b"")
    while (ev := greq.next_event()) is not NEED_DATA:
        assert isinstance(ev, ohttp.Chunk)
    return creq, greq, wire


def sse_response(plaintext_tail: bytes = b"") -> tuple[ChunkedClientRequest, bytes]:
    """A streamed response as the gateway writes it: head, one chunk per event, end in the final chunk."""
    creq, greq, _ = exchange()
    enc = greq.response()
    wire = enc.encode_chunk(HEAD)
    for e in EVENTS:
        wire += enc.encode_chunk(bhttp.encode_chunk(e))
    wire += enc.encode_chunk(bhttp.encode_end([("x-usage", "3")]) + plaintext_tail, final=True)
    return creq, wire


def feed(dec: ChunkedMessageDecoder[ohttp.ChunkedClientResponse] | ChunkedMessageDecoder[ChunkedGatewayRequest],
         pieces: Iterable[bytes]) -> list[object]:
    """Every event, feeding ``pieces`` then end of input, draining after each piece."""
    out: list[object] = []

    def drain() -> None:
        while (ev := dec.next_event()) is not NEED_DATA:
            out.append(ev)

    for p in pieces:
        dec.receive_data(p)
        drain()
    dec.receive_data(b"")
    drain()
    return out


def merged(events: list[object]) -> list[object]:
    """Data events joined (their boundaries carry no meaning)."""
    out: list[object] = []
    for ev in events:
        if isinstance(ev, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def whole(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


EXPECTED_RESPONSE = [
    ResponseHead(200, ((b"content-type", b"text/event-stream"),), Mode.INDETERMINATE_LENGTH),
    Data(b"".join(EVENTS)),
    Trailers(((b"x-usage", b"3"),)),
    EndOfMessage(),
]


@pytest.mark.parametrize("split", [whole, bytewise])
def test_response_events(split: object) -> None:
    creq, wire = sse_response()
    dec = ChunkedMessageDecoder(creq.response())
    assert merged(feed(dec, split(wire))) == EXPECTED_RESPONSE  # type: ignore[operator]


def test_response_events_come_per_chunk() -> None:
    # One event per chunk as soon as the chunk is in: the client can forward each SSE event without waiting.
    creq, greq, _ = exchange()
    enc = greq.response()
    dec = ChunkedMessageDecoder(creq.response())
    dec.receive_data(enc.encode_chunk(HEAD))
    assert isinstance(dec.next_event(), ResponseHead)
    assert dec.next_event() is NEED_DATA
    for e in EVENTS:
        dec.receive_data(enc.encode_chunk(bhttp.encode_chunk(e)))
        assert dec.next_event() == Data(e)
        assert dec.next_event() is NEED_DATA
    dec.receive_data(enc.encode_chunk(bhttp.encode_end(), final=True))
    assert dec.next_event() is NEED_DATA  # the final chunk opens only at end of input
    dec.receive_data(b"")
    assert dec.next_event() == EndOfMessage()
    assert dec.next_event() is NEED_DATA


@pytest.mark.parametrize("split", [whole, bytewise])
def test_trailing_zero_padding_is_left_alone(split: object) -> None:
    creq, wire = sse_response(plaintext_tail=bytes(40))
    dec = ChunkedMessageDecoder(creq.response())
    assert merged(feed(dec, split(wire))) == EXPECTED_RESPONSE  # type: ignore[operator]


def test_trailing_nonzero_plaintext_is_a_decode_error_after_the_end() -> None:
    creq, wire = sse_response(plaintext_tail=b"\x00junk")
    dec = ChunkedMessageDecoder(creq.response())
    dec.receive_data(wire)
    dec.receive_data(b"")
    events = []
    with pytest.raises(DecodeError, match="padding"):
        while (ev := dec.next_event()) is not NEED_DATA:
            events.append(ev)
    assert merged(events) == EXPECTED_RESPONSE
    with pytest.raises(DecodeError, match="already failed"):
        dec.next_event()


@pytest.mark.parametrize("trailing", [b"\x00", b"\x01" * 5])
def test_trailing_ciphertext_belongs_to_the_final_chunk(trailing: bytes) -> None:
    creq, wire = sse_response()
    dec = ChunkedMessageDecoder(creq.response())
    with pytest.raises(DecryptError):
        feed(dec, [wire + trailing])
    with pytest.raises(DecryptError, match="already failed"):
        dec.receive_data(b"more")


def test_data_after_end_of_input_is_refused() -> None:
    creq, wire = sse_response()
    dec = ChunkedMessageDecoder(creq.response())
    assert merged(feed(dec, [wire])) == EXPECTED_RESPONSE
    with pytest.raises(ChunkError):
        dec.receive_data(b"late")


@pytest.mark.parametrize("cut", [1, 20, 40, -1])
def test_truncated_stream_raises(cut: int) -> None:
    creq, wire = sse_response()
    dec = ChunkedMessageDecoder(creq.response())
    with pytest.raises(ohttp.RemoteProtocolError):
        feed(dec, [wire[:cut]])


def test_error_in_any_arrived_chunk_comes_before_more_events() -> None:
    # Chunks that have arrived are all opened before the next event is handed out (as the client did by hand).
    creq, greq, _ = exchange()
    enc = greq.response()
    first = enc.encode_chunk(HEAD)
    second = bytearray(enc.encode_chunk(bhttp.encode_chunk(b"data: x\n\n")))
    second[-1] ^= 1
    dec = ChunkedMessageDecoder(creq.response())
    dec.receive_data(first + bytes(second))
    with pytest.raises(DecryptError):
        dec.next_event()


def test_bhttp_error_inside_the_stream() -> None:
    creq, greq, _ = exchange()
    enc = greq.response()
    dec = ChunkedMessageDecoder(creq.response())
    dec.receive_data(enc.encode_chunk(b"\x09"))  # framing indicator 9
    with pytest.raises(ohttp.UnsupportedError):
        dec.next_event()


def test_a_request_is_not_a_response() -> None:
    creq, greq, _ = exchange()
    dec = ChunkedMessageDecoder(creq.response())
    dec.receive_data(greq.response().encode_chunk(bhttp.encode_request(Request(method=b"GET")), final=True))
    dec.receive_data(b"")
    with pytest.raises(DecodeError, match="expected a response"):
        dec.next_event()


# --- the request direction (gateway) -------------------------------------------------------------------------

REQ = Request(method=b"POST", path=b"/v1/chat/completions", headers=((b"content-type", b"application/json"),),
              content=b'{"stream": true}')


def chunked_request(inner: bytes, pieces: int = 1) -> bytes:
    creq = ChunkedClientRequest(KEY.config)
    step = max(1, -(-len(inner) // pieces))
    parts = [inner[i : i + step] for i in range(0, len(inner), step)]
    return b"".join(creq.encode_chunk(p, final=i == len(parts) - 1) for i, p in enumerate(parts))


@pytest.mark.parametrize("split", [whole, bytewise])
@pytest.mark.parametrize("mode", [Mode.KNOWN_LENGTH, Mode.INDETERMINATE_LENGTH])
def test_request_events(split: object, mode: Mode) -> None:
    inner = bhttp.encode_request(REQ, mode) + bytes(7)  # with zero padding, left alone
    dec = ChunkedMessageDecoder(ChunkedGatewayRequest(RING))
    assert merged(feed(dec, split(chunked_request(inner, pieces=3)))) == [  # type: ignore[operator]
        RequestHead(b"POST", b"https", b"", b"/v1/chat/completions", REQ.headers, mode),
        Data(REQ.content),
        EndOfMessage(),
    ]
    assert dec.chunks.header_ready and dec.chunks.enc
    assert dec.chunks.response().encode_chunk(b"ok", final=True)


@pytest.mark.parametrize("split", [whole, bytewise])
def test_raw_request_bytes(split: object) -> None:
    # bhttp=False: the gateway takes the inner request whole and decodes it with the plain path's decoder.
    inner = bhttp.encode_request(REQ) + bytes(100)
    dec = ChunkedMessageDecoder(ChunkedGatewayRequest(RING), bhttp=False)
    events = feed(dec, split(chunked_request(inner, pieces=4)))  # type: ignore[operator]
    assert events[-1] == EndOfMessage() and all(isinstance(e, Data) for e in events[:-1])
    assert b"".join(e.data for e in events[:-1]) == inner  # type: ignore[attr-defined]
    assert bhttp.decode_request(inner) == REQ


def test_request_limits_apply() -> None:
    inner = bhttp.encode_request(REQ)
    dec = ChunkedMessageDecoder(ChunkedGatewayRequest(RING), limits=Limits(max_fields=0))
    with pytest.raises(LimitError):
        feed(dec, [chunked_request(inner)])


def test_unknown_key_id_surfaces_unchanged() -> None:
    wire = bytearray(chunked_request(bhttp.encode_request(REQ)))
    wire[0] ^= 0xFF
    dec = ChunkedMessageDecoder(ChunkedGatewayRequest(RING), bhttp=False)
    with pytest.raises(KeyIdError):
        feed(dec, [bytes(wire)])
    assert not dec.chunks.header_ready


def test_chunk_decoder_misuse_is_local() -> None:
    creq, wire = sse_response()
    dec = ChunkedMessageDecoder(creq.response())
    feed(dec, [wire])
    with pytest.raises(LocalProtocolError):
        bhttp.BHTTPDecoder(expect="neither")
