"""The per-address limits of ``veil relay --workers N``, shared by the worker processes through one memory-mapped
file, so that a client gets the same caps however the kernel spreads its connections (SO_REUSEPORT) over them.

What is shared, and how exactly it holds:

* ``--rate-per-minute`` (a rate), ``--max-in-flight-per-address`` and ``--max-connections-per-address`` (counts of
  things open now) and ``--max-concurrent`` (all requests in flight): every check is on the sum over all workers,
  with the same cap as one process has. A check and its increment are done under one ``flock`` of the file, so two
  workers never both take the last unit of a cap. A request's three checks (rate, all in flight, the address's
  in flight) and their increments are one ``flock`` (:class:`SharedAdmission`); a connection's check is another.
* Addresses are not stored. Each count is a count-min sketch: two rows of :data:`BUCKETS` counters, an address's
  keyed digest (the same random key in every worker, made by the supervisor) picks one counter per row, and the
  count of an address is the smaller of its two. A counter may also hold other addresses' counts (a collision),
  never less than the address's own: a client never gets more than a cap; a different address is refused early
  only when both of its counters collide with addresses near a cap (probability about ``(k / BUCKETS) ** 2`` for
  ``k`` such addresses), and an attacker cannot aim at a victim's counters without the key.
* Each worker writes only its own region of the file (so its counts can be cleared when it dies, by the supervisor,
  before it is restarted) and reads all of them. The rate window is a fixed minute of ``CLOCK_MONOTONIC``
  (system-wide); a region whose window is older counts as zero.

One process (``--workers 1``) keeps the exact dictionaries of :mod:`.limits`; this module is only for workers.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import time
from dataclasses import dataclass
from typing import Final

from .limits import ClientLimits, Network

MAGIC: Final = b"VEILRLY1"
BUCKETS: Final = 1 << 15
ROWS: Final = 2
_HEADER_BYTES: Final = 64  # magic (8), workers (4), buckets (4), key (32), spare
_SECRET: Final = slice(16, 48)
# A worker's region, in 4-byte counters: [rate window, requests in flight (all addresses), spare, spare], then the
# rate, connection and in-flight sketches, ROWS x BUCKETS each.
_REGION_HEAD: Final = 4
_RATE: Final = _REGION_HEAD
_CONN: Final = _RATE + ROWS * BUCKETS
_FLIGHT: Final = _CONN + ROWS * BUCKETS
_REGION: Final = _FLIGHT + ROWS * BUCKETS
#: The environment variable that makes a ``veil relay`` process a worker (set by the supervisor only).
WORKER_ENV: Final = "_VEIL_RELAY_WORKER"


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells one worker: its index, the shared file, the fd to say "ready" on."""

    index: int
    shared_path: str
    ready_fd: int

    def to_env(self) -> str:
        return json.dumps({"index": self.index, "shared_path": self.shared_path, "ready_fd": self.ready_fd})

    @classmethod
    def from_env(cls) -> WorkerSpec | None:
        raw = os.environ.get(WORKER_ENV)
        if not raw:
            return None
        d = json.loads(raw)
        return cls(index=int(d["index"]), shared_path=str(d["shared_path"]), ready_fd=int(d["ready_fd"]))


def create_table(path: str, workers: int) -> None:
    """The supervisor's part: a zeroed file for ``workers`` regions, with a fresh key (mode 0600)."""
    size = _HEADER_BYTES + workers * _REGION * 4
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        header = MAGIC + workers.to_bytes(4, "little") + BUCKETS.to_bytes(4, "little") + os.urandom(32)
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)


