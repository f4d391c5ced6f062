"""Gateways' key configurations and evidence, cached by the relay and served alike to every client.

Key consistency (RFC 9458 §7): clients of one relay see the same key list, so a gateway cannot tell them apart by
the keys it hands out. An entry lives for the gateway's ``max-age``, clamped to ``[min_cache_seconds,
max_cache_seconds]``; while a gateway is down, what every client was already given is served until it expires.
Evidence comes from the replica whose keys are served, because it binds exactly those keys.

Eviction: a 422 from the gateway for a request under a key id *that the cached list holds* means the gateway rotated
that key away, so the cached keys and evidence are dropped and the client's refresh fetches the new ones. Anyone can
draw a 422 (junk under any key id), so another key id drops nothing, and drops happen at most once per
``key_refresh_interval`` per gateway.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass
from typing import Final, Literal

import aiohttp
from aiohttp import web

from .config import RelayConfig
from .errors import bad_gateway, gateway_timeout
from .metrics import RelayMetrics
from .pool import Replica, ReplicaPool, base_of

log = logging.getLogger("veil.relay")

MEDIA_KEYS: Final = "application/ohttp-keys"
ATTESTATION: Final = "/.well-known/veil-attestation"
#: the most of a key list or evidence bundle the relay reads from a gateway (more is a 502)
MAX_PUBLISHED_BYTES: Final = 1024 * 1024

What = Literal["keys", "attestation"]


async def read_whole(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body of ``resp``, read until its end (``content.read(n)`` returns as soon as any bytes have
    arrived: a body in several TCP writes would be cut short); None if it is longer than ``limit`` or shorter than
    its ``Content-Length`` (when that counts the bytes read: no ``Content-Encoding``)."""
    length = None if resp.headers.get("Content-Encoding", "identity") != "identity" else resp.content_length
    if length is not None and length > limit:
        return None
    parts: list[bytes] = []
    total = 0
    while piece := await resp.content.read(limit + 1 - total):
        parts.append(piece)
        total += len(piece)
        if total > limit:
            return None
    if length is not None and total != length:
        return None
    return b"".join(parts)


@dataclass
class Cached:
    body: bytes
    content_type: str
    expires: float
    key_ids: frozenset[int] = frozenset()  # for keys: the key ids of the configurations in ``body``


def key_ids(body: bytes) -> frozenset[int]:
    """The key ids of an ``application/ohttp-keys`` list (RFC 9458 §3.2: 2-byte length, then the key id first)."""
    ids: set[int] = set()
    i = 0
    while i + 2 < len(body):
        n = int.from_bytes(body[i:i + 2], "big")
        if n == 0 or i + 2 + n > len(body):
            break
        ids.add(body[i + 2])
        i += 2 + n
    return frozenset(ids)


def attestation_url(gateway_url: str) -> str:
    """Where the gateway at ``gateway_url`` (its ``/.well-known/ohttp-gateway``) publishes its evidence."""
    return base_of(gateway_url) + ATTESTATION


class KeyCache:
    """Per app: one entry per (gateway name, what), filled by one fetch at a time."""

    def __init__(self, config: RelayConfig, metrics: RelayMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.entries: dict[tuple[str, What], Cached] = {}
        self._locks: dict[tuple[str, What], asyncio.Lock] = {}
        #: when each gateway's cached keys were last dropped after a 422
        self.evicted_at: dict[str, float] = {}

    def key_rejected(self, name: str, key_id: int, now: float | None = None) -> bool:
        """The gateway ``name`` answered 422 (key unknown) to a request under ``key_id``: drop its cached keys and
        evidence if the eviction rule (module docstring) allows; True when they were dropped."""
        entry = self.entries.get((name, "keys"))
        if entry is None or key_id not in entry.key_ids:
            return False
        now = time.monotonic() if now is None else now
        if now - self.evicted_at.get(name, -1e18) < self.config.key_refresh_interval:
            return False
        self.evicted_at[name] = now
        self.entries.pop((name, "keys"), None)
        self.entries.pop((name, "attestation"), None)
        self.metrics.outcome("keys_dropped").inc()
        return True

    async def get(self, session: aiohttp.ClientSession, pool: ReplicaPool, what: What) -> Cached | web.Response:
        """The cached entry, fetched when missing or expired; a problem answer when there is none to serve."""
        key = (pool.name, what)  # "/" and "/NAME" of a relay with one gateway share one entry
        async with self._locks.setdefault(key, asyncio.Lock()):
            entry = self.entries.get(key)
            if entry is None or entry.expires <= time.monotonic():
                fresh = await self._fetch_pool(session, pool, what)
                if isinstance(fresh, Cached):
                    entry = self.entries[key] = fresh
                elif entry is None:
                    return fresh
                # else the gateway is down: keep serving what every client was already given, until it expires
        return entry

    async def _fetch_pool(self, session: aiohttp.ClientSession, pool: ReplicaPool,
                          what: What) -> Cached | web.Response:
        """Keys from the first healthy replica that answers; evidence from the replica whose keys are served."""
        fresh: Cached | web.Response = bad_gateway("no replica answered")
        for replica in pool.in_order(pool.keys_from if what == "attestation" else None):
            fresh = await self._fetch(session, replica.url if what == "keys" else attestation_url(replica.url), what)
            if isinstance(fresh, Cached):
                if what == "keys" and len(pool) > 1:
                    if pool.keys_from is not replica:  # evidence must come with the keys it binds
                        self.entries.pop((pool.name, "attestation"), None)
                    pool.keys_from = replica
                    pool.background(self._compare_keys(session, pool, replica, fresh.body))
                return fresh
        return fresh

    async def _compare_keys(self, session: aiohttp.ClientSession, pool: ReplicaPool, served: Replica,
                            body: bytes) -> None:
        """A replica set must publish one key configuration; say so loudly when it does not."""
        for other in pool.replicas:
            if other is served or not other.healthy:
                continue
            theirs = await self._fetch(session, other.url, "keys")
            if isinstance(theirs, Cached) and theirs.body != body:
                log.warning("gateway %s: replica %d publishes a different key configuration than replica %d; "
                            "serving replica %d's (requests that reach replica %d will fail with 422). Give the "
                            "replicas one key set.", pool.name, other.index, served.index, served.index, other.index)

    async def _fetch(self, session: aiohttp.ClientSession, url: str, what: What) -> Cached | web.Response:
        accept = MEDIA_KEYS if what == "keys" else "application/json"
        try:
            async with session.get(url, headers={"Accept": accept}, allow_redirects=False) as r:
                if r.status != 200:
                    return bad_gateway(f"the gateway answered {r.status} for its {what}")
                body = await read_whole(r, MAX_PUBLISHED_BYTES)
                if body is None:
                    return bad_gateway(f"the gateway's {what} is too large or incomplete")
                cc = r.headers.get("Cache-Control", "")
                ctype = r.headers.get("Content-Type", accept).split(";")[0]
        except asyncio.TimeoutError:
            return gateway_timeout(f"the gateway did not send its {what} in time")
        except (aiohttp.ClientError, OSError):
            return bad_gateway()
        return Cached(body, ctype, time.monotonic() + self.ttl(cc), key_ids(body) if what == "keys" else frozenset())

    def ttl(self, cache_control: str) -> float:
        """Seconds to keep an entry: the gateway's ``max-age``, clamped to the configured bounds."""
        m = re.search(r"max-age=(\d+)", cache_control)
        cfg = self.config
        return min(cfg.max_cache_seconds, max(cfg.min_cache_seconds, float(m.group(1)) if m else cfg.min_cache_seconds))
