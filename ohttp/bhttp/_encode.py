"""Binary HTTP encoders (RFC 9292 §3): whole messages in either framing, and the pieces of an indeterminate-length
message written as it is produced (head, content chunks, end). The mode is an argument, never part of a message.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from .._varint import encode_varint
from ..errors import LocalProtocolError
from ._messages import Field, InformationalResponse, Mode, Request, Response, _fields, _Framing

__all__ = [
    "encode_request",
    "encode_response",
    "encode_request_head",
    "encode_response_head",
    "encode_chunk",
    "encode_end",
    "padded_size",
]


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
