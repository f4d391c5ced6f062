"""Hypothesis strategies for valid BHTTP messages, and the bytes-splitting helpers used by the three-way tests."""

from __future__ import annotations

from hypothesis import strategies as st

from ohttp import InformationalResponse, Request, Response

_TCHAR_LOWER = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
_TCHAR = _TCHAR_LOWER + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

tokens = st.text(alphabet=_TCHAR, min_size=1, max_size=8).map(str.encode)
field_names = st.text(alphabet=_TCHAR_LOWER, min_size=1, max_size=12).map(str.encode)
#: Any byte but NUL, CR and LF; no leading or trailing space or tab (RFC 9113 s8.2.1).
field_values = st.binary(max_size=24).map(lambda b: bytes(c for c in b if c not in (0, 10, 13)).strip(b" \t"))
#: Request control data: no controls, no spaces, no DEL.
control_values = st.binary(max_size=16).map(lambda b: bytes(c for c in b if c > 0x20 and c != 0x7F))
fields = st.lists(st.tuples(field_names, field_values), max_size=5).map(tuple)
contents = st.one_of(st.just(b""), st.binary(min_size=1, max_size=300))

requests = st.builds(
    Request,
    method=tokens,
    scheme=control_values,
    authority=control_values,
    path=control_values,
    headers=fields,
    content=contents,
    trailers=fields,
)

informational = st.builds(InformationalResponse, status=st.integers(100, 199), headers=fields)

responses = st.builds(
    Response,
    status=st.integers(200, 599),
    headers=fields,
    content=contents,
    trailers=fields,
    informational=st.lists(informational, max_size=3).map(tuple),
)

messages = st.one_of(requests, responses)


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into random non-empty pieces (a strategy, for use inside ``@given`` via ``data()``)."""
    if len(data) <= 1:
        return [data] if data else []
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=min(len(data) - 1, 20), unique=True))
    points = sorted(cuts) + [len(data)]
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    return out
