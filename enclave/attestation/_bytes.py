"""The one bounds-checked byte cursor the evidence parsers share (TDX and SGX quotes, TPM structures, GPU reports).

A short read is an :class:`EvidenceFormatError` naming the structure, the field, the offset and what was left.
"""

from __future__ import annotations

from typing import Literal

from .errors import EvidenceFormatError


class ByteReader:
    """A cursor over ``data[pos:end]`` reading unsigned integers in one byte order (``"little"`` or ``"big"``)."""

    __slots__ = ("data", "end", "order", "pos", "what")

    def __init__(self, data: bytes, what: str, *, order: Literal["little", "big"] = "little", pos: int = 0,
                 end: int | None = None) -> None:
        self.data = data
        self.what = what
        self.order: Literal["little", "big"] = order
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise EvidenceFormatError(
                f"{self.what} truncated: {field} needs {n} bytes at offset {self.pos}, {self.end - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), self.order)

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return self.uint(2, field)

    def u32(self, field: str) -> int:
        return self.uint(4, field)

    def u64(self, field: str) -> int:
        return self.uint(8, field)

    def sized(self, field: str, limit: int) -> bytes:
        """A vector with a 2-byte length (TPM2B_*), refused when longer than ``limit``."""
        size = self.u16(f"{field}.size")
        if size > limit:
            raise EvidenceFormatError(f"{self.what}: {field} is {size} bytes, more than the {limit} the spec allows")
        return self.take(size, field)

    def done(self) -> None:
        """Refuse bytes left after the structure."""
        if self.pos != self.end:
            raise EvidenceFormatError(f"{self.what}: {self.end - self.pos} trailing bytes after the structure")
