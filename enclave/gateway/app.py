"""``create_app``: the gateway's aiohttp application (one ``cleanup_ctx`` per resource)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import AsyncIterator

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ohttp import KeyRing

from ..api import Api
from ..attestation import EvidenceProvider
from ..engines import Engine
from ..engines.selfcheck import EngineSelfCheckFailed
from .app_state_keys import STATE
from .config import GatewayConfig
from .log_proofs import transparency_ctx
from .ohttp_routes import get_attestation, get_keys, post_gateway
from .state import GatewayState

log = logging.getLogger("veil.gateway")


async def healthz(request: web.Request) -> web.Response:
    """200 when the engine can serve, 503 while it starts or restarts."""
    state = request.app[STATE]
    up = state.api.engine.healthy()
    state.metrics.engine_up.set(1 if up else 0)
    status = "ok" if up else "engine failed" if state.engine_error else "starting"
    body = {"status": status, "engine": state.api.engine.kind, "attestation": state.provider.platform}
    return web.Response(status=200 if up else 503, body=orjson.dumps(body), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    state = request.app[STATE]
    state.metrics.engine_up.set(1 if state.api.engine.healthy() else 0)
    resp = web.Response(body=generate_latest(state.metrics.registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def create_app(
    *,
    engine: Engine,
    keyring: KeyRing,
    provider: EvidenceProvider,
    config: GatewayConfig | None = None,
    api: Api | None = None,
) -> web.Application:
    """Build the gateway application. The engine is started in the background; ``/healthz`` says when it is up."""
    cfg = config or GatewayConfig()
    state = GatewayState(config=cfg, keyring=keyring, api=api or Api(engine), provider=provider)
    # The client_max_size bound is a backstop; routes enforce max_request_bytes while streaming the body in.
    app = web.Application(client_max_size=cfg.max_request_bytes + 1)
    app[STATE] = state
    app.router.add_get("/.well-known/ohttp-gateway", get_keys)
    app.router.add_post("/.well-known/ohttp-gateway", post_gateway)
    app.router.add_get("/.well-known/veil-attestation", get_attestation)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_engine_ctx)
    app.cleanup_ctx.append(_rotation_ctx)
    app.cleanup_ctx.append(transparency_ctx)
    return app


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = app[STATE].api.engine

    async def start() -> None:
        try:
            await engine.start()
        except Exception as exc:
            # A gateway whose engine cannot start, or answers a known question wrongly, must not sit there
            # unhealthy forever (veil up and orchestrators would wait for nothing): stop it gracefully, as SIGTERM
            # would, and let run() exit non-zero with the reason.
            what = "failed its start-up self-check" if isinstance(exc, EngineSelfCheckFailed) else "failed to start"
            log.error("engine %s %s; stopping the gateway: %s", engine.kind, what, exc)
            app[STATE].engine_error = f"the engine {what}: {exc}"
            os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.create_task(start())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await engine.close()


async def _rotation_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]

    async def rotate_now() -> None:
        try:
            new = await state.rotate_async()
        except Exception:  # a bug, or all 256 key ids in use: say so, and let the next interval try again
            log.exception("key rotation failed")
            return
        if new is not None:
            log.info("rotated keys: key id %d is now published", new.config.key_id)

    pending: set[asyncio.Task[None]] = set()

    def rotate() -> None:  # SIGUSR1: signal handlers are plain callbacks, so the rotation runs as a task
        task = asyncio.ensure_future(rotate_now())
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGUSR1, rotate)
        signals = True
    except (NotImplementedError, RuntimeError, ValueError):
        signals = False  # not the main thread (tests), or no signals on this platform

    async def periodic() -> None:
        while True:
            await asyncio.sleep(state.config.rotation_interval)
            await rotate_now()

    task = asyncio.create_task(periodic()) if state.config.rotation_interval > 0 else None
    yield
    if task is not None:
        task.cancel()
    if signals:
        loop.remove_signal_handler(signal.SIGUSR1)