def clear_region(path: str, index: int) -> None:
    """Forget what worker ``index`` counted (it died: its connections and requests are gone with it)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, bytes(_REGION * 4), _HEADER_BYTES + index * _REGION * 4)
    finally:
        os.close(fd)  # releases the lock


class SharedTable:
    """One worker's view of the file: its own region to write, every region to read."""

    def __init__(self, path: str, index: int) -> None:
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        self._map = mmap.mmap(self._fd, size)
        if self._map[:8] != MAGIC:
            raise ValueError(f"{path} is not a relay limits table")
        self.workers = int.from_bytes(self._map[8:12], "little")
        if int.from_bytes(self._map[12:16], "little") != BUCKETS or not 0 <= index < self.workers:
            raise ValueError(f"{path}: wrong table layout or worker index {index}")
        self.secret = bytes(self._map[_SECRET])
        self.index = index
        self._c = memoryview(self._map)[_HEADER_BYTES:].cast("i")
        self._own = index * _REGION
        self._bases = tuple(w * _REGION for w in range(self.workers))
        with self.locked():
            self._c[self._own:self._own + _REGION] = memoryview(bytes(_REGION * 4)).cast("i")

    def locked(self) -> _Lock:
        return _Lock(self._fd)

    @staticmethod
    def buckets(key: bytes) -> tuple[int, int]:
        """The counter of ``key`` (a keyed digest) in each row."""
        return int.from_bytes(key[0:4], "little") % BUCKETS, BUCKETS + int.from_bytes(key[4:8], "little") % BUCKETS

    def count(self, table: int, b0: int, b1: int) -> int:
        """The count-min estimate over all workers (never below the true count)."""
        c = self._c
        s0 = s1 = 0
        for base in self._bases:
            s0 += c[base + table + b0]
            s1 += c[base + table + b1]
        return s0 if s0 < s1 else s1

    def add(self, table: int, b0: int, b1: int, n: int) -> None:
        c, own = self._c, self._own + table
        c[own + b0] += n
        c[own + b1] += n

    def take(self, table: int, key: bytes, cap: int) -> bool:
        """One unit of ``key`` in sketch ``table`` if its count over all workers is under ``cap`` (checked and taken
        under the lock)."""
        b0, b1 = SharedTable.buckets(key)
        with self.locked():
            if self.count(table, b0, b1) >= cap:
                return False
            self.add(table, b0, b1, 1)
        return True

    def give(self, table: int, key: bytes) -> None:
        """Give back a unit of ``take``: lowering a count needs no lock (a concurrent reader sees it a little high)."""
        b0, b1 = SharedTable.buckets(key)
        self.add(table, b0, b1, -1)

    # -- the rate window

    def rate(self, b0: int, b1: int, window: int) -> int:
        """This window's count over all workers; a region still on an older window counts nothing."""
        c = self._c
        s0 = s1 = 0
        for base in self._bases:
            if c[base] == window:
                s0 += c[base + _RATE + b0]
                s1 += c[base + _RATE + b1]
        return s0 if s0 < s1 else s1

    def count_request(self, b0: int, b1: int, window: int) -> int:
        """Count one request in ``window`` (a refused request counts too, as in one process) and return the window's
        count over all workers; the caller holds the lock."""
        self.start_window(window)
        self.add(_RATE, b0, b1, 1)
        return self.rate(b0, b1, window)

    def start_window(self, window: int) -> None:
        own = self._own
        if self._c[own] != window:
            self._c[own + _RATE:own + _CONN] = memoryview(bytes(ROWS * BUCKETS * 4)).cast("i")
            self._c[own] = window

    # -- all requests in flight

    def in_flight(self) -> int:
        c = self._c
        return sum(c[base + 1] for base in self._bases)

    def add_in_flight(self, n: int) -> None:
        self._c[self._own + 1] += n

    def close(self) -> None:
        self._c.release()
        self._map.close()
        os.close(self._fd)


class _Lock:
    """``flock`` of the whole file for one check-and-increment (about 1 µs for the pair of system calls)."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)


class SharedClientLimits(ClientLimits):
    """:class:`.limits.ClientLimits` (the address key, the connection count) with its counts in the shared table; keys
    with the table's shared key. Requests in flight are :class:`SharedAdmission`'s."""

    def __init__(self, table: SharedTable, *, max_connections: int, trusted_proxies: tuple[Network, ...] = ()) -> None:
        super().__init__(max_connections=max_connections, trusted_proxies=trusted_proxies, secret=table.secret)
        self.table = table

    def _count_connection(self, key: bytes) -> bool:
        return self.table.take(_CONN, key, self.max_connections)

    def _uncount_connection(self, key: bytes) -> None:
        self.table.give(_CONN, key)


class SharedAdmission:
    """:class:`.limits.Admission` over all workers: the rate, ``--max-concurrent`` and the address's in-flight checks
    of one request, and their increments, under one ``flock`` (one pair of system calls per request, not three)."""

    def __init__(self, table: SharedTable, *, per_minute: int, max_concurrent: int, max_in_flight: int) -> None:
        self.table = table
        self.per_minute, self.max_concurrent, self.max_in_flight = per_minute, max_concurrent, max_in_flight

    def admit(self, key: bytes, now: float | None = None) -> str | None:
        """None: admitted (a slot and an in-flight unit taken); else the refusal's outcome, as in one process."""
        window = int((time.monotonic() if now is None else now) // 60)
        b0, b1 = SharedTable.buckets(key)
        t = self.table
        with t.locked():
            if t.count_request(b0, b1, window) > self.per_minute:
                return "rate_limited"
            if t.in_flight() >= self.max_concurrent:
                return "busy"
            if t.count(_FLIGHT, b0, b1) >= self.max_in_flight:
                return "address_busy"
            t.add_in_flight(1)
            t.add(_FLIGHT, b0, b1, 1)
        return None

    def release(self, key: bytes) -> None:
        """Lowering counts needs no lock: a concurrent reader sees them a little high for a moment."""
        b0, b1 = SharedTable.buckets(key)
        t = self.table
        t.add(_FLIGHT, b0, b1, -1)
        t.add_in_flight(-1)
