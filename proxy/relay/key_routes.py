"""``GET /NAME`` and ``GET /NAME/attestation``: a gateway's keys and evidence, answered from the :mod:`.keycache`
so every client gets the same ones. Fresh (``?nonce=``) evidence is refused: a nonce would link a client's
requests."""

from __future__ import annotations

import time

from aiohttp import web

from . import cors
from .errors import problem
from .keycache import Cached, What
from .state import STATE


async def keys(request: web.Request) -> web.Response:
    """``GET /NAME``: the gateway's key configuration, cached for its lifetime (key consistency)."""
    return await _cached_get(request, "keys")


async def attestation(request: web.Request) -> web.Response:
    """``GET /NAME/attestation``: the gateway's evidence bundle, cached alongside its keys."""
    return await _cached_get(request, "attestation")


async def _cached_get(request: web.Request, what: What) -> web.Response:
    resp = await _lookup(request, what)
    cors.allow(request, resp)  # errors too, so that a page can tell "refused" from "unreachable"
    return resp


async def _lookup(request: web.Request, what: What) -> web.Response:
    state = request.app[STATE]
    pool = state.target(request.match_info.get("name", ""))
    if pool is None:
        return problem(404 if request.method == "GET" else 403, "unknown gateway")
    if what == "attestation" and "nonce" in request.query:
        return problem(400, "fresh evidence is not relayed", "ask for cached evidence; nonces would link clients")
    assert state.session is not None
    entry = await state.keycache.get(state.session, pool, what)
    if not isinstance(entry, Cached):
        return entry
    remaining = max(0, int(entry.expires - time.monotonic()))
    return web.Response(body=entry.body, content_type=entry.content_type,
                        headers={"Cache-Control": f"max-age={remaining}"})
