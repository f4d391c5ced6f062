"""What one client may take of ``veil relay``: time, connections, requests in flight, and the buffer of a response
it does not read.

* Body deadline (:class:`BodyClock`): a request body must arrive within ``body_timeout`` seconds; every ``min_rate``
  bytes received add one second, up to ``max_body_time`` in all. A client dripping a byte every few seconds is cut
  off (408) after ``body_timeout``; a large body on a slow but real link gets the time its size needs.
* Rate (:class:`RateLimiter`): requests per address per minute, a fixed window forgotten when it ends.
* Per address: open connections (:class:`ClientLimits`, checked as each is accepted) and requests in flight
  (:class:`Admission`, with the rate and ``--max-concurrent``). An
  address is kept only as a keyed digest (a random key per process; an IPv6 address by its /64) in memory, never
  logged. Behind a TLS terminator every client has the terminator's address: ``trusted_proxies`` names the
  terminators whose ``X-Forwarded-For`` is believed (the rightmost address in it that is not itself trusted).
* Writes (:class:`WriteWatchdog`): a connection whose response bytes have waited unsent for ``write_timeout``
  seconds (the client stopped reading) is dropped, whether a handler is still writing to it or has finished.
* Idle connections and slow request heads are aiohttp's keep-alive timeout (``serve(idle_timeout=...)``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Callable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "::1"]`` -> networks; ``ValueError`` says which item is wrong."""
    out: list[Network] = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy takes an address or CIDR (e.g. 10.0.0.0/8), got {item!r}") from None
    return tuple(out)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass
class BodyClock:
    """The deadline of one request body: ``base`` seconds, one more per ``min_rate`` bytes, ``cap`` at most."""

    base: float
    min_rate: float
    cap: float
    start: float = 0.0
    received: int = 0

    def __post_init__(self) -> None:
        self.start = time.monotonic()

    def remaining(self, per_read: float) -> float:
        """Seconds the next read may wait: the per-read timeout or what is left of the deadline, if less."""
        extra = self.received / self.min_rate if self.min_rate > 0 else 0.0
        deadline = self.start + min(self.base + extra, self.cap)
        return max(0.0, min(per_read, deadline - time.monotonic()))


