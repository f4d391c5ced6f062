"""The issuer's HTTP routes: the directory (RFC 9578 §4) and token requests (RFC 9578 §6.2).

Errors: a client the attester refuses gets 401/403; a malformed request, a token type other than 2 or an unknown
truncated key id get 422 (RFC 9578 §6.2), and the client should refetch the directory; a subject over its limit gets
429. No log line carries a request's bytes, an API key or a client address.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

import privacypass
from privacypass import MEDIA_TYPE_DIRECTORY, MEDIA_TYPE_TOKEN_REQUEST, MEDIA_TYPE_TOKEN_RESPONSE

from .attester import AttestationRefused
from .state import STATE

log = logging.getLogger("veil.issuer")

_REASONS = {privacypass.UnsupportedError: "unsupported_type", privacypass.KeyIdError: "unknown_key",
            privacypass.DecodeError: "malformed", privacypass.VerifyError: "sign_fault"}


def _problem(status: int, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": detail}, status=status, headers=headers)


async def directory(request: web.Request) -> web.Response:
    """``GET /.well-known/private-token-issuer-directory``; cached until shortly before the key list changes."""
    state = request.app[STATE]
    now = time.time()
    body = state.schedule.directory(state.config.request_path, now).encode()
    cfg = state.config
    max_age = int(min(cfg.directory_max_age, max(1.0, cfg.key_publish_ahead / 2),
                      max(1.0, state.schedule.next_change(now))))
    return web.Response(body=body, content_type=MEDIA_TYPE_DIRECTORY,
                        headers={"Cache-Control": f"public, max-age={max_age}"})


async def token_request(request: web.Request) -> web.Response:
    """``POST`` a TokenRequest, get a TokenResponse."""
    state = request.app[STATE]
    metrics = state.metrics
    if request.content_type != MEDIA_TYPE_TOKEN_REQUEST:
        metrics.rejected.labels("content_type").inc()
        return _problem(415, f"content type must be {MEDIA_TYPE_TOKEN_REQUEST}")
    assert state.attester is not None
    try:
        verdict = await state.attester.attest(request)
    except AttestationRefused as refused:
        metrics.rejected.labels(refused.reason).inc()
        extra = {"WWW-Authenticate": refused.challenge} if refused.challenge else {}
        return _problem(refused.status, "not allowed to get tokens", **extra)
    body = await request.read()
    now = time.time()
    try:
        req = privacypass.TokenRequest.decode(body)
        keys = state.schedule.signing_keys(now)
        if not any(k.public.truncated_key_id == req.truncated_token_key_id for k in keys):
            raise privacypass.KeyIdError("unknown truncated key id")
    except privacypass.RemoteProtocolError as exc:
        metrics.rejected.labels(_REASONS.get(type(exc), "malformed")).inc()
        return _problem(422, str(exc))
    if not state.limits.charge(verdict.subject, verdict.limit, now):
        metrics.rejected.labels("limit").inc()
        retry = int(state.limits.window - now % state.limits.window) + 1
        return _problem(429, "issuance limit reached for this key", **{"Retry-After": str(retry)})
    started = time.perf_counter()
    try:
        response = privacypass.issue(keys, req)
    except privacypass.RemoteProtocolError as exc:
        metrics.rejected.labels(_REASONS.get(type(exc), "malformed")).inc()
        if isinstance(exc, privacypass.VerifyError):
            log.error("a blind signature failed its own check and was not released (hardware fault?)")
            return _problem(500, "signing failed")
        return _problem(422, str(exc))
    metrics.sign_seconds.observe(time.perf_counter() - started)
    metrics.issued.inc()
    return web.Response(body=response, content_type=MEDIA_TYPE_TOKEN_RESPONSE)


async def rotate_loop(app: web.Application, *, interval: float = 1.0) -> None:
    """Keep the key schedule current: drop expired keys, make the next one when due (in a worker thread), reload
    what other processes on the same file did, prune old counts."""
    state = app[STATE]
    while True:
        try:
            made = await asyncio.to_thread(state.schedule.rotate)
            if made:
                state.metrics.rotations.inc()
                log.info("issuer key made; %d keys listed", len(state.schedule.keys))
            state.metrics.keys.set(len(state.schedule.keys))
            state.limits.prune(time.time())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("key rotation step failed; retrying")
        await asyncio.sleep(min(interval, max(0.05, state.config.key_publish_ahead / 4)))
