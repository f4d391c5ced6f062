"""The chat page's same-origin path to the relay: ``/relay`` on ``veil proxy`` forwards OHTTP bytes unchanged.

Why: the page encrypts in the browser and, talking to the relay directly, needs the relay to allow its origin by
CORS (``veil relay --cors-origin``), which a relay operator has no reason to grant a page on someone's loopback.
``veil proxy`` is the user's own process and already holds nothing the page does not: forwarding the page's
ciphertext teaches it nothing new, and the relay sees the same address it would have seen. Requests are rebuilt
from scratch (method, the OHTTP media type, the body), so no browser header (cookie, referrer, user agent,
language) reaches the relay; answers stream back piece by piece, so chunked OHTTP stays incremental.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Final

import aiohttp
from aiohttp import web

log = logging.getLogger("veil.proxy")

__all__ = ["PAGE_RELAY_PATH", "RelayPassthrough"]

#: Where the page served by ``veil proxy`` sends its OHTTP requests (its ``veil-config.json`` says so).
PAGE_RELAY_PATH: Final = "/relay"
_REQUEST_TYPES: Final = frozenset({"message/ohttp-req", "message/ohttp-chunked-req"})
_ACCEPT: Final = frozenset({"application/ohttp-keys", "application/json"})
#: Answer headers the page needs; nothing else of the relay's answer is passed on.
_ANSWER_HEADERS: Final = ("Content-Type", "Cache-Control", "Retry-After", "Incremental")
MAX_BODY: Final = 64 * 1024 * 1024


class RelayPassthrough:
    """Forwards ``GET /relay`` (keys), ``GET /relay/attestation`` and ``POST /relay`` to one relay URL."""

    def __init__(self, relay_url: str) -> None:
        self.relay_url = relay_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: one pooled session to the relay for the app's life."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, skip_auto_headers=(
            "User-Agent", "Accept-Encoding"))
        yield
        await self._session.close()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """One page request, forwarded as fresh bytes; plain HTTP errors (nothing here is decrypted)."""
        assert self._session is not None
        url = self.relay_url + request.path[len(PAGE_RELAY_PATH):]
        headers: dict[str, str] = {}
        body: bytes | None = None
        if request.method == "POST":
            ctype = request.content_type
            if ctype not in _REQUEST_TYPES:
                raise web.HTTPUnsupportedMediaType(text=f"veil proxy: {PAGE_RELAY_PATH} takes only OHTTP requests")
            if request.content_length is not None and request.content_length > MAX_BODY:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
            body = await request.read()
            headers["Content-Type"] = ctype
            if request.headers.get("Incremental") == "?1":
                headers["Incremental"] = "?1"
        accept = request.headers.get("Accept", "").split(";")[0].strip()
        if accept in _ACCEPT:
            headers["Accept"] = accept
        resp: web.StreamResponse | None = None
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
                resp = web.StreamResponse(status=upstream.status, headers={
                    h: upstream.headers[h] for h in _ANSWER_HEADERS if h in upstream.headers})
                if upstream.content_length is not None:
                    resp.content_length = upstream.content_length
                await resp.prepare(request)
                async for piece in upstream.content.iter_any():
                    await resp.write(piece)
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionResetError) as exc:
            if resp is not None:
                # Mid-answer: the headers are out. Ending the connection is the signal; the page's OHTTP decoder
                # refuses a truncated answer (chunked OHTTP's final chunk is authenticated).
                log.warning("the relay's answer broke off: %s", type(exc).__name__)
                if request.transport is not None:
                    request.transport.close()
                return resp
            log.warning("cannot reach the relay at %s: %s", self.relay_url, type(exc).__name__)
            raise web.HTTPBadGateway(text=f"veil proxy: cannot reach the relay at {self.relay_url}") from None
