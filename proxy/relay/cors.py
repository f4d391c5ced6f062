"""CORS for browser front ends that talk to the relay directly (proxy/web): which origins may read its answers.

Every answer the relay makes (forwarded responses, cached keys and evidence, its own refusals) goes through
:func:`allow`, so a page can tell "refused" from "unreachable"; nothing else of the relay depends on the origin.
"""

from __future__ import annotations

from aiohttp import web

from .state import STATE


def allow(request: web.Request, resp: web.StreamResponse) -> None:
    """Let the request's origin read ``resp`` when it is one of the configured ``cors_origins`` (or they hold *)."""
    origin = request.headers.get("Origin")
    allowed = request.app[STATE].config.cors_origins
    if origin and ("*" in allowed or origin in allowed):
        resp.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
        if "*" not in allowed:
            resp.headers["Vary"] = "Origin"
        if "WWW-Authenticate" in resp.headers:  # a token refusal's challenge, for a page that fetches tokens
            resp.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"


async def preflight(request: web.Request) -> web.Response:
    """``OPTIONS``: CORS preflight for browser front ends on the allowed origins."""
    resp = web.Response(status=204)
    allow(request, resp)
    if "Access-Control-Allow-Origin" in resp.headers:
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = "Content-Type, Incremental, Accept, Authorization"
        resp.headers["Access-Control-Max-Age"] = "600"
    return resp
