"""Binary HTTP messages (RFC 9292): data model, encoders for both framings, and an incremental decoder.

Theory of operation: :class:`BHTTPDecoder` is the only parser. It is fed arbitrary byte slices
(``receive_data``; ``b""`` means end of input) and hands out events (``next_event``) as soon as they are
complete: the head, pieces of content, trailers, the end. :func:`decode` is that decoder run over a whole
message. The framing (known- or indeterminate-length) is an argument of the encoders, never part of a message.
Peer bytes raise only :class:`DecodeError`, :class:`UnsupportedError` or :class:`LimitError`; once a decoder
has failed, it stays failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, Iterable, Sequence, Union

from ._varint import decode_varint, encode_varint
from .errors import DecodeError, LimitError, LocalProtocolError, OHTTPError, UnsupportedError

__all__ = [
    "Mode",
    "Field",
    "Limits",
    "Request",
    "Response",
    "InformationalResponse",
    "RequestHead",
    "ResponseHead",
    "Data",
    "Trailers",
    "EndOfMessage",
    "NEED_DATA",
    "BHTTPDecoder",
    "decode",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "encode_response_head",
    "encode_request_head",
    "encode_chunk",
    "encode_end",
    "padded_size",
    "MEDIA_TYPE_BHTTP",
]

MEDIA_TYPE_BHTTP: Final = "message/bhttp"

#: One field line: lowercase name and value, as bytes.
Field = tuple[bytes, bytes]


class Mode(Enum):
    """The framing of a message (RFC 9292 §3.3)."""

    #: Sections and content are length-prefixed.
    KNOWN_LENGTH = 0
    #: Sections end with a zero; content is a sequence of non-empty chunks ended by a zero.
    INDETERMINATE_LENGTH = 1


class _Framing(IntEnum):
    KNOWN_REQUEST = 0
    KNOWN_RESPONSE = 1
    INDETERMINATE_REQUEST = 2
    INDETERMINATE_RESPONSE = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on what a decoder accepts from a peer; exceeding one raises :class:`LimitError`."""

    max_field_section_size: int = 64 * 1024
    max_fields: int = 256
    max_content_size: int = 64 * 1024 * 1024
    max_informational: int = 8
    #: indeterminate-length content chunks per message: each costs a decoding step however small it is, so a
    #: body of millions of one-byte chunks is refused after this many instead of keeping the caller busy
    max_content_chunks: int = 1 << 20


_DEFAULT_LIMITS: Final = Limits()

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+\Z")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
_BAD_CONTROL = re.compile(rb"[\x00-\x20\x7f]")


def _check_field(name: bytes, value: bytes) -> None:
    # RFC 9292 §3.6: HTTP/2 rules (RFC 9113 §8.2.1); names lowercase, no pseudo-fields.
    if not _NAME.match(name):
        raise DecodeError(f"invalid field name of {len(name)} bytes (must be a lowercase token)")
    if _BAD_VALUE.search(value):
        raise DecodeError(f"invalid value for field {name.decode('ascii')!r}")


#: Field lines already validated: a gateway sends the same few headers millions of times, and validation is
#: regex work. Bounded so that a stream of distinct values cannot grow it without limit.
_VALID_FIELDS: dict[tuple[bytes, bytes], None] = {}
_VALID_FIELDS_MAX: Final = 4096


def _fields(items: Iterable[tuple[bytes | str, bytes | str]]) -> tuple[Field, ...]:
    out = []
    for n, v in items:
        nb = n.encode("latin-1") if isinstance(n, str) else bytes(n)
        vb = v.encode("latin-1") if isinstance(v, str) else bytes(v)
        pair = (nb, vb)
        if pair not in _VALID_FIELDS:
            try:
                _check_field(nb, vb)
            except DecodeError as exc:
                raise LocalProtocolError(str(exc)) from None
            if len(_VALID_FIELDS) < _VALID_FIELDS_MAX:
                _VALID_FIELDS[pair] = None
        out.append(pair)
    return tuple(out)