class RateLimiter:
    """Fixed-window counter per address (a keyed digest of it), in memory only, forgotten when the window ends."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = 0
        self._counts: dict[bytes | str, int] = {}

    def allow(self, addr: bytes | str, now: float | None = None) -> bool:
        window = int((time.monotonic() if now is None else now) // 60)
        if window != self._window:
            self._window = window
            self._counts = {}
        n = self._counts.get(addr, 0) + 1
        self._counts[addr] = n
        return n <= self.per_minute


class CappedCounts:
    """Counts per key, each at most ``cap``; a key whose count falls to zero is dropped (no address digest stays
    behind its last connection or request)."""

    __slots__ = ("cap", "_counts")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._counts: dict[bytes, int] = {}

    def take(self, key: bytes) -> bool:
        """One more for ``key``; False (and nothing taken) at the cap."""
        n = self._counts.get(key, 0)
        if n >= self.cap:
            return False
        self._counts[key] = n + 1
        return True

    def give(self, key: bytes) -> None:
        n = self._counts.get(key, 1) - 1
        if n <= 0:
            self._counts.pop(key, None)
        else:
            self._counts[key] = n


class ClientLimits:
    """Per-address connection and in-flight counts, under keyed digests of the addresses."""

    def __init__(self, *, max_connections: int, trusted_proxies: tuple[Network, ...] = (),
                 secret: bytes | None = None) -> None:
        self.max_connections = max_connections
        self.trusted = trusted_proxies
        self._secret = secret if secret is not None else os.urandom(32)
        #: counts every accepted connection (``--workers``: the ``veil_relay_worker_connections_total`` child)
        self.accepted: Callable[[], None] | None = None
        self._connections = CappedCounts(max_connections)
        self._open: dict[object, bytes] = {}  # connection (aiohttp's handler) -> its address key

    def key(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bytes:
        """A digest that stands for ``addr`` (for IPv6, its /64: one host usually has the whole prefix)."""
        if addr is None:
            raw = b""
        elif isinstance(addr, ipaddress.IPv6Address):
            raw = addr.packed[:8]
        else:
            raw = addr.packed
        return hashlib.blake2b(raw, key=self._secret, digest_size=16).digest()

    def _trusted(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return addr is not None and any(addr.version == n.version and addr in n for n in self.trusted)

    def client_address(self, request: web.BaseRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The peer's address; from ``X-Forwarded-For`` only when the peer is a trusted proxy."""
        peer = _ip(request.remote)
        if not self.trusted or not self._trusted(peer):
            return peer
        hops = [h for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
        for hop in reversed(hops):
            addr = _ip(hop)
            if addr is None:
                break  # unparsable: the chain cannot be followed further; count the request against the proxy
            if not self._trusted(addr):
                return addr
        return peer

    def client_key(self, request: web.BaseRequest) -> bytes:
        if self.trusted:  # X-Forwarded-For may name another client on every request
            return self.key(self.client_address(request))
        # the key the connection was counted under (no address is kept, and it goes with the connection): parsing and
        # hashing the address again for every request of a kept-alive connection was ~4 % of the CPU per request
        key = self._open.get(request.protocol)
        return key if key is not None else self.key(_ip(request.remote))

    # -- connections (hooked into the server by :func:`install`)

    def opened(self, conn: object, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection; ``False`` when its address already has ``max_connections`` open."""
        peer = transport.get_extra_info("peername")
        addr = _ip(peer[0] if isinstance(peer, (tuple, list)) and peer else None)
        if self.accepted is not None:
            self.accepted()
        if self._trusted(addr):
            return True  # a TLS terminator carries many clients; they are limited per request instead
        key = self.key(addr)
        if not self._count_connection(key):
            return False
        self._open[conn] = key
        return True

    def closed(self, conn: object) -> None:
        key = self._open.pop(conn, None)
        if key is not None:
            self._uncount_connection(key)

    def _count_connection(self, key: bytes) -> bool:
        return self._connections.take(key)

    def _uncount_connection(self, key: bytes) -> None:
        self._connections.give(key)

    def install(self, server: web.Server) -> None:
        """Count every connection ``server`` accepts; close at once those over their address's cap."""
        made: Callable[..., None] = server.connection_made
        lost: Callable[..., None] = server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            if not self.opened(handler, transport):
                transport.abort()

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self.closed(handler)
            lost(handler, exc)

        # aiohttp's Server calls these two for every connection of every site; there is no other per-connection
        # hook in front of the HTTP parser.
        setattr(server, "connection_made", connection_made)  # noqa: B010
        setattr(server, "connection_lost", connection_lost)  # noqa: B010


class Slots:
    """``--max-concurrent``: requests forwarded at once by this process (503 beyond)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def acquire(self) -> bool:
        if self.taken >= self.limit:
            return False
        self.taken += 1
        return True

    def release(self) -> None:
        self.taken -= 1


class Admission:
    """The per-request limits in the order :func:`.forward._admit` applies them: the rate, ``--max-concurrent``, the
    address's requests in flight. :meth:`admit` takes a slot and an in-flight unit (or nothing, and says which
    refusal); :meth:`release` gives both back. ``shared.SharedAdmission`` does the same over all workers under one
    lock."""

    def __init__(self, *, per_minute: int, max_concurrent: int, max_in_flight: int) -> None:
        self.limiter, self.slots = RateLimiter(per_minute), Slots(max_concurrent)
        self._in_flight = CappedCounts(max_in_flight)

    def admit(self, key: bytes) -> str | None:
        """None: admitted; else the refusal's outcome (``rate_limited``, ``busy``, ``address_busy``)."""
        if not self.limiter.allow(key):
            return "rate_limited"
        if not self.slots.acquire():
            return "busy"
        if not self._in_flight.take(key):
            self.slots.release()
            return "address_busy"
        return None

    def release(self, key: bytes) -> None:
        self._in_flight.give(key)
        self.slots.release()


class WriteWatchdog:
    """Drops connections whose unsent response bytes have waited ``timeout`` seconds (checked every second)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._since: dict[Any, float | None] = {}  # transport -> since when its buffer has not been empty
        self.dropped = 0

    def track(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and self.timeout > 0 and transport not in self._since:
            self._since[transport] = None

    def check(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for t, since in list(self._since.items()):
            try:
                pending = t.get_write_buffer_size()
            except (AttributeError, RuntimeError):
                pending = 0
            if pending == 0:
                if t.is_closing():
                    del self._since[t]
                else:
                    self._since[t] = None
            elif since is None:
                self._since[t] = now
            elif now - since >= self.timeout:
                self.dropped += 1
                del self._since[t]
                t.abort()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.check()


def serve(app: web.Application, host: str, port: int, *, shutdown_timeout: float, idle_timeout: float,
          limits: ClientLimits | None, reuse_port: bool = False, on_ready: Callable[[], None] | None = None) -> None:
    """``web.run_app`` (signals, graceful shutdown) with ``limits`` counting every accepted connection;
    ``reuse_port``: the listening socket is bound with SO_REUSEPORT (a worker of ``--workers``); ``on_ready`` is
    called once it listens."""
    loop = asyncio.new_event_loop()

    async def main() -> None:
        # access_log=None: the relay keeps no per-client logs. keepalive_timeout: an idle connection, or one whose
        # request head has not arrived whole, is closed after idle_timeout seconds.
        runner = web.AppRunner(app, handle_signals=True, access_log=None, shutdown_timeout=shutdown_timeout,
                               keepalive_timeout=idle_timeout)
        await runner.setup()
        try:
            if limits is not None and runner.server is not None:
                limits.install(runner.server)
            await web.TCPSite(runner, host, port, reuse_port=reuse_port or None).start()
            if on_ready is not None:
                on_ready()
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, web.GracefulExit):
            loop.run_until_complete(task)
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
