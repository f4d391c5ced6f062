"""Binary HTTP decoders (RFC 9292 §3): :class:`BHTTPDecoder`, the incremental one, and :func:`decode`.

Theory of operation: :class:`BHTTPDecoder` is fed arbitrary byte slices (``receive_data``; ``b""`` means end of
input) and hands out events (``next_event``) as soon as they are complete: the head, pieces of content, trailers,
the end. :func:`decode` is that decoder run over a whole message, except that a whole known-length message (the
gateway's common case) is first tried by a straight-line reader; both read field sections and control data with
the same functions, so they accept the same bytes and name the same errors. Peer bytes raise only
:class:`DecodeError`, :class:`UnsupportedError` or :class:`LimitError`; once a decoder has failed, it stays failed.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from .._varint import decode_varint
from ..errors import DecodeError, LimitError, LocalProtocolError, OHTTPError, UnsupportedError
from ._messages import (
    _BAD_CONTROL,
    _BAD_VALUE,
    _DEFAULT_LIMITS,
    _NAME,
    _TOKEN,
    NEED_DATA,
    Data,
    EndOfMessage,
    Event,
    Field,
    InformationalResponse,
    Limits,
    Mode,
    Request,
    RequestHead,
    Response,
    ResponseHead,
    Trailers,
    _check_field,
    _decoded_request,
    _decoded_response,
    _NeedData,
)

__all__ = ["BHTTPDecoder", "decode", "decode_request", "decode_response"]


class _State(Enum):
    FRAMING = 0  #: expecting the framing indicator
    CONTROL = 1  #: request control data or a response status
    HEADERS = 2  #: a header section (after a request's control data or a status)
    CONTENT = 3  #: content (length or chunks)
    TRAILERS = 4  #: the trailer section
    PADDING = 5  #: only zeros may follow
    DONE = 6  #: EndOfMessage delivered
    ERROR = 7  #: failed; every call raises


class BHTTPDecoder:
    """Incremental BHTTP decoder (h11 style).

    ``receive_data(data)`` appends bytes (``b""`` ends input); ``next_event()`` returns the next complete event
    or :data:`NEED_DATA`. ``expect`` restricts the message to ``"request"`` or ``"response"``.

    Raises (from ``next_event``):
        DecodeError: malformed or truncated message, non-zero padding.
        UnsupportedError: unknown framing indicator.
        LimitError: a :class:`Limits` bound was exceeded.
    """

    def __init__(self, limits: Limits | None = None, *, expect: str | None = None) -> None:
        if expect not in (None, "request", "response"):
            raise LocalProtocolError(f"expect must be 'request' or 'response', not {expect!r}")
        self._limits = limits or _DEFAULT_LIMITS
        self._expect = expect
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._state = _State.FRAMING
        self._mode = Mode.KNOWN_LENGTH
        self._is_request = False
        self._control: tuple[bytes, bytes, bytes, bytes] | None = None
        self._status = 0
        self._informational = 0
        # Indeterminate field section in progress / content bookkeeping.
        self._fields: list[Field] = []
        self._section_bytes = 0
        self._content_left = -1  # known-length: bytes left; indeterminate: bytes left in current chunk
        self._content_total = 0
        self._content_chunks = 0
        self._started_section = False
        self._pending: list[Event] = []

    @property
    def is_request(self) -> bool:
        """Whether the message being decoded is a request (valid once the framing indicator is read)."""
        return self._is_request

    def receive_data(self, data: bytes) -> None:
        """Feed bytes; ``b""`` marks the end of input."""
        if self._state is _State.ERROR:
            raise DecodeError("decoder already failed")
        if self._eof:
            if data:
                raise LocalProtocolError("data received after end of input")
            return
        if not data:
            self._eof = True
        else:
            self._buf += data

    def next_event(self) -> Event | _NeedData:
        """The next event, or :data:`NEED_DATA`."""
        if self._state is _State.ERROR:
            raise DecodeError("decoder already failed")
        try:
            ev = self._next()
        except OHTTPError:
            self._state = _State.ERROR
            raise
        # Drop consumed bytes so buffers do not grow with the stream (O(n) over a long stream).
        if self._pos > 4096 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        return ev

    # -- internals ---------------------------------------------------------------------------------------------

    def _avail(self) -> int:
        return len(self._buf) - self._pos

    def _varint(self) -> int | None:
        out = decode_varint(self._buf, self._pos)
        if out is None:
            if self._eof:
                raise DecodeError(f"message truncated inside a length at offset {self._pos}")
            return None
        self._pos = out[1]
        return out[0]

    def _peek_eof_here(self) -> bool:
        return self._eof and self._pos >= len(self._buf)

    def _next(self) -> Event | _NeedData:
        if self._pending:
            return self._pending.pop(0)
        while True:
            st = self._state
            if st is _State.FRAMING:
                if self._peek_eof_here():
                    raise DecodeError("empty message")
                fi = self._varint()
                if fi is None:
                    return NEED_DATA
                if fi > 3:
                    raise UnsupportedError(f"unknown framing indicator {fi}")
                self._is_request = fi in (0, 2)
                self._mode = Mode.KNOWN_LENGTH if fi < 2 else Mode.INDETERMINATE_LENGTH
                if self._expect == "request" and not self._is_request:
                    raise DecodeError("expected a request, got a response")
                if self._expect == "response" and self._is_request:
                    raise DecodeError("expected a response, got a request")
                self._state = _State.CONTROL
            elif st is _State.CONTROL:
                if not self._control_data():
                    return NEED_DATA
            elif st is _State.HEADERS:
                section = self._section(truncatable=True)
                if section is None:
                    return NEED_DATA
                self._state = _State.CONTENT
                self._content_left = -1
                if self._is_request:
                    assert self._control is not None
                    return RequestHead(*self._control, section, self._mode)
                if self._status < 200:
                    self._informational += 1
                    self._state = _State.CONTROL
                    return InformationalResponse(status=self._status, headers=section)
                return ResponseHead(self._status, section, self._mode)
            elif st is _State.CONTENT:
                ev2 = self._content()
                if ev2 is not None:
                    return ev2
                if self._state is _State.CONTENT:
                    return NEED_DATA
            elif st is _State.TRAILERS:
                section = self._section(truncatable=True)
                if section is None:
                    return NEED_DATA
                self._state = _State.PADDING
                if section:
                    self._pending.append(EndOfMessage())
                    return Trailers(section)
                return EndOfMessage()
            elif st is _State.PADDING:
                # Padding is validated as it arrives, but EndOfMessage has already been delivered.
                rest = self._buf[self._pos :]
                if rest.count(0) != len(rest):
                    raise DecodeError("non-zero byte in padding")
                self._pos = len(self._buf)
                return NEED_DATA
            else:
                return NEED_DATA

    def _string(self, what: str) -> bytes | None:
        start = self._pos
        n = self._varint()
        if n is None:
            return None
        if self._avail() < n and self._eof:
            raise DecodeError(f"{what} truncated: {self._avail()} of {n} bytes")
        if n > self._limits.max_field_section_size:
            raise LimitError(f"{what} of {n} bytes exceeds {self._limits.max_field_section_size}")
        if self._avail() < n:
            self._pos = start
            return None
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def _control_data(self) -> bool:
        """Read a request's control data or a response's status; ``False`` means more data is needed."""
        start = self._pos
        if self._is_request:
            parts = []
            for what in ("method", "scheme", "authority", "path"):
                s = self._string(what)
                if s is None:
                    self._pos = start
                    return False
                parts.append(s)
            method, scheme, authority, path = parts
            _check_control(method, scheme, authority, path)
            self._control = (method, scheme, authority, path)
            self._state = _State.HEADERS
            return True
        if self._peek_eof_here():
            raise DecodeError("response truncated before its status")
        status = self._varint()
        if status is None:
            return False
        if not 100 <= status <= 599:
            raise DecodeError(f"invalid status {status}")
        if status < 200 and self._informational >= self._limits.max_informational:
            raise LimitError(f"more than {self._limits.max_informational} informational responses")
        self._status = status
        self._state = _State.HEADERS
        return True

    def _section(self, *, truncatable: bool) -> tuple[Field, ...] | None:
        """Read one field section; ``None`` means more data is needed.

        RFC 9292 §3.8: a message may end where a section would start (the section and all after it are empty),
        except after an informational status, which must have its header section.
        """
        lim = self._limits
        may_truncate = truncatable and (self._is_request or self._status >= 200)
        if self._mode is Mode.KNOWN_LENGTH:
            if may_truncate and self._peek_eof_here():
                return ()
            start = self._pos
            n = self._varint()
            if n is None:
                return None
            if n > lim.max_field_section_size:
                raise LimitError(f"field section of {n} bytes exceeds {lim.max_field_section_size}")
            if self._avail() < n:
                if self._eof:
                    raise DecodeError(f"field section truncated: {self._avail()} of {n} bytes")
                self._pos = start
                return None
            end = self._pos + n
            fields = _known_section(self._buf, self._pos, end, lim)
            self._pos = end
            return fields
        # Indeterminate: field lines until a zero name length.
        while True:
            if may_truncate and not self._started_section and self._peek_eof_here():
                return ()
            start = self._pos
            first = decode_varint(self._buf, self._pos)
            if first is None:
                if self._eof:
                    raise DecodeError("field section truncated")
                return None
            if first[0] == 0:
                self._pos = first[1]
                out = tuple(self._fields)
                self._fields = []
                self._section_bytes = 0
                self._started_section = False
                return out
            pos, f = _field_at(self._buf, start, None, lim.max_field_section_size)
            if pos < 0:
                if self._eof:
                    raise DecodeError("field line truncated")
                return None
            self._section_bytes += pos - start
            if self._section_bytes > lim.max_field_section_size:
                raise LimitError(f"field section exceeds {lim.max_field_section_size} bytes")
            self._pos = pos
            self._fields.append(f)
            self._started_section = True
            if len(self._fields) > lim.max_fields:
                raise LimitError(f"more than {lim.max_fields} fields")

    def _content(self) -> Event | None:
        lim = self._limits
        if self._mode is Mode.KNOWN_LENGTH:
            if self._content_left < 0:
                if self._peek_eof_here():
                    self._state = _State.TRAILERS
                    return None
                n = self._varint()
                if n is None:
                    return None
                if n > lim.max_content_size:
                    raise LimitError(f"content of {n} bytes exceeds {lim.max_content_size}")
                self._content_left = n
            if self._content_left == 0:
                self._state = _State.TRAILERS
                return None
            take = min(self._content_left, self._avail())
            if take == 0:
                if self._eof:
                    raise DecodeError(f"content truncated: {self._content_left} bytes missing")
                return None
            data = bytes(self._buf[self._pos : self._pos + take])
            self._pos += take
            self._content_left -= take
            return Data(data)
        # Indeterminate: chunks until a zero length.
        if self._content_left <= 0:
            if self._pos >= len(self._buf):
                if not self._eof:
                    return None  # between chunks with nothing buffered (every streamed piece): wait
                if self._content_left < 0:
                    # Content may be omitted only if nothing of it was sent.
                    self._state = _State.TRAILERS
                    return None
            n = self._varint()
            if n is None:
                return None
            if n == 0:
                self._state = _State.TRAILERS
                self._content_left = -1
                return None
            self._content_chunks += 1
            if self._content_chunks > lim.max_content_chunks:
                raise LimitError(f"more than {lim.max_content_chunks} content chunks")
            self._content_total += n
            if self._content_total > lim.max_content_size:
                raise LimitError(f"content exceeds {lim.max_content_size} bytes")
            self._content_left = n
        take = min(self._content_left, self._avail())
        if take == 0:
            if self._eof:
                raise DecodeError(f"content chunk truncated: {self._content_left} bytes missing")
            return None
        data = bytes(self._buf[self._pos : self._pos + take])
        self._pos += take
        self._content_left -= take
        return Data(data)


# Field sections and control data, read the same way by the incremental decoder and the whole-message reader.

_NO_FIELD: Final = (b"", b"")


def _check_control(method: bytes, scheme: bytes, authority: bytes, path: bytes) -> None:
    if not _TOKEN.match(method):
        raise DecodeError("invalid request method")
    for name, val in (("scheme", scheme), ("authority", authority), ("path", path)):
        if _BAD_CONTROL.search(val):
            raise DecodeError(f"invalid characters in {name}")


def _field_at(buf: bytes | bytearray, pos: int, end: int | None, max_len: int) -> tuple[int, Field]:
    """The field line at ``pos`` and the offset after it. Within a known-length section (``end`` set) anything
    that runs past ``end`` is an error; with ``end=None`` (indeterminate) a line that runs past the buffer
    returns ``(-1, ...)``: more data is needed."""
    limit = len(buf) if end is None else end
    # Lengths under 64 take one byte: read inline, the common case; anything else goes through _length_at.
    if pos < limit and buf[pos] < 0x40:
        n = buf[pos]
        pos += 1
    elif (got := _length_at(buf, pos, limit, end, "name")) is None:
        return -1, _NO_FIELD
    else:
        n, pos = got
    if n > max_len or pos + n > limit:
        if _overrun(n, pos, limit, end, max_len, "name"):
            return -1, _NO_FIELD
    name = buf[pos : pos + n]
    pos += n
    if pos < limit and buf[pos] < 0x40:
        n = buf[pos]
        pos += 1
    elif (got := _length_at(buf, pos, limit, end, "value")) is None:
        return -1, _NO_FIELD
    else:
        n, pos = got
    if n > max_len or pos + n > limit:
        if _overrun(n, pos, limit, end, max_len, "value"):
            return -1, _NO_FIELD
    value = buf[pos : pos + n]
    pos += n
    # Slices of bytes are bytes already (no copy); the decoder's bytearray gives bytearrays.
    f = (name if isinstance(name, bytes) else bytes(name), value if isinstance(value, bytes) else bytes(value))
    if not name:
        raise DecodeError("empty field name")
    if not _NAME.match(name) or _BAD_VALUE.search(value):
        _check_field(*f)  # raises, naming what is wrong
    return pos, f


def _length_at(buf: bytes | bytearray, pos: int, limit: int, end: int | None, what: str) -> tuple[int, int] | None:
    out = decode_varint(buf, pos)
    if out is None or out[1] > limit:
        if end is None:
            return None
        raise DecodeError(f"field {what} length overruns its section")
    return out


def _overrun(n: int, pos: int, limit: int, end: int | None, max_len: int, what: str) -> bool:
    # True: more data is needed (indeterminate section); otherwise raises.
    if n > max_len:
        raise LimitError(f"field {what} of {n} bytes exceeds {max_len}")
    if end is None:
        return True
    raise DecodeError(f"field {what} overruns its section")


def _known_section(buf: bytes | bytearray, pos: int, end: int, limits: Limits) -> tuple[Field, ...]:
    """The field lines of a known-length section that lies whole in ``buf[pos:end]``."""
    fields: list[Field] = []
    max_len = limits.max_field_section_size
    while pos < end:
        pos, f = _field_at(buf, pos, end, max_len)
        fields.append(f)
        if len(fields) > limits.max_fields:
            raise LimitError(f"more than {limits.max_fields} fields")
    return tuple(fields)


class _Fallback(Exception):
    """The fast path declines; the incremental decoder decides (and names the error)."""


def _fast_known_length(data: bytes, limits: Limits, expect: str | None) -> Request | Response | None:
    """Straight-line decoding of a whole known-length message, the gateway's common case.

    It accepts exactly what :class:`BHTTPDecoder` accepts for such messages (the test suite checks the two
    against each other); anything unusual (indeterminate framing, informational responses, truncation inside a
    section, any error) returns ``None`` so that the incremental decoder handles it and raises its precise error.
    """
    n = len(data)
    if n == 0 or data[0] > 1:
        return None
    is_request = data[0] == 0
    if expect is not None and is_request != (expect == "request"):
        return None
    max_section = limits.max_field_section_size
    pos = 1
    try:
        if is_request:
            control = []
            for _ in range(4):
                length, pos = _vi(data, pos)
                end = pos + length
                if end > n or length > max_section:
                    return None
                control.append(data[pos:end])
                pos = end
            method, scheme, authority, path = control
            _check_control(method, scheme, authority, path)
        else:
            status, pos = _vi(data, pos)
            if not 200 <= status <= 599:
                return None
        sections: list[tuple[Field, ...]] = []
        content = b""
        for part in range(3):  # header section, content, trailer section
            if pos == n:  # RFC 9292 §3.8 truncation: this part and all after it are empty
                sections.extend(() for _ in range(2 - len(sections)))
                break
            length, pos = _vi(data, pos)
            end = pos + length
            if end > n:
                return None
            if part == 1:
                if length > limits.max_content_size:
                    return None
                content = data[pos:end]
            else:
                if length > max_section:
                    return None
                sections.append(_known_section(data, pos, end, limits))
            pos = end
        if data.count(0, pos) != n - pos:  # only zero padding may follow
            return None
    except (_Fallback, OHTTPError):  # the incremental decoder will raise the same error, or need more data
        return None
    headers, trailers = sections
    if is_request:
        return _decoded_request(method, scheme, authority, path, headers, content, trailers)
    return _decoded_response(status, headers, content, trailers, ())


def _vi(data: bytes, pos: int) -> tuple[int, int]:
    # A varint for the fast path; running out of bytes hands the message to the incremental decoder.
    try:
        first = data[pos]
    except IndexError:
        raise _Fallback from None
    if first < 0x40:
        return first, pos + 1
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(data):
        raise _Fallback
    return int.from_bytes(data[pos:end], "big") & ((1 << (8 * size - 2)) - 1), end


def _run(data: bytes, limits: Limits | None, expect: str | None) -> Request | Response:
    fast = _fast_known_length(bytes(data), limits or _DEFAULT_LIMITS, expect)
    if fast is not None:
        return fast
    dec = BHTTPDecoder(limits, expect=expect)
    dec.receive_data(data)
    dec.receive_data(b"")
    head: RequestHead | ResponseHead | None = None
    infos: list[InformationalResponse] = []
    # Pieces joined once at the end: a known-length message has one, which join hands back without a copy.
    content: list[bytes] = []
    trailers: tuple[Field, ...] = ()
    while True:
        ev = dec.next_event()
        if isinstance(ev, (RequestHead, ResponseHead)):
            head = ev
        elif isinstance(ev, InformationalResponse):
            infos.append(ev)
        elif isinstance(ev, Data):
            content.append(ev.data)
        elif isinstance(ev, Trailers):
            trailers = ev.fields
        elif isinstance(ev, EndOfMessage):
            break
        else:  # NEED_DATA after EOF cannot happen: EOF either completes the message or raises.
            raise DecodeError("message incomplete")
    dec.next_event()  # validates padding
    if isinstance(head, RequestHead):
        return _decoded_request(head.method, head.scheme, head.authority, head.path, head.headers,
                                b"".join(content), trailers)
    assert isinstance(head, ResponseHead)
    return _decoded_response(head.status, head.headers, b"".join(content), trailers, tuple(infos))


def decode(data: bytes, limits: Limits | None = None) -> Request | Response:
    """Decode a whole BHTTP message of either framing.

    Raises:
        DecodeError, UnsupportedError, LimitError: the message is invalid (RFC 9292 §4).
    """
    return _run(data, limits, None)


def decode_request(data: bytes, limits: Limits | None = None) -> Request:
    """Decode a whole BHTTP request; a response is a :class:`DecodeError`."""
    out = _run(data, limits, "request")
    assert isinstance(out, Request)
    return out


def decode_response(data: bytes, limits: Limits | None = None) -> Response:
    """Decode a whole BHTTP response; a request is a :class:`DecodeError`."""
    out = _run(data, limits, "response")
    assert isinstance(out, Response)
    return out
