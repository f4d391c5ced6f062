"""The whole-message fast path of ``bhttp.decode`` against the incremental decoder: same answers, always.

The fast path handles complete known-length messages; whenever it returns a message, the incremental decoder
must return an equal one, and whenever the incremental decoder refuses an input, the fast path must decline it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ohttp import Limits, Mode, RemoteProtocolError, bhttp, encode_request, encode_response
from ohttp.bhttp._decode import _fast_known_length
from tests.ohttp.strategies import requests, responses
from tests.ohttp.test_fuzz import mutated

SMALL = Limits(max_field_section_size=40, max_fields=2, max_content_size=50)


def incremental(data: bytes, limits: Limits) -> object:
    dec = bhttp.BHTTPDecoder(limits)
    dec.receive_data(data)
    dec.receive_data(b"")
    parts: dict[str, object] = {"content": b"", "trailers": (), "info": []}
    while True:
        ev = dec.next_event()
        if isinstance(ev, (bhttp.RequestHead, bhttp.ResponseHead)):
            parts["head"] = ev
        elif isinstance(ev, bhttp.InformationalResponse):
            parts["info"].append(ev)  # type: ignore[attr-defined]
        elif isinstance(ev, bhttp.Data):
            parts["content"] += ev.data  # type: ignore[operator]
        elif isinstance(ev, bhttp.Trailers):
            parts["trailers"] = ev.fields
        elif isinstance(ev, bhttp.EndOfMessage):
            break
    dec.next_event()  # padding
    head = parts["head"]
    if isinstance(head, bhttp.RequestHead):
        return bhttp.Request(method=head.method, scheme=head.scheme, authority=head.authority, path=head.path,
                             headers=head.headers, content=parts["content"], trailers=parts["trailers"])  # type: ignore[arg-type]
    assert isinstance(head, bhttp.ResponseHead)
    return bhttp.Response(status=head.status, headers=head.headers, content=parts["content"],  # type: ignore[arg-type]
                          trailers=parts["trailers"], informational=tuple(parts["info"]))  # type: ignore[arg-type]


def agree(data: bytes, limits: Limits) -> None:
    fast = _fast_known_length(data, limits, None)
    try:
        slow = incremental(data, limits)
    except RemoteProtocolError:
        assert fast is None, f"fast path accepted what the decoder refuses: {data.hex()}"
        return
    if fast is not None:
        assert fast == slow


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    msg = draw(st.one_of(requests, responses))
    enc = encode_request if isinstance(msg, bhttp.Request) else encode_response
    return enc(msg, Mode.KNOWN_LENGTH, truncate=draw(st.booleans()), padding=draw(st.integers(0, 3)))  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(encoded(), st.sampled_from([Limits(), SMALL]))
def test_fast_path_agrees_on_valid_messages(data: bytes, limits: Limits) -> None:
    agree(data, limits)
    if limits == Limits():
        # Every valid known-length message without informational responses takes the fast path.
        msg = bhttp.decode(data)
        if isinstance(msg, bhttp.Request) or not msg.informational:
            assert _fast_known_length(data, limits, None) == msg


@settings(max_examples=1500, deadline=None)
@given(st.data(), st.sampled_from([Limits(), SMALL]))
def test_fast_path_agrees_on_mutated_messages(data: st.DataObject, limits: Limits) -> None:
    seed = data.draw(encoded())
    agree(data.draw(mutated([seed])), limits)
