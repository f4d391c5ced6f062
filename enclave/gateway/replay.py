"""Replay protection (RFC 9458 §6.5): a Date window plus the ``enc`` values seen within it."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache
from datetime import datetime, timezone


def http_date(now: float | None = None) -> str:
    """An IMF-fixdate for ``now``."""
    return format_datetime(datetime.fromtimestamp(time.time() if now is None else now, timezone.utc), usegmt=True)


def parse_http_date(value: bytes) -> float | None:
    """Unix seconds of an HTTP date, or ``None`` when it cannot be parsed.

    Cached: every request sent within the same second carries the same ``Date``, and parsing costs microseconds.
    """
    return _parse_http_date(bytes(value))


@lru_cache(maxsize=256)
def _parse_http_date(value: bytes) -> float | None:
    try:
        dt = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class ReplayCache:
    """Remembers each ``enc`` for ``window`` seconds; a second sighting within it is a replay.

    Memory is bounded by request rate times window; ``max_entries`` is a hard cap past which the oldest entries
    are dropped early (a replay of those would then rely on the Date window alone). What is kept of an ``enc`` is a
    16-byte BLAKE2b digest, not the value: X-Wing's is 1,120 bytes, and the cap alone would otherwise allow about
    1.2 GB. A replay carries the same ``enc``, so the same digest; refusing a fresh request would take a second
    preimage of another's digest (2^128 work).
    """

    def __init__(self, window: float, max_entries: int = 1_000_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def seen(self, enc: bytes, now: float | None = None) -> bool:
        """Record ``enc``; ``True`` if it was already recorded within the window."""
        t = time.monotonic() if now is None else now
        key = hashlib.blake2b(enc, digest_size=16).digest()
        while self._seen:
            first, expiry = next(iter(self._seen.items()))
            if expiry > t and len(self._seen) < self.max_entries:
                break
            del self._seen[first]
        if key in self._seen:
            return True
        # Twice the window: a request dated at the window's far edge may be replayed until the other edge.
        self._seen[key] = t + 2 * self.window
        return False

    def __len__(self) -> int:
        return len(self._seen)