def _b(v: bytes | str) -> bytes:
    if type(v) is bytes:
        return v  # immutable already: no copy (a 64 KiB body must not be copied per layer)
    return v.encode("latin-1") if isinstance(v, str) else bytes(v)


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A whole HTTP request. Strings are converted to bytes; invalid fields cannot be constructed."""

    method: bytes
    scheme: bytes = b"https"
    authority: bytes = b""
    path: bytes = b"/"
    headers: tuple[Field, ...] = ()
    content: bytes = b""
    trailers: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", _b(self.method))
        object.__setattr__(self, "scheme", _b(self.scheme))
        object.__setattr__(self, "authority", _b(self.authority))
        object.__setattr__(self, "path", _b(self.path))
        object.__setattr__(self, "headers", _fields(self.headers))
        object.__setattr__(self, "trailers", _fields(self.trailers))
        object.__setattr__(self, "content", _b(self.content))
        if not _TOKEN.match(self.method):
            raise LocalProtocolError("method must be a non-empty token")
        for what in ("scheme", "authority", "path"):
            if _BAD_CONTROL.search(getattr(self, what)):
                raise LocalProtocolError(f"{what} contains control characters or spaces")

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class InformationalResponse:
    """A 1xx response that precedes the final one."""

    status: int
    headers: tuple[Field, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _fields(self.headers))
        if not 100 <= self.status <= 199:
            raise LocalProtocolError(f"informational status {self.status} not in 100..199")


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A whole HTTP response with any informational responses before it."""

    status: int
    headers: tuple[Field, ...] = ()
    content: bytes = b""
    trailers: tuple[Field, ...] = ()
    informational: tuple[InformationalResponse, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", _fields(self.headers))
        object.__setattr__(self, "trailers", _fields(self.trailers))
        object.__setattr__(self, "content", _b(self.content))
        if not 200 <= self.status <= 599:
            raise LocalProtocolError(f"final status {self.status} not in 200..599")

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def _enc_bytes(b: bytes) -> bytes:
    return encode_varint(len(b)) + b


def _enc_fields_body(fields: Sequence[Field]) -> bytes:
    parts = []
    for n, v in fields:
        ln, lv = len(n), len(v)
        # Lengths under 64 are one byte; writing those inline keeps the common case out of encode_varint.
        parts.append(bytes((ln,)) if ln < 64 else encode_varint(ln))
        parts.append(n)
        parts.append(bytes((lv,)) if lv < 64 else encode_varint(lv))
        parts.append(v)
    return b"".join(parts)


def _enc_section(fields: Sequence[Field], mode: Mode) -> bytes:
    body = _enc_fields_body(fields)
    if mode is Mode.KNOWN_LENGTH:
        return encode_varint(len(body)) + body
    return body + b"\x00"


def _enc_control(req: Request) -> bytes:
    return _enc_bytes(req.method) + _enc_bytes(req.scheme) + _enc_bytes(req.authority) + _enc_bytes(req.path)


def encode_request_head(req: Request, mode: Mode = Mode.INDETERMINATE_LENGTH) -> bytes:
    """Framing indicator, control data and header section; follow with content and :func:`encode_end`."""
    fi = _Framing.KNOWN_REQUEST if mode is Mode.KNOWN_LENGTH else _Framing.INDETERMINATE_REQUEST
    return bytes((fi,)) + _enc_control(req) + _enc_section(req.headers, mode)


def encode_response_head(
    status: int,
    headers: Iterable[tuple[bytes | str, bytes | str]] = (),
    informational: Sequence[InformationalResponse] = (),
) -> bytes:
    """The start of an indeterminate-length response: framing, 1xx responses, status and header section.

    Follow it with :func:`encode_chunk` per piece of content and :func:`encode_end`; this is how an SSE stream is
    carried event by event.
    """
    if not 200 <= status <= 599:
        raise LocalProtocolError(f"final status {status} not in 200..599")
    out = bytearray((_Framing.INDETERMINATE_RESPONSE,))
    for info in informational:
        out += encode_varint(info.status) + _enc_section(info.headers, Mode.INDETERMINATE_LENGTH)
    out += encode_varint(status) + _enc_section(_fields(headers), Mode.INDETERMINATE_LENGTH)
    return bytes(out)


def encode_chunk(data: bytes) -> bytes:
    """One indeterminate-length content chunk; chunks cannot be empty (a zero ends the content)."""
    if not data:
        raise LocalProtocolError("an indeterminate-length content chunk cannot be empty")
    return encode_varint(len(data)) + data


def encode_end(trailers: Iterable[tuple[bytes | str, bytes | str]] = (), padding: int = 0) -> bytes:
    """End an indeterminate-length message: content terminator, trailer section, padding."""
    return b"\x00" + _enc_section(_fields(trailers), Mode.INDETERMINATE_LENGTH) + bytes(padding)


def padded_size(length: int, quantum: int) -> int:
    """The size a message of ``length`` bytes is padded to (RFC 9292 §3.8 zero padding): the next multiple of
    ``quantum``, or for long messages of Padmé's step ``2**(E - floor(log2 E) - 1)`` with ``E = floor(log2 length)``
    when that is larger (at most about 12% more bytes, and a size reveals O(log log length) bits). ``quantum`` of 0
    is no padding. ``proxy/web/bhttp.js`` has the same function: browser and Python clients pad alike."""
    if quantum <= 0 or length <= 0:
        return max(length, 0)
    e = length.bit_length() - 1
    step = max(quantum, 1 << max(0, e - e.bit_length()))
    return -(-length // step) * step


def _tail_parts(content: bytes, trailers: Sequence[Field], mode: Mode, truncate: bool) -> list[bytes]:
    """Content and trailer section as parts to join once (no copy of a large content until the final join).

    RFC 9292 §3.8: with ``truncate``, empty trailing sections are omitted.
    """
    tsec = _enc_section(trailers, mode)
    if not content:
        cparts = [b"\x00"]
    elif mode is Mode.KNOWN_LENGTH:
        cparts = [encode_varint(len(content)), content]
    else:
        cparts = [encode_varint(len(content)), content, b"\x00"]
    if truncate and tsec == b"\x00":
        return cparts if content else []
    cparts.append(tsec)
    return cparts


def _encode(head: list[bytes], headers: Sequence[Field], content: bytes, trailers: Sequence[Field], mode: Mode,
            truncate: bool, padding: int) -> bytes:
    section = _enc_section(headers, mode)
    tail = _tail_parts(content, trailers, mode, truncate)
    if not (truncate and not tail and section == b"\x00"):
        head.append(section)
    head.extend(tail)
    if padding:
        head.append(bytes(padding))
    return b"".join(head)


def encode_request(
    req: Request, mode: Mode = Mode.KNOWN_LENGTH, *, truncate: bool = False, padding: int = 0
) -> bytes:
    """Encode a whole request. ``truncate`` omits empty trailing sections; ``padding`` appends zeros."""
    fi = _Framing.KNOWN_REQUEST if mode is Mode.KNOWN_LENGTH else _Framing.INDETERMINATE_REQUEST
    head = [bytes((fi,)), _enc_control(req)]
    return _encode(head, req.headers, req.content, req.trailers, mode, truncate, padding)


def encode_response(
    resp: Response, mode: Mode = Mode.KNOWN_LENGTH, *, truncate: bool = False, padding: int = 0
) -> bytes:
    """Encode a whole response, informational responses first."""
    fi = _Framing.KNOWN_RESPONSE if mode is Mode.KNOWN_LENGTH else _Framing.INDETERMINATE_RESPONSE
    head = [bytes((fi,))]
    for info in resp.informational:
        head.append(encode_varint(info.status))
        head.append(_enc_section(info.headers, mode))
    head.append(encode_varint(resp.status))
    return _encode(head, resp.headers, resp.content, resp.trailers, mode, truncate, padding)


# ---------------------------------------------------------------------------------------------------------------
# Decoding events


@dataclass(frozen=True, slots=True)
class RequestHead:
    """Control data and header section of a request."""

    method: bytes
    scheme: bytes
    authority: bytes
    path: bytes
    headers: tuple[Field, ...]
    mode: Mode


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """Final status and header section of a response (informational ones come as their own events)."""

    status: int
    headers: tuple[Field, ...]
    mode: Mode


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of content, in order; boundaries carry no meaning."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Trailers:
    """The trailer section (emitted only when non-empty)."""

    fields: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The message is complete; only zero padding may follow."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`BHTTPDecoder.next_event` when more bytes are needed.
NEED_DATA: Final = _NeedData()

Event = Union[RequestHead, ResponseHead, InformationalResponse, Data, Trailers, EndOfMessage]


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
                ev = self._control_data()
                if ev is not None:
                    return ev
                if self._state is _State.CONTROL:
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

    def _control_data(self) -> Event | None:
        start = self._pos
        if self._is_request:
            parts = []
            for what in ("method", "scheme", "authority", "path"):
                s = self._string(what)
                if s is None:
                    self._pos = start
                    return None
                parts.append(s)
            method, scheme, authority, path = parts
            if not _TOKEN.match(method):
                raise DecodeError("invalid request method")
            for name, val in (("scheme", scheme), ("authority", authority), ("path", path)):
                if _BAD_CONTROL.search(val):
                    raise DecodeError(f"invalid characters in {name}")
            self._control = (method, scheme, authority, path)
            self._state = _State.HEADERS
            return None
        if self._peek_eof_here():
            raise DecodeError("response truncated before its status")
        status = self._varint()
        if status is None:
            return None
        if not 100 <= status <= 599:
            raise DecodeError(f"invalid status {status}")
        if status < 200 and self._informational >= self._limits.max_informational:
            raise LimitError(f"more than {self._limits.max_informational} informational responses")
        self._status = status
        self._state = _State.HEADERS
        return None

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
            fields: list[Field] = []
            pos = self._pos
            while pos < end:
                pos, f = self._field_at(pos, end)
                fields.append(f)
                self._count_field(len(fields))
            self._pos = end
            return tuple(fields)
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
            pos, f = self._field_at(start, None)
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
            self._count_field(len(self._fields))

    def _count_field(self, n: int) -> None:
        if n > self._limits.max_fields:
            raise LimitError(f"more than {self._limits.max_fields} fields")

    def _field_at(self, pos: int, end: int | None) -> tuple[int, Field]:
        """Parse a field line at ``pos``; with ``end=None`` returns ``(-1, ...)`` when incomplete."""
        buf = self._buf
        limit = len(buf) if end is None else end
        parts: list[bytes] = []
        for what in ("name", "value"):
            out = decode_varint(buf, pos)
            if out is None or out[1] > limit:
                if end is None:
                    return -1, (b"", b"")
                raise DecodeError(f"field {what} length overruns its section")
            n, pos = out
            if n > self._limits.max_field_section_size:
                raise LimitError(f"field {what} of {n} bytes exceeds {self._limits.max_field_section_size}")
            if pos + n > limit:
                if end is None:
                    return -1, (b"", b"")
                raise DecodeError(f"field {what} overruns its section")
            parts.append(bytes(buf[pos : pos + n]))
            pos += n
        name, value = parts
        if not name:
            raise DecodeError("empty field name")
        _check_field(name, value)
        return pos, (name, value)

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
            if self._content_left < 0 and self._peek_eof_here():
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
            if not _TOKEN.match(method) or any(_BAD_CONTROL.search(c) for c in (scheme, authority, path)):
                return None
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
                fields = []
                while pos < end:
                    nl, pos = _vi(data, pos)
                    name = data[pos : pos + nl]
                    pos += nl
                    vl, pos = _vi(data, pos)
                    value = data[pos : pos + vl]
                    pos += vl
                    if pos > end or not _NAME.match(name) or _BAD_VALUE.search(value):
                        return None
                    fields.append((name, value))
                if len(fields) > limits.max_fields:
                    return None
                sections.append(tuple(fields))
            pos = end
        if data.count(0, pos) != n - pos:  # only zero padding may follow
            return None
    except _Fallback:
        return None
    headers, trailers = sections
    _set = object.__setattr__
    if is_request:
        req = object.__new__(Request)
        _set(req, "method", method)
        _set(req, "scheme", scheme)
        _set(req, "authority", authority)
        _set(req, "path", path)
        _set(req, "headers", headers)
        _set(req, "content", content)
        _set(req, "trailers", trailers)
        return req
    resp = object.__new__(Response)
    _set(resp, "status", status)
    _set(resp, "headers", headers)
    _set(resp, "content", content)
    _set(resp, "trailers", trailers)
    _set(resp, "informational", ())
    return resp


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
    ev = dec.next_event()  # validates padding
    # The decoder has already checked everything that __post_init__ would check again (method token, control
    # characters, every field line, status range), so the message is built without a second validation pass.
    if isinstance(head, RequestHead):
        req = object.__new__(Request)
        _set = object.__setattr__
        _set(req, "method", head.method)
        _set(req, "scheme", head.scheme)
        _set(req, "authority", head.authority)
        _set(req, "path", head.path)
        _set(req, "headers", head.headers)
        _set(req, "content", b"".join(content))
        _set(req, "trailers", trailers)
        return req
    assert isinstance(head, ResponseHead)
    resp = object.__new__(Response)
    _set = object.__setattr__
    _set(resp, "status", head.status)
    _set(resp, "headers", head.headers)
    _set(resp, "content", b"".join(content))
    _set(resp, "trailers", trailers)
    _set(resp, "informational", tuple(infos))
    return resp


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
