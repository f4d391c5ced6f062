"""Replicated gateways behind one relay name: ``--gateway NAME=URL1,URL2,...``.

* Selection: least outstanding requests (a streamed response counts until its last byte), ties taken in turn.
* Health: every ``health_interval`` seconds each replica's ``/healthz`` is fetched; a replica that answers
  anything but 200, or cannot be reached, leaves the rotation until it answers 200 again. A request that cannot
  connect takes its replica out at once too.
* Retries: only a request that failed *before any byte of it was sent* (the connection was refused, timed out or
  failed its TLS handshake) goes to another replica. Once a request is on the wire it is never sent again: the
  gateway may have acted on it.
* Keys and evidence: fetched from one healthy replica; a replica set shares one key set (the key broker's, or the
  same ``--key-file``), so any replica's keys are every replica's. When they differ the relay logs a warning and
  serves the first healthy replica's.

When every replica is out of rotation, requests still try them all (the health view may be stale), so a relay
never refuses on a guess.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Final

import aiohttp

import hop

if TYPE_CHECKING:
    from .metrics import Inc

log = logging.getLogger("veil.relay")

WELL_KNOWN: Final = "/.well-known/ohttp-gateway"


def split_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"URL1,URL2"`` or ``["URL1", "URL2"]`` -> ``("URL1", "URL2")`` (blanks dropped)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(u.strip() for u in items if u.strip())


def base_of(gateway_url: str) -> str:
    """The gateway's origin and prefix: its URL without ``/.well-known/ohttp-gateway``."""
    return gateway_url[: -len(WELL_KNOWN)] if gateway_url.endswith(WELL_KNOWN) else gateway_url.rstrip("/")


@dataclass(eq=False)
class Replica:
    """One gateway of a replica set."""

    url: str  # the gateway's /.well-known/ohttp-gateway
    index: int
    healthy: bool = True  # in rotation; optimistic until the first check says otherwise
    outstanding: int = 0
    checked_at: float = 0.0
    #: told 1.0 / 0.0 when the replica enters / leaves the rotation (the gauge, with --workers)
    on_change: Callable[[float], None] | None = field(default=None, repr=False)
    _target: tuple[str, hop.Origin, str] | None = field(default=None, init=False, repr=False)

    def target(self) -> tuple[hop.Origin, str]:
        """Where requests go: the URL's origin and path (kept until the URL changes, as a vsock bridge's does)."""
        cached = self._target
        if cached is None or cached[0] != self.url:
            cached = self._target = (self.url, *hop.target_of(self.url))
        return cached[1], cached[2]

    @property
    def healthz_url(self) -> str:
        return base_of(self.url) + "/healthz"

    def up(self) -> float:
        """1.0 while in rotation (the ``veil_relay_replica_up`` gauge)."""
        return 1.0 if self.healthy else 0.0

    def release(self) -> None:
        """The request sent to this replica is over (its response was read, or abandoned)."""
        self.outstanding -= 1

    def mark(self, healthy: bool, why: str, name: str) -> None:
        if healthy != self.healthy:
            if healthy:
                log.info("gateway %s replica %d is back in rotation", name, self.index)
            else:
                log.warning("gateway %s replica %d is out of rotation: %s", name, self.index, why)
            if self.on_change is not None:
                self.on_change(1.0 if healthy else 0.0)
        self.healthy = healthy
        self.checked_at = time.monotonic()


class ReplicaPool:
    """The replicas of one gateway name."""

    def __init__(self, name: str, urls: Iterable[str]) -> None:
        self.name = name
        self.replicas = [Replica(url, i) for i, url in enumerate(urls)]
        if not self.replicas:
            raise ValueError(f"gateway {name!r} has no URL")
        self._turn = 0
        #: the replica whose keys the relay serves (its evidence is served with them)
        self.keys_from: Replica | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def url(self) -> str:
        """The first replica's URL (the gateway, when there is only one)."""
        return self.replicas[0].url

    def pick(self, exclude: set[Replica] | frozenset[Replica] = frozenset()) -> Replica | None:
        """The healthy replica with the fewest outstanding requests (ties in turn); ``None`` when all are tried."""
        reps = self.replicas
        if len(reps) == 1:
            return None if reps[0] in exclude else reps[0]
        candidates = [r for r in reps if r.healthy and r not in exclude]
        if not candidates:
            candidates = [r for r in reps if r not in exclude]
            if not candidates:
                return None
        n = len(reps)
        turn = self._turn
        self._turn = (turn + 1) % n
        return min(candidates, key=lambda r: (r.outstanding, (r.index - turn) % n))

    def in_order(self, first: Replica | None = None) -> list[Replica]:
        """Replicas to fetch keys or evidence from: ``first``, then the healthy ones, then the rest."""
        order = sorted(self.replicas, key=lambda r: (not r.healthy, r.index))
        if first is not None:
            order.remove(first)
            order.insert(0, first)
        return order

    def background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background (kept referenced; cancelled by :meth:`close`)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def post(self, client: hop.Pool, data: bytes | AsyncIterable[bytes], headers: Sequence[tuple[str, str]],
                   retries: Inc | None = None) -> tuple[hop.Response, Replica]:
        """POST to the best replica; on a failure before any byte was sent (:class:`hop.ConnectFailed`), to the
        next one. The caller must :meth:`Replica.release` the replica when the response is done."""
        tried: set[Replica] = set()
        while True:
            replica = self.pick(tried)
            assert replica is not None
            replica.outstanding += 1
            try:
                origin, path = replica.target()
                resp = await client.request(origin, "POST", path, headers, data)
            except hop.ConnectFailed as exc:
                replica.outstanding -= 1
                tried.add(replica)
                if len(self.replicas) > 1:
                    replica.mark(False, f"cannot connect ({exc.__class__.__name__})", self.name)
                if len(tried) == len(self.replicas):
                    raise
                if retries is not None:
                    retries.inc()
                continue
            except BaseException:
                replica.outstanding -= 1
                raise
            return resp, replica

    async def check(self, session: aiohttp.ClientSession, timeout: float) -> None:
        """Fetch every replica's ``/healthz`` once, concurrently."""

        async def one(r: Replica) -> None:
            try:
                async with session.get(r.healthz_url, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    await resp.read()
                    r.mark(resp.status == 200, f"/healthz answered {resp.status}", self.name)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                r.mark(False, f"/healthz failed ({exc.__class__.__name__})", self.name)

        await asyncio.gather(*(one(r) for r in self.replicas))

    async def watch(self, session: aiohttp.ClientSession, interval: float) -> None:
        """Check health every ``interval`` seconds, forever."""
        while True:
            await self.check(session, timeout=max(0.5, min(interval, 5.0)))
            await asyncio.sleep(interval)
