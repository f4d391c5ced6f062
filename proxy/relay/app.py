"""``create_app``: the relay's aiohttp application (routes, and one ``cleanup_ctx`` per resource).

``veil relay`` is an OHTTP relay (RFC 9458 §6.2) for relay operators: it sees who sends, never what. The parts:
:mod:`.forward` (``POST``: allow list, headers rebuilt, streaming), :mod:`.key_routes` over :mod:`.keycache` (keys and
evidence every client shares), :mod:`.cors`, :mod:`.limits` (sizes, rates, deadlines, per-address caps, write
timeouts), :mod:`.pool` (replicas), :mod:`.vsock` (Nitro Enclaves),
:mod:`.tokens` (``--require-token``: Privacy Pass). It keeps no per-client logs; client addresses live
in memory only, as keyed digests, for the rate window and while connected.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import hop

from .config import RelayConfig
from .cors import preflight
from .forward import forbidden_post, forward
from .key_routes import attestation, keys
from .metrics import FLUSH_SECONDS
from .pool import Replica
from .shared import WorkerSpec
from .state import STATE, RelayState
from .tokens import setup_tokens
from .vsock import VsockBridge, is_vsock_url, parse_vsock_url, vsock_connector


async def healthz(request: web.Request) -> web.Response:
    """The relay process is up (gateways are checked by the requests themselves)."""
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; fixed labels only (with workers: this worker's batched counts written first)."""
    state_metrics = request.app[STATE].metrics
    state_metrics.flush()
    resp = web.Response(body=generate_latest(state_metrics.exposition))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def create_app(config: RelayConfig, worker: WorkerSpec | None = None) -> web.Application:
    """Build the relay application (``worker``: as one of the processes of ``--workers N``)."""
    app = web.Application(client_max_size=config.max_request_bytes + 1,
                          middlewares=[_watch_writes] if config.write_timeout > 0 else [])
    app[STATE] = RelayState(config=config, worker=worker)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("OPTIONS", "/{tail:.*}", preflight)
    app.router.add_get("/", keys)
    app.router.add_post("/", forward)
    app.router.add_get("/{name}/attestation", attestation)
    app.router.add_get("/{name}", keys)
    app.router.add_post("/{name}", forward)
    app.router.add_route("POST", "/{tail:.*}", forbidden_post)
    if (policy := config.token_policy()) is not None:
        # Spent right before forwarding (forward.py), after every cheaper refusal: a request without an acceptable
        # token never reaches a gateway, and one refused for anything else keeps its token.
        setup_tokens(app, policy, config.spent_store, app[STATE].metrics.registry)
    app.cleanup_ctx.append(_vsock_ctx)
    app.cleanup_ctx.append(_session_ctx)
    app.cleanup_ctx.append(_health_ctx)
    app.cleanup_ctx.append(_watchdog_ctx)
    if app[STATE].metrics.batched:
        app.cleanup_ctx.append(_flush_ctx)
    return app


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
    """One client session to the gateways: no cookies, no user agent, bytes passed through undecoded."""
    state = app[STATE]
    cfg = state.config
    state.session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout, sock_read=cfg.read_timeout),
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )
    state.client = hop.Pool(connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout)
    yield
    await state.client.close()
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
    await _cancel(*tasks)


@web.middleware
async def _watch_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every connection that sends a request is watched until it closes: one that leaves response bytes unread for
    ``write_timeout`` seconds is dropped (during a stream, or after the handler has finished writing)."""
    request.app[STATE].watchdog.track(request.transport)
    return await handler(request)


async def _watchdog_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[STATE].watchdog.run())
    yield
    await _cancel(task)


async def _flush_ctx(app: web.Application) -> AsyncIterator[None]:
    """With workers: this worker's batched metric updates reach the shared files every FLUSH_SECONDS, and at exit."""
    metrics = app[STATE].metrics

    async def run() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            metrics.flush()

    task = asyncio.create_task(run())
    yield
    await _cancel(task)
    metrics.flush()


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
