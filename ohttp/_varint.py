"""QUIC variable-length integers (RFC 9000 §16) as used by BHTTP and chunked OHTTP.

Decoders accept non-minimal encodings (RFC 9292 §3); encoders always write the minimal form.
"""

from __future__ import annotations

from typing import Final

from .errors import DecodeError, LocalProtocolError

MAX_VARINT: Final = (1 << 62) - 1


def encode_varint(value: int) -> bytes:
    """Encode ``value`` in the shortest QUIC varint form."""
    if value < 0x40:
        if value < 0:
            raise LocalProtocolError(f"varint cannot encode negative value {value}")
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value <= MAX_VARINT:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise LocalProtocolError(f"varint cannot encode {value}: above 2^62-1")


def varint_size(first_byte: int) -> int:
    """The total length of a varint given its first byte."""
    return 1 << (first_byte >> 6)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """Decode a varint at ``buf[pos:]``; ``None`` if the buffer ends inside it, else ``(value, new_pos)``."""
    if pos >= len(buf):
        return None
    first = buf[pos]
    size = 1 << (first >> 6)
    end = pos + size
    if end > len(buf):
        return None
    if size == 1:
        return first, end
    value = first & 0x3F
    for i in range(pos + 1, end):
        value = (value << 8) | buf[i]
    return value, end


def read_varint(buf: bytes | bytearray | memoryview, pos: int, what: str) -> tuple[int, int]:
    """Like :func:`decode_varint` but a truncated varint is a :class:`DecodeError` naming ``what``."""
    out = decode_varint(buf, pos)
    if out is None:
        raise DecodeError(f"{what} truncated: varint at offset {pos} of {len(buf)} bytes")
    return out
