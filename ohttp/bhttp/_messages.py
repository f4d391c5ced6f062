"""Binary HTTP's data model (RFC 9292): whole messages, decoder events, the framing mode and the decoder's limits.

No wire code here (encoders: ``_encode.py``, decoders: ``_decode.py``); field validation lives here because every
constructor and the decoder share it. ``__all__`` is re-exported by ``ohttp.bhttp`` and from there by ``ohttp``;
``Field`` and ``Event`` are type aliases for annotations, importable but not listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final, Iterable, Union

from ..errors import DecodeError, LocalProtocolError

__all__ = [
    "MEDIA_TYPE_BHTTP",
    "Mode",
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


def _first(fields: tuple[Field, ...], name: bytes) -> bytes | None:
    for n, v in fields:
        if n == name:
            return v
    return None


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
        return _first(self.headers, name)


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
        return _first(self.headers, name)

# Events of the incremental decoder (h11 style: plain frozen records; the decoder has validated their bytes).


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


# The decoders have already checked everything that __post_init__ would check again (method token, control
# characters, every field line, status range), so decoded messages are built without a second validation pass.


def _decoded_request(
    method: bytes, scheme: bytes, authority: bytes, path: bytes, headers: tuple[Field, ...], content: bytes,
    trailers: tuple[Field, ...],
) -> Request:
    req = object.__new__(Request)
    _set = object.__setattr__
    _set(req, "method", method)
    _set(req, "scheme", scheme)
    _set(req, "authority", authority)
    _set(req, "path", path)
    _set(req, "headers", headers)
    _set(req, "content", content)
    _set(req, "trailers", trailers)
    return req


def _decoded_response(
    status: int, headers: tuple[Field, ...], content: bytes, trailers: tuple[Field, ...],
    informational: tuple[InformationalResponse, ...],
) -> Response:
    resp = object.__new__(Response)
    _set = object.__setattr__
    _set(resp, "status", status)
    _set(resp, "headers", headers)
    _set(resp, "content", content)
    _set(resp, "trailers", trailers)
    _set(resp, "informational", informational)
    return resp
