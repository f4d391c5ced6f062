"""``veil relay``: an OHTTP relay (RFC 9458 §6.2) for relay operators.

It sees who sends, never what: it forwards ciphertext only to allow-listed gateways, builds every forwarded
request from scratch (no client address, cookie, user agent or any other client header goes on), streams both
directions without buffering, caches key configurations and evidence so every client sees the same keys, and
limits sizes, rates and time (see ``limits.py``: body deadlines, per-address caps, write timeouts). It keeps no
per-client logs; client addresses live in memory only, as keyed digests, for the rate window and while connected.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import AsyncIterator, Final, Mapping, Sequence

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .limits import BodyClock, ClientLimits, WriteWatchdog, parse_networks
from .pool import Replica, ReplicaPool, split_urls
from .vsock import VsockBridge, is_vsock_url, parse_vsock_url, vsock_connector

log = logging.getLogger("veil.relay")

MEDIA_REQ: Final = "message/ohttp-req"
MEDIA_CHUNKED_REQ: Final = "message/ohttp-chunked-req"
MEDIA_KEYS: Final = "application/ohttp-keys"
WELL_KNOWN: Final = "/.well-known/ohttp-gateway"
ATTESTATION: Final = "/.well-known/veil-attestation"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
#: Response headers from the gateway that reach the client; everything else is dropped.
_PASS_RESPONSE: Final = ("Content-Type", "Incremental")


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """Limits and settings; every one has a command-line option."""

    #: name -> URL, or the URLs of replicas ("URL1,URL2" or a list); http(s):// or vsock://CID:PORT/path
    gateways: Mapping[str, str | Sequence[str]]
    max_request_bytes: int = 4 * 1024 * 1024
    max_response_bytes: int = 64 * 1024 * 1024
    max_concurrent: int = 1024
    rate_per_minute: int = 600
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    client_timeout: float = 30.0
    #: a request body must arrive within body_timeout s, plus one s per min_rate bytes, max_body_time s at most
    body_timeout: float = 20.0
    min_rate: float = 4096.0
    max_body_time: float = 60.0
    #: a client whose response bytes wait unsent this long (it stopped reading) is dropped (0: never)
    write_timeout: float = 30.0
    max_connections_per_address: int = 128
    max_in_flight_per_address: int = 32
    #: TLS terminators / load balancers whose X-Forwarded-For names the client (addresses or CIDRs)
    trusted_proxies: tuple[str, ...] = ()
    #: at most one drop of a gateway's cached keys and evidence (after a 422 for a cached key id) per this many s
    key_refresh_interval: float = 10.0
    cors_origins: tuple[str, ...] = ()
    min_cache_seconds: float = 5.0
    max_cache_seconds: float = 3600.0
    health_interval: float = 5.0  # seconds between /healthz checks of replicas (0: none)

    def __post_init__(self) -> None:
        for name, urls in self.gateways.items():
            if not _NAME.match(name):
                raise ValueError(f"gateway name {name!r} must be letters, digits, '.', '_' or '-'")
            if not split_urls(urls):
                raise ValueError(f"gateway {name!r} has no URL")
            for url in split_urls(urls):
                if is_vsock_url(url):
                    parse_vsock_url(url)  # ValueError says what is wrong
                elif not url.startswith(("http://", "https://")):
                    raise ValueError(f"gateway URL {url!r} must be http(s):// or vsock://CID:PORT/path")
        parse_networks(self.trusted_proxies)  # ValueError says which one is wrong


@dataclass
class _Cached:
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


@dataclass
class RelayState:
    """Per-app state."""

    config: RelayConfig
    session: aiohttp.ClientSession | None = None
    cache: dict[tuple[str, str], _Cached] = field(default_factory=dict)
    cache_locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    limiter: RateLimiter = field(init=False)
    limits: ClientLimits = field(init=False)
    watchdog: WriteWatchdog = field(init=False)
    #: when each gateway's cached keys were last dropped after a 422
    evicted_at: dict[str, float] = field(default_factory=dict)
    slots: asyncio.Semaphore = field(init=False)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    pools: dict[str, ReplicaPool] = field(init=False)
    bridges: list[VsockBridge] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pools = {name: ReplicaPool(name, split_urls(urls)) for name, urls in self.config.gateways.items()}
        self.limiter = RateLimiter(self.config.rate_per_minute)
        cfg = self.config
        self.limits = ClientLimits(max_connections=cfg.max_connections_per_address,
                                   max_in_flight=cfg.max_in_flight_per_address,
                                   trusted_proxies=parse_networks(cfg.trusted_proxies))
        self.watchdog = WriteWatchdog(cfg.write_timeout)
        self.slots = asyncio.Semaphore(self.config.max_concurrent)
        r = self.registry
        self.requests = Counter("veil_relay_requests_total", "Forwarded requests by outcome", ["outcome"], registry=r)
        self.latency = Histogram("veil_relay_upstream_seconds", "Gateway response time (to headers)", registry=r,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))
        self.in_flight = Gauge("veil_relay_in_flight", "Requests being forwarded", registry=r)
        self.bytes = Counter("veil_relay_bytes_total", "Bytes relayed", ["direction"], registry=r)
        self.retries = Counter("veil_relay_retries_total", "Requests sent to another replica after the first could "
                               "not be connected to (nothing had been sent)", registry=r)
        up = Gauge("veil_relay_replica_up", "1 while a gateway replica is in rotation", ["gateway", "replica"],
                   registry=r)
        for pool in self.pools.values():
            for rep in pool.replicas if len(pool) > 1 else ():
                up.labels(pool.name, str(rep.index)).set_function(rep.up)

    # Labelled children bound once, on first use (so /metrics shows them exactly when it did before):
    # ``labels()`` validates its arguments and takes a lock on every call, and these are on the per-request path.
    @cached_property
    def bytes_up(self) -> Counter:
        return self.bytes.labels("up")

    @cached_property
    def bytes_down(self) -> Counter:
        return self.bytes.labels("down")

    @cached_property
    def outcome_ok(self) -> Counter:
        return self.requests.labels("ok")


STATE = web.AppKey("STATE", RelayState)


def _problem(status: int, title: str, detail: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body: dict[str, object] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/problem+json",
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _target(state: RelayState, name: str) -> ReplicaPool | None:
    if name == "" and len(state.pools) == 1:
        return next(iter(state.pools.values()))
    return state.pools.get(name)


def _attestation_url(gateway_url: str) -> str:
    base = gateway_url[: -len(WELL_KNOWN)] if gateway_url.endswith(WELL_KNOWN) else gateway_url.rstrip("/")
    return base + ATTESTATION


# ------------------------------------------------------------------------------------------------------------------


async def forward(request: web.Request) -> web.StreamResponse:
    """``POST /NAME`` (or ``/``): forward an encapsulated request to the allow-listed gateway NAME."""
    resp = await _admit(request)
    if not resp.prepared:  # the relay's own refusals (403, 413, 429, ...) must be readable by browser pages too
        _cors(request, request.app[STATE], resp)
    return resp


async def _admit(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    name = request.match_info.get("name", "")
    pool = _target(state, name)
    if pool is None:
        state.requests.labels("forbidden").inc()
        return _problem(403, "unknown gateway", "this relay forwards only to its configured gateways")
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in (MEDIA_REQ, MEDIA_CHUNKED_REQ):
        state.requests.labels("media_type").inc()
        return _problem(415, "unsupported media type", f"send {MEDIA_REQ} or {MEDIA_CHUNKED_REQ}")
    cfg = state.config
    if request.content_length is not None and request.content_length > cfg.max_request_bytes:
        state.requests.labels("too_large").inc()
        return _problem(413, "request too large", f"limit is {cfg.max_request_bytes} bytes")
    clock = BodyClock(cfg.body_timeout, cfg.min_rate, cfg.max_body_time)  # from the end of the request head
    client = state.limits.client_key(request)
    if not state.limiter.allow(client):
        state.requests.labels("rate_limited").inc()
        return _problem(429, "too many requests", "slow down", {"Retry-After": "60"})
    if state.slots.locked():
        state.requests.labels("busy").inc()
        return _problem(503, "relay busy", "too many concurrent requests", {"Retry-After": "1"})
    if not state.limits.enter(client):
        state.requests.labels("address_busy").inc()
        return _problem(429, "too many requests at once", "too many requests from this address are in flight",
                        {"Retry-After": "1"})
    try:
        async with state.slots:
            state.in_flight.inc()
            try:
                return await _forward(request, state, pool, ctype, clock)
            finally:
                state.in_flight.dec()
    finally:
        state.limits.leave(client)


class _TooLarge(Exception):
    pass


class _Response(web.StreamResponse):
    """A streamed response whose status line and headers leave with its first body bytes, in one send instead of
    two (as aiohttp's own ``web.Response`` does): an OHTTP client can do nothing with the headers alone, and the
    gateway sends the first bytes right behind its own headers."""

    _send_headers_immediately = False


async def _body(request: web.Request, limit: int, timeout: float, counter: Counter,
                clock: BodyClock, first: bytearray) -> AsyncIterator[bytes]:
    """A streamed ``message/ohttp-chunked-req`` body; its first byte (the key id) is kept in ``first``, and a body
    that misses its deadline sets ``clock.timed_out``."""
    total = 0
    it = request.content.iter_any().__aiter__()
    while True:
        try:
            async with asyncio.timeout(clock.remaining(timeout)):  # not wait_for: that wraps every piece in a task
                piece = await it.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            clock.timed_out = True
            raise
        if not first and piece:
            first.append(piece[0])
        total += len(piece)
        clock.received = total
        if total > limit:
            raise _TooLarge()
        counter.inc(len(piece))
        yield piece


async def _whole_body(request: web.Request, limit: int, timeout: float, counter: Counter, clock: BodyClock) -> bytes:
    """A ``message/ohttp-req`` body: the same limits and deadlines as :func:`_body`, but what has arrived already
    is taken without waiting (the common case: the whole small body came with the headers)."""
    content = request.content
    parts: list[bytes] = []
    total = 0
    while True:
        piece = content.read_nowait()
        if not piece:
            if content.at_eof():
                break
            async with asyncio.timeout(clock.remaining(timeout)):
                piece = await content.readany()
            if not piece:
                break
        total += len(piece)
        clock.received = total
        if total > limit:
            raise _TooLarge()
        counter.inc(len(piece))
        parts.append(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _forward(request: web.Request, state: RelayState, pool: ReplicaPool, ctype: str,
                   clock: BodyClock) -> web.StreamResponse:
    cfg = state.config
    assert state.session is not None
    up_bytes = state.bytes_up
    # The forwarded request is built from scratch: content type, framing, nothing else of the client's.
    headers = {"Content-Type": ctype}
    if ctype == MEDIA_CHUNKED_REQ:
        headers["Incremental"] = "?1"
    data: object
    first = bytearray()  # the request's key id (RFC 9458 §4.1: the first byte of the encapsulated request)
    if ctype == MEDIA_CHUNKED_REQ and not request.content.is_eof():
        data = _body(request, cfg.max_request_bytes, cfg.client_timeout, up_bytes, clock, first)
    else:
        # A whole message, or an incremental one that has arrived completely already (the usual chat request):
        # forwarded in one piece with a Content-Length, rather than as chunks and a terminator in separate sends.
        try:
            data = await _whole_body(request, cfg.max_request_bytes, cfg.client_timeout, up_bytes, clock)
        except _TooLarge:
            state.requests.labels("too_large").inc()
            return _problem(413, "request too large", f"limit is {cfg.max_request_bytes} bytes")
        except asyncio.TimeoutError:
            state.requests.labels("client_timeout").inc()
            return _problem(408, "request timeout", "the request body arrived too slowly")
        first += data[:1]
    t0 = time.perf_counter()
    try:
        # Another replica is tried only when nothing was sent (connection refused or timed out); never after.
        upstream, replica = await pool.post(state.session, data, headers, state.retries)
    except _TooLarge:
        state.requests.labels("too_large").inc()
        return _problem(413, "request too large", f"limit is {cfg.max_request_bytes} bytes")
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
        if clock.timed_out:  # the client's streamed body missed its deadline (aiohttp wraps the error)
            state.requests.labels("client_timeout").inc()
            return _problem(408, "request timeout", "the request body arrived too slowly")
        if isinstance(exc, asyncio.TimeoutError):
            state.requests.labels("gateway_timeout").inc()
            return _problem(504, "gateway timeout", "the gateway did not answer in time")
        state.requests.labels("gateway_error").inc()
        return _problem(502, "bad gateway", "the gateway is unreachable")
    state.latency.observe(time.perf_counter() - t0)
    if upstream.status == 422 and first:
        _key_rejected(state, pool, first[0])
    try:
        out_headers = {k: upstream.headers[k] for k in _PASS_RESPONSE if k in upstream.headers}
        out_headers["Cache-Control"] = "no-store"
        resp = _Response(status=upstream.status, headers=out_headers)
        if upstream.content_length is not None and "Incremental" not in out_headers:
            resp.content_length = upstream.content_length
        else:
            resp.enable_chunked_encoding()
        _cors(request, state, resp)
        await resp.prepare(request)
        down = state.bytes_down
        total = 0
        try:
            async for piece in upstream.content.iter_any():
                total += len(piece)
                if total > cfg.max_response_bytes:
                    state.requests.labels("response_too_large").inc()
                    upstream.close()
                    return resp  # cut off: the client sees a truncated body, never a silent success
                down.inc(len(piece))
                await resp.write(piece)
        except (aiohttp.ClientError, asyncio.TimeoutError):
            state.requests.labels("gateway_broke").inc()
            return resp  # the stream ends without its final chunk; the client detects truncation
        await resp.write_eof()
        if upstream.status == 200:
            state.outcome_ok.inc()
        else:
            state.requests.labels(f"gateway_{upstream.status // 100}xx").inc()
        return resp
    except (ConnectionResetError, OSError):
        state.requests.labels("client_gone").inc()
        return web.StreamResponse()
    finally:
        upstream.release()
        replica.release()


def _key_rejected(state: RelayState, pool: ReplicaPool, key_id: int) -> None:
    """The gateway answered 422 (key unknown) to a request for ``key_id``. When the cached key list holds that key
    id, the gateway has rotated it away: drop the cached keys and evidence so the client's refresh gets the new
    ones. Anyone can draw a 422 (junk under any key id), so a key id the cache does not hold drops nothing, and
    drops happen at most once per ``key_refresh_interval`` per gateway."""
    entry = state.cache.get((pool.name, "keys"))
    if entry is None or key_id not in entry.key_ids:
        return
    now = time.monotonic()
    if now - state.evicted_at.get(pool.name, -1e18) < state.config.key_refresh_interval:
        return
    state.evicted_at[pool.name] = now
    state.cache.pop((pool.name, "keys"), None)
    state.cache.pop((pool.name, "attestation"), None)
    state.requests.labels("keys_dropped").inc()


async def keys(request: web.Request) -> web.Response:
    """``GET /NAME``: the gateway's key configuration, cached for its lifetime (key consistency)."""
    return await _cached_get(request, "keys")


async def attestation(request: web.Request) -> web.Response:
    """``GET /NAME/attestation``: the gateway's evidence bundle, cached alongside its keys."""
    return await _cached_get(request, "attestation")


async def _cached_get(request: web.Request, what: str) -> web.Response:
    resp = await _cached_lookup(request, what)
    _cors(request, request.app[STATE], resp)  # errors too, so that a page can tell "refused" from "unreachable"
    return resp


async def _cached_lookup(request: web.Request, what: str) -> web.Response:
    state = request.app[STATE]
    name = request.match_info.get("name", "")
    pool = _target(state, name)
    if pool is None:
        return _problem(404 if request.method == "GET" else 403, "unknown gateway")
    if what == "attestation" and "nonce" in request.query:
        return _problem(400, "fresh evidence is not relayed", "ask for cached evidence; nonces would link clients")
    key = (pool.name, what)  # "/" and "/NAME" of a relay with one gateway share one cache entry
    lock = state.cache_locks.setdefault(key, asyncio.Lock())
    async with lock:
        entry = state.cache.get(key)
        now = time.monotonic()
        if entry is None or entry.expires <= now:
            fresh = await _fetch_pool(state, pool, what)
            if isinstance(fresh, web.Response):
                if entry is None:
                    return fresh
                # The gateway is down: keep serving what every client was already given, until it expires.
            else:
                entry = fresh
                state.cache[key] = entry
    remaining = max(0, int(entry.expires - time.monotonic()))
    resp = web.Response(body=entry.body, content_type=entry.content_type,
                        headers={"Cache-Control": f"max-age={remaining}"})
    return resp


async def _fetch_pool(state: RelayState, pool: ReplicaPool, what: str) -> _Cached | web.Response:
    """Keys from the first healthy replica that answers; evidence from the replica whose keys are served."""
    fresh: _Cached | web.Response = _problem(502, "bad gateway", "no replica answered")
    for replica in pool.in_order(pool.keys_from if what == "attestation" else None):
        fresh = await _fetch(state, replica.url if what == "keys" else _attestation_url(replica.url), what)
        if isinstance(fresh, _Cached):
            if what == "keys" and len(pool) > 1:
                if pool.keys_from is not replica:  # evidence must come with the keys it binds
                    state.cache.pop((pool.name, "attestation"), None)
                pool.keys_from = replica
                pool.background(_compare_keys(state, pool, replica, fresh.body))
            return fresh
    return fresh


async def _compare_keys(state: RelayState, pool: ReplicaPool, served: Replica, body: bytes) -> None:
    """A replica set must publish one key configuration; say so loudly when it does not."""
    for other in pool.replicas:
        if other is served or not other.healthy:
            continue
        theirs = await _fetch(state, other.url, "keys")
        if isinstance(theirs, _Cached) and theirs.body != body:
            log.warning("gateway %s: replica %d publishes a different key configuration than replica %d; serving "
                        "replica %d's (requests that reach replica %d will fail with 422). Give the replicas one "
                        "key set.", pool.name, other.index, served.index, served.index, other.index)


async def _fetch(state: RelayState, url: str, what: str) -> _Cached | web.Response:
    assert state.session is not None
    accept = MEDIA_KEYS if what == "keys" else "application/json"
    try:
        async with state.session.get(url, headers={"Accept": accept}, allow_redirects=False) as r:
            body = await r.content.read(1024 * 1024 + 1)
            if r.status != 200 or len(body) > 1024 * 1024:
                return _problem(502, "bad gateway", f"the gateway answered {r.status} for its {what}")
            cc = r.headers.get("Cache-Control", "")
            ctype = r.headers.get("Content-Type", accept).split(";")[0]
    except asyncio.TimeoutError:
        return _problem(504, "gateway timeout", f"the gateway did not send its {what} in time")
    except (aiohttp.ClientError, OSError):
        return _problem(502, "bad gateway", "the gateway is unreachable")
    m = re.search(r"max-age=(\d+)", cc)
    cfg = state.config
    ttl = min(cfg.max_cache_seconds, max(cfg.min_cache_seconds, float(m.group(1)) if m else cfg.min_cache_seconds))
    return _Cached(body, ctype, time.monotonic() + ttl, key_ids(body) if what == "keys" else frozenset())


def _cors(request: web.Request, state: RelayState, resp: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    allowed = state.config.cors_origins
    if origin and ("*" in allowed or origin in allowed):
        resp.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        if "*" not in allowed:
            resp.headers["Vary"] = "Origin"


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight for browser front ends on the allowed origins."""
    state = request.app[STATE]
    resp = web.Response(status=204)
    _cors(request, state, resp)
    if "Access-Control-Allow-Origin" in resp.headers:
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = "Content-Type, Incremental, Accept"
        resp.headers["Access-Control-Max-Age"] = "600"
    return resp


async def healthz(request: web.Request) -> web.Response:
    """The relay process is up (gateways are checked by the requests themselves)."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; fixed labels only."""
    resp = web.Response(body=generate_latest(request.app[STATE].registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def _vsock_ctx(app: web.Application) -> AsyncIterator[None]:
    """A loopback bridge per vsock replica, its URL rewritten to the bridge's; started before the client session
    and closed after it (see ``vsock.py``)."""
    state = app[STATE]
    rewritten: list[tuple[Replica, str]] = []
    try:
        for pool in state.pools.values():
            for replica in pool.replicas:
                if not is_vsock_url(replica.url):
                    continue
                target = parse_vsock_url(replica.url)
                bridge = VsockBridge(vsock_connector(target.cid, target.port), label=f"{pool.name} ({target})",
                                     connect_timeout=state.config.connect_timeout)
                state.bridges.append(bridge)
                await bridge.start()
                rewritten.append((replica, replica.url))
                replica.url = bridge.url(target.path)
        yield
    finally:
        for bridge in state.bridges:
            await bridge.close()
        state.bridges.clear()
        for replica, url in rewritten:
            replica.url = url  # the bridge port is gone; a restarted app bridges afresh


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    cfg = state.config
    state.session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout),
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
    yield
    await state.session.close()


async def _health_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    assert state.session is not None
    interval = state.config.health_interval
    tasks = [asyncio.create_task(p.watch(state.session, interval)) for p in state.pools.values()
             if len(p) > 1 and interval > 0]
    yield
    for pool in state.pools.values():
        pool.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@web.middleware
async def _watch_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every connection that sends a request is watched until it closes: one that leaves response bytes unread for
    ``write_timeout`` seconds is dropped (during a stream, or after the handler has finished writing)."""
    request.app[STATE].watchdog.track(request.transport)
    return await handler(request)


async def _watchdog_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[STATE].watchdog.run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def create_app(config: RelayConfig) -> web.Application:
    """Build the relay application."""
    app = web.Application(client_max_size=config.max_request_bytes + 1,
                          middlewares=[_watch_writes] if config.write_timeout > 0 else [])
    app[STATE] = RelayState(config=config)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("OPTIONS", "/{tail:.*}", preflight)
    app.router.add_get("/", keys)
    app.router.add_post("/", forward)
    app.router.add_get("/{name}/attestation", attestation)
    app.router.add_get("/{name}", keys)
    app.router.add_post("/{name}", forward)
    app.router.add_route("POST", "/{tail:.*}", _forbidden)
    app.cleanup_ctx.append(_vsock_ctx)
    app.cleanup_ctx.append(_session_ctx)
    app.cleanup_ctx.append(_health_ctx)
    app.cleanup_ctx.append(_watchdog_ctx)
    return app


async def _forbidden(request: web.Request) -> web.Response:
    request.app[STATE].requests.labels("forbidden").inc()
    return _problem(403, "unknown gateway", "this relay forwards only to its configured gateways")
