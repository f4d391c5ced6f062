"""``--transparency-log URL``: follow the log in the background and attach to the published evidence the proofs
that its key configuration (and the release it runs) are logged, so clients check the log in the same fetch.

Until the operator logs the key (``veil log append --evidence``) the evidence carries none; after a rotation the
new key's proofs are looked for at once and then every ``--transparency-refresh`` seconds. A log that cannot be
read is logged as a warning and the gateway keeps serving: the proofs it has go stale (clients check a stale
checkpoint's consistency with their own) or stay absent (clients read the log themselves).

A large log is read a bounded number of entry bundles per round (``transparency.follow.MAX_BUNDLES_PER_UPDATE``).
With ``--transparency-log-key`` a checkpoint is used only once the log's signature on it verifies; with
``--transparency-publisher`` the releases attached for a key entry naming none are those publishers' only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from transparency.client import http_fetcher
from transparency.follow import LogFollower

from .app_state_keys import STATE
from .state import GatewayState

log = logging.getLogger("veil.gateway")

__all__ = ["refresh_log_proofs", "transparency_ctx"]


async def refresh_log_proofs(state: GatewayState, follower: LogFollower) -> None:
    """One round: read the log's new entries (in a worker thread: blocking HTTP) and republish the evidence with
    the proofs for the key configuration it binds."""
    bundle = state.bundle
    if bundle is None:
        return
    had = state.log_proofs is not None and state.log_proofs[0] == bundle.key_config
    try:
        proofs = await asyncio.to_thread(follower.proofs_for, bundle.key_config, time.time())
        text = None if proofs is None else proofs.encode()
    except Exception as exc:  # whatever the log does (unreachable, malformed, forked), the gateway keeps serving
        log.warning("transparency log %s: %s; the evidence keeps the proofs it has", state.config.transparency_log,
                    exc)
        return
    state.set_log_proofs(bundle.key_config, text)
    if proofs is not None and not had:
        log.info("transparency log: key configuration at index %d; its proofs travel with the evidence",
                 proofs.key.index)
    elif proofs is None and had:
        log.warning("transparency log: no unexpired entry for the served key configuration; evidence without proofs")


async def transparency_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    url = state.config.transparency_log
    if url is None:
        yield
        return
    from tlog import parse_verifier_key

    cfg = state.config
    follower = LogFollower(http_fetcher(url),
                           log_key=None if cfg.transparency_log_key is None else parse_verifier_key(
                               cfg.transparency_log_key),
                           publishers=[parse_verifier_key(k) for k in cfg.transparency_publishers])

    async def follow() -> None:
        while True:
            state.log_wake.clear()
            await refresh_log_proofs(state, follower)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.log_wake.wait(), state.config.transparency_refresh)

    task = asyncio.create_task(follow())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
