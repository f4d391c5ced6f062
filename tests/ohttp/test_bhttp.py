"""Binary HTTP (RFC 9292): encoders, the incremental decoder, truncation, padding, validation and limits."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ohttp import (
    NEED_DATA,
    BHTTPDecoder,
    Data,
    DecodeError,
    EndOfMessage,
    InformationalResponse,
    LimitError,
    Limits,
    LocalProtocolError,
    Mode,
    RemoteProtocolError,
    Request,
    RequestHead,
    Response,
    ResponseHead,
    Trailers,
    UnsupportedError,
    decode,
    decode_request,
    decode_response,
    encode_chunk,
    encode_end,
    encode_request,
    encode_request_head,
    encode_response,
    encode_response_head,
    padded_size,
)
from ohttp._varint import encode_varint
from tests.ohttp.strategies import messages, requests, responses, splits

MODES = [Mode.KNOWN_LENGTH, Mode.INDETERMINATE_LENGTH]
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encode(
    msg: Request | Response, mode: Mode = Mode.KNOWN_LENGTH, *, truncate: bool = False, padding: int = 0
) -> bytes:
    if isinstance(msg, Request):
        return encode_request(msg, mode, truncate=truncate, padding=padding)
    return encode_response(msg, mode, truncate=truncate, padding=padding)


def events_of(pieces: Iterable[bytes], limits: Limits | None = None) -> list[object]:
    """Feed ``pieces`` then EOF; return every event, draining after each piece."""
    dec = BHTTPDecoder(limits)
    out: list[object] = []
    for piece in pieces:
        dec.receive_data(piece)
        while (ev := dec.next_event()) is not NEED_DATA:
            out.append(ev)
    dec.receive_data(b"")
    while (ev := dec.next_event()) is not NEED_DATA:
        out.append(ev)
    assert isinstance(out[-1], EndOfMessage)
    assert sum(isinstance(e, EndOfMessage) for e in out) == 1
    return out


def coalesce(events: list[object]) -> list[object]:
    """Merge adjacent Data events: content boundaries carry no meaning."""
    out: list[object] = []
    for ev in events:
        if isinstance(ev, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def expected_events(msg: Request | Response, mode: Mode) -> list[object]:
    out: list[object] = []
    if isinstance(msg, Request):
        out.append(RequestHead(msg.method, msg.scheme, msg.authority, msg.path, msg.headers, mode))
    else:
        out.extend(msg.informational)
        out.append(ResponseHead(msg.status, msg.headers, mode))
    if msg.content:
        out.append(Data(msg.content))
    if msg.trailers:
        out.append(Trailers(msg.trailers))
    out.append(EndOfMessage())
    return out


# ---------------------------------------------------------------------------------------------------------------
# Encoding details


def test_tiny_messages_and_truncation() -> None:
    r = Response(status=200)
    assert encode_response(r, Mode.KNOWN_LENGTH) == bytes.fromhex("0140c8000000")
    assert encode_response(r, Mode.KNOWN_LENGTH, truncate=True) == bytes.fromhex("0140c8")
    assert encode_response(r, Mode.INDETERMINATE_LENGTH) == bytes.fromhex("0340c8000000")
    assert encode_response(r, Mode.INDETERMINATE_LENGTH, truncate=True) == bytes.fromhex("0340c8")
    q = Request(method="GET", scheme="https", authority="example.com", path="/")
    assert encode_request(q, truncate=True) == bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f")
    assert encode_request(q, Mode.KNOWN_LENGTH).endswith(b"\x2f\x00\x00\x00")
    for m in MODES:
        for t in (False, True):
            assert decode(encode_request(q, m, truncate=t)) == q
            assert decode(encode_response(r, m, truncate=t)) == r


def test_truncate_keeps_non_empty_parts() -> None:
    with_trailers = Response(status=200, trailers=[("t", "1")])
    for m in MODES:
        assert encode_response(with_trailers, m, truncate=True) == encode_response(with_trailers, m)
    content_only = Response(status=200, content=b"hi")
    assert encode_response(content_only, Mode.KNOWN_LENGTH, truncate=True) == bytes.fromhex("0140c800026869")
    assert encode_response(content_only, Mode.INDETERMINATE_LENGTH, truncate=True) == bytes.fromhex("0340c80002686900")
    headers_only = Response(status=204, headers=[("a", "b")])
    assert encode_response(headers_only, Mode.KNOWN_LENGTH, truncate=True) == bytes.fromhex("0140cc0401610162")


def test_padding_appends_zeros() -> None:
    r = Response(status=200, content=b"x")
    for m in MODES:
        base = encode_response(r, m)
        assert encode_response(r, m, padding=7) == base + bytes(7)
        assert decode(base + bytes(7)) == r


def test_streaming_encoders_match_whole_message_encoder() -> None:
    info = InformationalResponse(status=103, headers=[("link", "</a>")])
    resp = Response(
        status=200,
        headers=[("content-type", "text/plain")],
        content=b"abcdef",
        trailers=[("x", "y")],
        informational=(info,),
    )
    streamed = (
        encode_response_head(200, [("content-type", "text/plain")], [info])
        + encode_chunk(b"abcdef")
        + encode_end([("x", "y")])
    )
    assert streamed == encode_response(resp, Mode.INDETERMINATE_LENGTH)
    split = (
        encode_response_head(200, [("content-type", "text/plain")], [info])
        + encode_chunk(b"ab")
        + encode_chunk(b"cdef")
    )
    assert decode(split + encode_end([("x", "y")], padding=3)) == resp
    req = Request(method="POST", path="/v1/chat", headers=[("content-type", "application/json")], content=b"{}")
    head = encode_request_head(req)
    assert decode(head + encode_chunk(b"{") + encode_chunk(b"}") + encode_end()) == req
    assert encode_request(req, Mode.INDETERMINATE_LENGTH).startswith(head)
    assert encode_request(req, Mode.KNOWN_LENGTH).startswith(encode_request_head(req, Mode.KNOWN_LENGTH))


def test_local_errors() -> None:
    with pytest.raises(LocalProtocolError):
        encode_chunk(b"")
    with pytest.raises(LocalProtocolError):
        encode_response_head(199)
    with pytest.raises(LocalProtocolError):
        encode_response_head(200, [("Bad", "x")])
    with pytest.raises(LocalProtocolError):
        encode_end([("x", "a\r\nb")])
    with pytest.raises(LocalProtocolError):
        BHTTPDecoder(expect="neither")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Request(method="GET", headers=[("Host", "x")]),
        lambda: Request(method="GET", headers=[(":path", "/")]),
        lambda: Request(method="GET", headers=[("", "x")]),
        lambda: Request(method="GET", headers=[("x", "a\nb")]),
        lambda: Request(method="GET", trailers=[("x", " lead")]),
        lambda: Request(method="G T"),
        lambda: Request(method=""),
        lambda: Request(method="GET", path="/a b"),
        lambda: Request(method="GET", authority="a\x00"),
        lambda: Response(status=199),
        lambda: Response(status=600),
        lambda: InformationalResponse(status=200),
        lambda: Response(status=200, headers=[("x", "\x00")]),
    ],
)
def test_invalid_messages_cannot_be_constructed(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LocalProtocolError):
        make()


def test_str_is_converted_and_header_lookup() -> None:
    req = Request(method="GET", path="/", headers=[("accept", "a"), ("accept", "b")])
    assert req.method == b"GET" and req.headers == ((b"accept", b"a"), (b"accept", b"b"))
    assert req.header(b"accept") == b"a" and req.header(b"nope") is None
    resp = Response(status=200, headers=[("server", "veil")])
    assert resp.header(b"server") == b"veil" and resp.header(b"x") is None


# ---------------------------------------------------------------------------------------------------------------
# Round trips and the three-way incremental test


@PROPERTY
@given(msg=messages, mode=st.sampled_from(MODES), truncate=st.booleans(), padding=st.integers(0, 20))
def test_roundtrip(msg: Request | Response, mode: Mode, truncate: bool, padding: int) -> None:
    wire = encode(msg, mode, truncate=truncate, padding=padding)
    assert decode(wire) == msg
    if isinstance(msg, Request):
        assert decode_request(wire) == msg
        with pytest.raises(DecodeError):
            decode_response(wire)
    else:
        assert decode_response(wire) == msg
        with pytest.raises(DecodeError):
            decode_request(wire)
    assert wire[0] == (0 if isinstance(msg, Request) else 1) + (2 if mode is Mode.INDETERMINATE_LENGTH else 0)


@PROPERTY
@given(msg=requests, mode=st.sampled_from(MODES))
def test_request_encoding_is_canonical(msg: Request, mode: Mode) -> None:
    wire = encode(msg, mode)
    assert encode(decode(wire), mode) == wire


@PROPERTY
@given(msg=responses, mode=st.sampled_from(MODES))
def test_response_mode_conversion(msg: Response, mode: Mode) -> None:
    other = Mode.INDETERMINATE_LENGTH if mode is Mode.KNOWN_LENGTH else Mode.KNOWN_LENGTH
    assert encode(decode(encode(msg, mode)), other) == encode(msg, other)


@PROPERTY
@given(msg=messages, mode=st.sampled_from(MODES), truncate=st.booleans(), padding=st.integers(0, 5), data=st.data())
def test_three_way_incremental_decoding(
    msg: Request | Response, mode: Mode, truncate: bool, padding: int, data: st.DataObject
) -> None:
    wire = encode(msg, mode, truncate=truncate, padding=padding)
    whole = events_of([wire])
    bytewise = events_of([wire[i : i + 1] for i in range(len(wire))])
    random_split = events_of(data.draw(splits(wire)))
    expected = expected_events(msg, mode)
    assert coalesce(whole) == expected
    assert coalesce(bytewise) == expected
    assert coalesce(random_split) == expected
    # Whole input: the content comes in one Data event.
    assert whole == expected


def test_informational_responses_are_separate_events() -> None:
    msg = Response(
        status=200,
        informational=(InformationalResponse(status=100), InformationalResponse(status=103, headers=[("link", "<x>")])),
    )
    for mode in MODES:
        evs = events_of([encode(msg, mode)])
        assert evs == [
            InformationalResponse(status=100),
            InformationalResponse(status=103, headers=[("link", "<x>")]),
            ResponseHead(200, (), mode),
            EndOfMessage(),
        ]


def test_trailers_event_only_when_non_empty() -> None:
    for mode in MODES:
        assert not any(isinstance(e, Trailers) for e in events_of([encode(Response(status=200), mode)]))
        evs = events_of([encode(Response(status=200, trailers=[("a", "b")]), mode)])
        assert evs[-2:] == [Trailers(((b"a", b"b"),)), EndOfMessage()]


def test_non_minimal_varints_are_accepted() -> None:
    # Known-length response: framing 1 as 4001, status 200 on 4 bytes, empty sections on 2 bytes each.
    wire = bytes.fromhex("4001800000c84000400268694000")
    assert decode(wire) == Response(status=200, content=b"hi")
    # Field line lengths on 2 bytes inside a section.
    section = bytes.fromhex("400161400162")
    wire = bytes.fromhex("0140c8") + encode_varint(len(section)) + section
    assert decode(wire) == Response(status=200, headers=[("a", "b")])


# ---------------------------------------------------------------------------------------------------------------
# Truncation (RFC 9292 s3.8): legal only where every remaining part is empty


def _section(fields: tuple[tuple[bytes, bytes], ...], mode: Mode) -> bytes:
    body = b"".join(encode_varint(len(n)) + n + encode_varint(len(v)) + v for n, v in fields)
    return encode_varint(len(body)) + body if mode is Mode.KNOWN_LENGTH else body + b"\x00"


def _content(content: bytes, mode: Mode) -> bytes:
    if mode is Mode.KNOWN_LENGTH:
        return encode_varint(len(content)) + content
    return (encode_varint(len(content)) + content if content else b"") + b"\x00"


def legal_cuts(msg: Request | Response, mode: Mode) -> dict[int, Request | Response]:
    """Offsets where a cut leaves a valid message (only empty parts follow), and the message it decodes to.

    Computed from the wire layout, independently of the encoder: framing and control data (with informational
    responses and the final status), header section, content, trailer section.
    """
    if isinstance(msg, Request):
        control = b"".join(encode_varint(len(x)) + x for x in (msg.method, msg.scheme, msg.authority, msg.path))
        b0 = 1 + len(control)
        base = {"method": msg.method, "scheme": msg.scheme, "authority": msg.authority, "path": msg.path}
        make = Request
    else:
        infos = b"".join(encode_varint(i.status) + _section(i.headers, mode) for i in msg.informational)
        b0 = 1 + len(infos) + len(encode_varint(msg.status))
        base = {"status": msg.status, "informational": msg.informational}
        make = Response  # type: ignore[assignment]
    b1 = b0 + len(_section(msg.headers, mode))
    b2 = b1 + len(_content(msg.content, mode))
    b3 = b2 + len(_section(msg.trailers, mode))
    return {
        b0: make(**base),  # type: ignore[arg-type]
        b1: make(**base, headers=msg.headers),  # type: ignore[arg-type]
        b2: make(**base, headers=msg.headers, content=msg.content),  # type: ignore[arg-type]
        b3: msg,
    }


TRUNCATION_MESSAGES = [
    Request(method="GET", scheme="https", authority="example.com", path="/"),
    Request(
        method="POST",
        scheme="https",
        authority="api.example",
        path="/v1/chat/completions",
        headers=[("content-type", "application/json"), ("date", "Mon, 27 Jul 2009 12:28:53 GMT")],
        content=b'{"model":"m","stream":true}' * 3,
        trailers=[("x-checksum", "abc")],
    ),
    Response(status=200),
    Response(status=404, headers=[("content-type", "text/plain")], content=b"not found"),
    Response(
        status=200,
        headers=[("content-type", "text/event-stream")],
        content=b"data: 1\n\n" * 40,
        trailers=[("grpc-status", "0"), ("x", "")],
        informational=(
            InformationalResponse(status=102, headers=[("running", "yes")]),
            InformationalResponse(status=100),
        ),
    ),
]


def check_every_cut(msg: Request | Response, mode: Mode, padding: int = 0) -> int:
    legal_at = legal_cuts(msg, mode)
    wire = encode(msg, mode, padding=padding)
    n = len(wire) - padding
    assert len(legal_at) == 4, "boundaries are distinct"
    assert max(legal_at) == n
    for cut in range(len(wire)):
        prefix = wire[:cut]
        if cut in legal_at:
            assert decode(prefix) == legal_at[cut], f"cut at {cut} of {len(wire)}"
        elif cut > n:
            assert decode(prefix) == msg  # inside the padding
        else:
            with pytest.raises(DecodeError):
                decode(prefix)
    assert decode(wire) == msg
    return len(legal_at)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("msg", TRUNCATION_MESSAGES, ids=range(len(TRUNCATION_MESSAGES)))
def test_truncation_at_every_cut_point(msg: Request | Response, mode: Mode) -> None:
    assert check_every_cut(msg, mode, padding=4) == 4


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=messages, mode=st.sampled_from(MODES))
def test_truncation_property(msg: Request | Response, mode: Mode) -> None:
    check_every_cut(msg, mode)


def test_indeterminate_content_cut_between_chunks_raises() -> None:
    head = encode_response_head(200, [("content-type", "text/event-stream")])
    chunks = [encode_chunk(b"data: %d\n\n" % i) for i in range(3)]
    wire = head + b"".join(chunks) + encode_end()
    assert decode(wire).content == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert decode(head) == Response(status=200, headers=[("content-type", "text/event-stream")])  # no content: legal
    for k in (1, 2, 3):
        prefix = head + b"".join(chunks[:k])
        with pytest.raises(DecodeError, match="truncated"):
            decode(prefix)
        # The incremental decoder hands out the chunks it has, then fails at EOF.
        dec = BHTTPDecoder()
        dec.receive_data(prefix)
        got = []
        while (ev := dec.next_event()) is not NEED_DATA:
            got.append(ev)
        assert b"".join(e.data for e in got if isinstance(e, Data)) == b"".join(c[1:] for c in chunks[:k])
        dec.receive_data(b"")
        with pytest.raises(DecodeError):
            dec.next_event()


def test_informational_section_cannot_be_truncated() -> None:
    wire = encode_response(Response(status=200, informational=(InformationalResponse(status=103),)), Mode.KNOWN_LENGTH)
    assert wire.startswith(bytes.fromhex("01406700"))
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("014067"))
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("034067"))
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("01406700"))  # an informational response alone is not a message


# ---------------------------------------------------------------------------------------------------------------
# Padding


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("bad", [1, 0x80, 0xFF])
def test_non_zero_padding_raises(mode: Mode, bad: int) -> None:
    msg = Response(status=200, content=b"ok", trailers=[("t", "v")])
    wire = encode(msg, mode, padding=8)
    for pos in range(len(wire) - 8, len(wire)):
        corrupted = bytearray(wire)
        corrupted[pos] = bad
        with pytest.raises(DecodeError, match="padding"):
            decode(bytes(corrupted))


def test_non_zero_padding_after_end_of_message_incrementally() -> None:
    dec = BHTTPDecoder()
    dec.receive_data(encode(Response(status=200), Mode.INDETERMINATE_LENGTH))
    evs = []
    while (ev := dec.next_event()) is not NEED_DATA:
        evs.append(ev)
    assert evs[-1] == EndOfMessage()
    dec.receive_data(bytes(100))
    assert dec.next_event() is NEED_DATA
    dec.receive_data(b"\x00\x00\x07")
    with pytest.raises(DecodeError):
        dec.next_event()


def test_data_after_truncated_known_message_must_be_padding() -> None:
    # "0140c8" then a non-zero byte: it is read as a header section length and must then be complete.
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("0140c805"))


# ---------------------------------------------------------------------------------------------------------------
# Validation of peer bytes


def _raw_message(
    fields: list[tuple[bytes, bytes]],
    mode: Mode,
    *,
    where: str = "headers",
    request: bool = True,
) -> bytes:
    """A message with arbitrary (possibly invalid) field lines in its header or trailer section."""
    body = b"".join(encode_varint(len(n)) + n + encode_varint(len(v)) + v for n, v in fields)
    if mode is Mode.KNOWN_LENGTH:
        section = encode_varint(len(body)) + body
        empty = b"\x00"
    else:
        section = body + b"\x00"
        empty = b"\x00"
    if request:
        head = (b"\x00" if mode is Mode.KNOWN_LENGTH else b"\x02") + b"\x03GET\x05https\x00\x01/"
    else:
        head = (b"\x01" if mode is Mode.KNOWN_LENGTH else b"\x03") + b"\x40\xc8"
    if where == "headers":
        return head + section + b"\x00" + empty
    return head + empty + b"\x00" + section


BAD_NAMES = [b"Host", b"HOST", b":path", b":status", b"a b", b"a\x00", b"\xc3\xa9", b"a:b", b"x\r", b"\x7f"]
BAD_VALUES = [b"a\rb", b"a\nb", b"a\x00b", b"\r", b"\n", b"\x00", b" lead", b"trail ", b"\ttab"]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("where", ["headers", "trailers"])
@pytest.mark.parametrize("request_", [True, False], ids=["request", "response"])
def test_valid_raw_message_decodes(mode: Mode, where: str, request_: bool) -> None:
    msg = decode(_raw_message([(b"x-ok", b"fine value"), (b"e", b"")], mode, where=where, request=request_))
    assert getattr(msg, where) == ((b"x-ok", b"fine value"), (b"e", b""))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("where", ["headers", "trailers"])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_field_name_raises(mode: Mode, where: str, name: bytes) -> None:
    for request in (True, False):
        with pytest.raises(DecodeError):
            decode(_raw_message([(b"ok", b"1"), (name, b"v")], mode, where=where, request=request))


@pytest.mark.parametrize("where", ["headers", "trailers"])
def test_empty_field_name_raises_in_known_length(where: str) -> None:
    # In indeterminate-length messages a zero name length ends the section instead.
    for request in (True, False):
        with pytest.raises(DecodeError):
            decode(_raw_message([(b"ok", b"1"), (b"", b"v")], Mode.KNOWN_LENGTH, where=where, request=request))
        with pytest.raises(DecodeError):
            decode(_raw_message([(b"", b"")], Mode.KNOWN_LENGTH, where=where, request=request))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("where", ["headers", "trailers"])
@pytest.mark.parametrize("value", BAD_VALUES)
def test_invalid_field_value_raises(mode: Mode, where: str, value: bytes) -> None:
    for request in (True, False):
        with pytest.raises(DecodeError):
            decode(_raw_message([(b"name", value)], mode, where=where, request=request))


@pytest.mark.parametrize(
    "control",
    [
        b"\x03G T\x05https\x00\x01/",  # space in method
        b"\x00\x05https\x00\x01/",  # empty method
        b"\x03GET\x05ht\x00ps\x00\x01/",  # NUL in scheme
        b"\x03GET\x05https\x02a b\x01/",  # space in authority
        b"\x03GET\x05https\x00\x02/\n",  # LF in path
        b"\x03GET\x05https\x00\x02/\x7f",  # DEL in path
    ],
)
def test_invalid_request_control_data_raises(control: bytes) -> None:
    for fi in (b"\x00", b"\x02"):
        with pytest.raises(DecodeError):
            decode(fi + control + b"\x00\x00\x00")


@pytest.mark.parametrize("status", [0, 99, 600, 1000, 2**62 - 1])
def test_invalid_status_raises(status: int) -> None:
    for fi in (b"\x01", b"\x03"):
        with pytest.raises(DecodeError):
            decode(fi + encode_varint(status) + b"\x00\x00\x00")


def test_known_length_field_overrunning_its_section_raises() -> None:
    # Section of 4 bytes whose field line claims a 5-byte value.
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("0140c80401610562"))
    # Varint of the value length itself crosses the section end.
    with pytest.raises(DecodeError):
        decode(bytes.fromhex("0140c803016140") + b"\x05bbbbb")


@pytest.mark.parametrize("fi", [4, 5, 7, 63, 64, 2**30, 2**62 - 1])
def test_unknown_framing_indicator_raises_unsupported(fi: int) -> None:
    with pytest.raises(UnsupportedError):
        decode(encode_varint(fi) + b"\x40\xc8\x00\x00\x00")
    dec = BHTTPDecoder()
    dec.receive_data(encode_varint(fi))
    with pytest.raises(UnsupportedError):
        dec.next_event()


def test_empty_message_raises() -> None:
    with pytest.raises(DecodeError):
        decode(b"")


def test_expect_mismatch() -> None:
    with pytest.raises(DecodeError):
        decode_request(bytes.fromhex("0140c8"))
    with pytest.raises(DecodeError):
        decode_response(encode_request(Request(method="GET")))


# ---------------------------------------------------------------------------------------------------------------
# Limits


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_field_section_size_limit(mode: Mode) -> None:
    msg = Request(method="GET", headers=[("a", "x" * 20), ("b", "y" * 20)])  # section body: 2 * (1+1+1+20) = 46
    wire = encode(msg, mode)
    assert decode(wire, Limits(max_field_section_size=46)) == msg
    with pytest.raises(LimitError):
        decode(wire, Limits(max_field_section_size=45))
    trailers = encode(Request(method="GET", trailers=msg.headers), mode)
    with pytest.raises(LimitError):
        decode(trailers, Limits(max_field_section_size=45))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_single_huge_field_is_refused_before_it_arrives(mode: Mode) -> None:
    dec = BHTTPDecoder(Limits(max_field_section_size=1000))
    head = encode_response_head(200) if mode is Mode.INDETERMINATE_LENGTH else b"\x01\x40\xc8"
    if mode is Mode.INDETERMINATE_LENGTH:
        head = head[:-1]  # drop the section terminator
        dec.receive_data(head + b"\x01a" + encode_varint(10**9))
    else:
        dec.receive_data(head + encode_varint(10**9))
    with pytest.raises(LimitError) as info:
        dec.next_event()
    assert info.value.status_hint == 413


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_field_count_limit(mode: Mode) -> None:
    msg = Response(status=200, headers=[(f"h{i}", "v") for i in range(10)])
    wire = encode(msg, mode)
    assert decode(wire, Limits(max_fields=10)) == msg
    with pytest.raises(LimitError):
        decode(wire, Limits(max_fields=9))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_content_size_limit(mode: Mode) -> None:
    msg = Response(status=200, content=b"z" * 1000)
    wire = encode(msg, mode)
    assert decode(wire, Limits(max_content_size=1000)) == msg
    with pytest.raises(LimitError):
        decode(wire, Limits(max_content_size=999))


def test_content_size_limit_counts_every_chunk() -> None:
    wire = encode_response_head(200) + encode_chunk(b"a" * 600) + encode_chunk(b"b" * 600) + encode_end()
    assert decode(wire, Limits(max_content_size=1200)).content == b"a" * 600 + b"b" * 600
    dec = BHTTPDecoder(Limits(max_content_size=1000))
    dec.receive_data(wire)
    seen = []
    with pytest.raises(LimitError):
        while True:
            seen.append(dec.next_event())
    assert Data(b"a" * 600) in seen


def test_known_length_content_limit_is_checked_on_the_length() -> None:
    dec = BHTTPDecoder(Limits(max_content_size=100))
    dec.receive_data(b"\x01\x40\xc8\x00" + encode_varint(2**40))
    assert dec.next_event() == ResponseHead(200, (), Mode.KNOWN_LENGTH)
    with pytest.raises(LimitError):
        dec.next_event()


def test_informational_count_limit() -> None:
    msg = Response(status=200, informational=tuple(InformationalResponse(status=100) for _ in range(3)))
    for mode in MODES:
        assert decode(encode(msg, mode), Limits(max_informational=3)) == msg
        with pytest.raises(LimitError):
            decode(encode(msg, mode), Limits(max_informational=2))


# ---------------------------------------------------------------------------------------------------------------
# Decoder state


def test_decoder_stays_failed() -> None:
    dec = BHTTPDecoder()
    dec.receive_data(bytes.fromhex("0140c8") + b"\x02\x01A\x00")  # uppercase name
    with pytest.raises(DecodeError):
        dec.next_event()
    for _ in range(2):
        with pytest.raises(DecodeError):
            dec.next_event()
        with pytest.raises(DecodeError):
            dec.receive_data(b"\x00")
    with pytest.raises(DecodeError):
        dec.receive_data(b"")


def test_decoder_stays_failed_after_limit_error() -> None:
    dec = BHTTPDecoder(Limits(max_fields=0))
    dec.receive_data(encode(Response(status=200, headers=[("a", "b")])))
    with pytest.raises(LimitError):
        dec.next_event()
    with pytest.raises(RemoteProtocolError):
        dec.next_event()


def test_data_after_eof_is_a_local_error() -> None:
    dec = BHTTPDecoder()
    dec.receive_data(b"\x01")
    dec.receive_data(b"")
    dec.receive_data(b"")  # a second EOF is harmless
    with pytest.raises(LocalProtocolError):
        dec.receive_data(b"\x40")


def test_need_data_before_eof() -> None:
    dec = BHTTPDecoder()
    assert dec.next_event() is NEED_DATA
    dec.receive_data(b"\x03\x40")
    assert dec.next_event() is NEED_DATA
    dec.receive_data(b"\xc8\x00")
    assert dec.next_event() == ResponseHead(200, (), Mode.INDETERMINATE_LENGTH)
    assert not dec.is_request
    assert dec.next_event() is NEED_DATA


def test_known_length_content_streams_as_it_arrives() -> None:
    wire = encode(Response(status=200, content=b"0123456789"), Mode.KNOWN_LENGTH, truncate=True)
    dec = BHTTPDecoder()
    cut = wire.index(b"0123")
    dec.receive_data(wire[: cut + 4])
    assert isinstance(dec.next_event(), ResponseHead)
    assert dec.next_event() == Data(b"0123")
    assert dec.next_event() is NEED_DATA
    dec.receive_data(wire[cut + 4 :])
    assert dec.next_event() == Data(b"456789")
    assert dec.next_event() is NEED_DATA  # the trailer section may still come
    dec.receive_data(b"")
    assert dec.next_event() == EndOfMessage()


def test_sse_stream_yields_data_as_chunks_arrive() -> None:
    dec = BHTTPDecoder(expect="response")
    dec.receive_data(encode_response_head(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")]))
    head = dec.next_event()
    assert head == ResponseHead(
        200, ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")), Mode.INDETERMINATE_LENGTH
    )
    assert dec.next_event() is NEED_DATA
    for i in range(200):
        event = b'data: {"id":%d,"choices":[{"delta":{"content":"tok%d"}}]}\n\n' % (i, i)
        chunk = encode_chunk(event)
        half = len(chunk) // 2
        dec.receive_data(chunk[:half])
        first = dec.next_event()
        if half > len(encode_varint(len(event))):
            assert isinstance(first, Data) and event.startswith(first.data)
            assert dec.next_event() is NEED_DATA
            dec.receive_data(chunk[half:])
            rest = dec.next_event()
            assert isinstance(rest, Data) and first.data + rest.data == event
        else:
            assert first is NEED_DATA
        assert dec.next_event() is NEED_DATA
    dec.receive_data(encode_chunk(b"data: [DONE]\n\n"))
    assert dec.next_event() == Data(b"data: [DONE]\n\n")
    dec.receive_data(encode_end([("x-tokens", "200")]))
    assert dec.next_event() == Trailers(((b"x-tokens", b"200"),))
    assert dec.next_event() == EndOfMessage()
    dec.receive_data(b"")
    assert dec.next_event() is NEED_DATA


def test_long_stream_does_not_grow_the_buffer() -> None:
    dec = BHTTPDecoder()
    dec.receive_data(encode_response_head(200))
    assert isinstance(dec.next_event(), ResponseHead)
    total = 0
    for _ in range(3000):
        dec.receive_data(encode_chunk(b"x" * 500))
        while (ev := dec.next_event()) is not NEED_DATA:
            assert isinstance(ev, Data)
            total += len(ev.data)
        assert len(dec._buf) < 16384
    assert total == 3000 * 500


# -- padding buckets and the work one message may cost (issue 15 items 3 and 5) ------------------------------------

#: The same table is in proxy/web/test/bhttp.test.js: the page and the Python client must pad alike.
PADDED_1024 = [(0, 0), (1, 1024), (5, 1024), (255, 1024), (256, 1024), (257, 1024), (1000, 1024), (1024, 1024),
               (1025, 2048), (4097, 5120), (32767, 32768), (32768, 32768), (40000, 40960), (100000, 100352),
               (1048577, 1081344)]


@pytest.mark.parametrize(("length", "size"), PADDED_1024)
def test_padded_size_buckets(length: int, size: int) -> None:
    assert padded_size(length, 1024) == size


@given(st.integers(min_value=1, max_value=1 << 26), st.sampled_from([1, 64, 256, 1024]))
def test_padded_size_is_a_small_bucket(length: int, quantum: int) -> None:
    size = padded_size(length, quantum)
    assert size >= length and size % quantum == 0
    assert size - length < max(quantum, length * 0.13)  # Padmé: at most about 12% more past the quantum
    assert padded_size(size, quantum) == size  # a bucket is its own bucket


def test_padded_requests_decode_and_non_zero_padding_is_rejected() -> None:
    req = Request(method=b"POST", path=b"/v1/chat/completions", headers=[(b"date", b"x")], content=b"{}")
    bare = encode_request(req)
    padded = encode_request(req, padding=padded_size(len(bare), 1024) - len(bare))
    assert len(padded) == 1024 and decode_request(padded) == req
    indeterminate = encode_request(req, Mode.INDETERMINATE_LENGTH, padding=100)
    assert decode_request(indeterminate) == req
    for bad in (padded[:-1] + b"\x01", indeterminate[:-50] + b"\x07" + bytes(49)):
        with pytest.raises(DecodeError, match="padding"):
            decode_request(bad)


def test_content_chunk_limit_refuses_millions_of_one_byte_chunks_quickly() -> None:
    import time

    head = encode_request_head(Request(method=b"POST", path=b"/v1/chat/completions"))
    hostile = head + b"\x01x" * 2_000_000 + b"\x00\x00"
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match="more than 4096 content chunks"):
        decode_request(hostile, Limits(max_content_chunks=4096))
    assert time.perf_counter() - t0 < 0.5
    ok = head + b"\x01x" * 4096 + b"\x00\x00"
    assert decode_request(ok, Limits(max_content_chunks=4096)).content == b"x" * 4096
