"""``create_app``: the issuer's aiohttp application (routes, and one ``cleanup_ctx`` per resource).

``veil issuer`` is a Privacy Pass issuer (RFC 9578, token type 0x0002): it blind-signs TokenRequests for clients its
attester allows, and publishes its keys at ``/.well-known/private-token-issuer-directory``. It sees an API key (or
whatever its attester checks) and blinded bytes, never a prompt, nor at which relay or gateway a token is spent.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from privacypass import WELL_KNOWN_DIRECTORY

from .attester import Attester
from .config import IssuerConfig
from .routes import directory, rotate_loop, token_request
from .state import STATE, IssuerState


async def healthz(request: web.Request) -> web.Response:
    """Up, with at least one key listed."""
    ok = bool(request.app[STATE].schedule.keys)
    return web.json_response({"status": "ok" if ok else "no keys"}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; fixed labels only."""
    resp = web.Response(body=generate_latest(request.app[STATE].metrics.registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


def create_app(config: IssuerConfig, *, attester: Attester | None = None) -> web.Application:
    """Build the issuer application (``attester`` overrides the one ``config`` names, for tests and embedding)."""
    app = web.Application(client_max_size=4096)
    app[STATE] = IssuerState(config=config, attester=attester)
    app.router.add_get(WELL_KNOWN_DIRECTORY, directory)
    app.router.add_post(config.request_path, token_request)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_keys_ctx)
    return app


async def _keys_ctx(app: web.Application) -> AsyncIterator[None]:
    """A first key before serving, then the rotation task; the databases are closed after it."""
    state = app[STATE]
    await asyncio.to_thread(state.schedule.rotate)
    task = asyncio.create_task(rotate_loop(app))
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    state.db.close()
