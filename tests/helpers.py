"""Shared helpers for the test suite: where the protocol vectors live, and small byte utilities.

The vectors are never copied into the repository; they are read from ``$VEIL_SHARED_DATA`` (default: the ``shared``
folder beside the checkout, ``<repo>/../shared/data``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """The shared data folder (``$VEIL_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    return Path(os.environ.get("VEIL_SHARED_DATA", str(REPO.parent / "shared" / "data")))


def vectors_dir() -> Path:
    """The folder of protocol test vectors."""
    return shared_data() / "vectors"


@cache
def _load(name: str) -> str:
    path = vectors_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"test vector file {path} is missing (set VEIL_SHARED_DATA)")
    return path.read_text(encoding="utf-8")


def load_vector(name: str) -> Any:
    """A fresh parse of one JSON vector file (callers may mutate it)."""
    return json.loads(_load(name))


def h(hex_str: str) -> bytes:
    """Hex to bytes."""
    return bytes.fromhex(hex_str)


def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with bit number ``bit`` (0 = most significant bit of byte 0) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def all_bit_flips(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every single-bit flip of ``data`` as ``(bit index, flipped bytes)``."""
    for bit in range(len(data) * 8):
        yield bit, flip_bit(data, bit)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the sorted, de-duplicated positions ``cuts`` (empty pieces dropped)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out = []
    prev = 0
    for p in points + [len(data)]:
        if p > prev:
            out.append(data[prev:p])
        prev = p
    return out
