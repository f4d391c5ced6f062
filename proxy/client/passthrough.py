"""The chat page's same-origin path to the relay: ``/relay`` on ``veil proxy`` forwards OHTTP bytes unchanged.

Why: the page encrypts in the browser and, talking to the relay directly, needs the relay to allow its origin by
CORS (``veil relay --cors-origin``), which a relay operator has no reason to grant a page on someone's loopback.
``veil proxy`` is the user's own process and already holds nothing the page does not: forwarding the page's
ciphertext teaches it nothing new, and the relay sees the same address it would have seen. Requests are rebuilt
from scratch (method, the OHTTP media type, the body), so no browser header (cookie, referrer, user agent,
language) reaches the relay; answers stream back piece by piece, so chunked OHTTP stays incremental.

When the relay requires Privacy Pass tokens, the page spends them in the outer ``Authorization`` header: that
header is forwarded only when it is ``PrivateToken`` (never a browser's Basic/Bearer credentials), and the relay's
``WWW-Authenticate`` challenge comes back. The page gets its tokens through ``/issuer`` (:class:`IssuerPassthrough`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Final

import aiohttp
from aiohttp import web

log = logging.getLogger("veil.proxy")

__all__ = ["PAGE_ISSUER_PATH", "PAGE_LOG_PATH", "PAGE_RELAY_PATH", "IssuerPassthrough", "LogPassthrough",
           "RelayPassthrough", "log_path_limit", "read_bounded"]

#: Where the page served by ``veil proxy`` sends its OHTTP requests (its ``veil-config.json`` says so).
PAGE_RELAY_PATH: Final = "/relay"
_REQUEST_TYPES: Final = frozenset({"message/ohttp-req", "message/ohttp-chunked-req"})
_ACCEPT: Final = frozenset({"application/ohttp-keys", "application/json"})
#: Answer headers the page needs; nothing else of the relay's answer is passed on.
_ANSWER_HEADERS: Final = ("Content-Type", "Cache-Control", "Retry-After", "Incremental", "WWW-Authenticate")
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
            auth = request.headers.get("Authorization", "")
            if auth[:13].lower() == "privatetoken ":  # a Privacy Pass token for the relay; any other credential stays
                headers["Authorization"] = auth
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


#: Where the page served by ``veil proxy --issuer`` gets Privacy Pass tokens (its ``veil-config.json`` says so).
PAGE_ISSUER_PATH: Final = "/issuer"
_TOKEN_REQUEST: Final = "application/private-token-request"
_TOKEN_RESPONSE: Final = "application/private-token-response"
_DIRECTORY: Final = "/.well-known/private-token-issuer-directory"
#: A token request is 259 bytes for type 2; anything much larger is not one.
MAX_TOKEN_REQUEST: Final = 1024


class _SmallFetches:
    """What the issuer's and the log's passthroughs share: one session (30 s a fetch, no cookies, no User-Agent)."""

    _session: aiohttp.ClientSession | None = None

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp ``cleanup_ctx``: the session for the app's life."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                              cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",))
        yield
        await self._session.close()


class IssuerPassthrough(_SmallFetches):
    """``GET /issuer/.well-known/private-token-issuer-directory`` and ``POST /issuer/<request path>`` (token requests
    only, by media type and size) to the issuer, with the proxy's own ``--issuer-key``.

    The page never holds the issuer key: it stays in the proxy (from ``$VEIL_PROXY_ISSUER_KEY``), which attaches it
    to each token request, and any ``Authorization`` the page sends is dropped. The proxy already holds that key for
    its own tokens and is the user's process; what it forwards are blinded token requests, which it cannot link to the
    tokens the page later spends any more than the issuer can. Other origins cannot use it to mint tokens on the
    user's key: the host guard refuses their Host/Origin, and the token-request media type needs a CORS preflight the
    proxy never grants. Nothing else of the issuer (metrics, health) is reachable here.
    """

    def __init__(self, issuer_url: str, api_key: str | None) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        self._api_key = api_key

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PAGE_ISSUER_PATH + _DIRECTORY, self.forward)
        app.router.add_post(PAGE_ISSUER_PATH + "/{tail:[A-Za-z0-9_./-]+}", self.forward)
        app.cleanup_ctx.append(self.ctx)

    async def forward(self, request: web.Request) -> web.Response:
        """One directory fetch or token request, rebuilt from scratch; plain HTTP errors."""
        assert self._session is not None
        headers: dict[str, str] = {}
        body: bytes | None = None
        if request.method == "POST":
            if request.content_type != _TOKEN_REQUEST:
                raise web.HTTPUnsupportedMediaType(text=f"veil proxy: {PAGE_ISSUER_PATH} takes only token requests")
            if request.content_length is not None and request.content_length > MAX_TOKEN_REQUEST:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_TOKEN_REQUEST, actual_size=request.content_length)
            body = await request.content.read(MAX_TOKEN_REQUEST + 1)
            if len(body) > MAX_TOKEN_REQUEST:
                raise web.HTTPRequestEntityTooLarge(max_size=MAX_TOKEN_REQUEST, actual_size=len(body))
            headers = {"Content-Type": _TOKEN_REQUEST, "Accept": _TOKEN_RESPONSE}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
        url = self.issuer_url + request.path[len(PAGE_ISSUER_PATH):]
        try:
            async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
                data = await upstream.read()
                return web.Response(status=upstream.status, body=data, headers={
                    h: upstream.headers[h] for h in ("Content-Type", "Cache-Control", "Retry-After")
                    if h in upstream.headers})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("cannot reach the issuer at %s: %s", self.issuer_url, type(exc).__name__)
            raise web.HTTPBadGateway(text=f"veil proxy: cannot reach the issuer at {self.issuer_url}") from None


#: Where the page served by ``veil proxy --log`` reads the transparency log's tiles (its ``veil-config.json`` says so).
PAGE_LOG_PATH: Final = "/log"


def log_path_limit(path: str) -> int | None:
    """The most bytes the static tlog-tiles ``path`` (``checkpoint``, ``tile/L/N[.p/W]``, ``tile/entries/N[.p/W]``)
    may hold, or None when it is not one, in its one canonical spelling: nothing else of the log's server is reachable
    through the proxy."""
    from tlog import entries_path, tile_path
    from tlog.errors import MalformedError
    from tlog.tiles import parse_tile_path
    from transparency.client import max_bytes

    try:
        if path.startswith("tile/entries/"):
            _, index, width = parse_tile_path("0", path[len("tile/entries/"):])
            canonical = entries_path(index, width) == path
        elif path.startswith("tile/"):
            level, _, rest = path[len("tile/"):].partition("/")
            lv, index, width = parse_tile_path(level, rest)
            canonical = tile_path(lv, index, width) == path
        else:
            canonical = path == "checkpoint"
    except MalformedError:
        return None
    return max_bytes(path) if canonical else None


async def read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, read until its end or ``limit + 1`` bytes (one ``read(n)`` returns as soon as any bytes
    arrived: a body written in pieces would come back cut short)."""
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        piece = await stream.read(limit + 1 - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


class LogPassthrough(_SmallFetches):
    """``GET /log/<static tlog-tiles path>`` to the ``--log`` URL, so the page can prove a newer (or older) checkpoint
    consistent with the one it kept: the log's server needs no CORS rule, and the page reaches only its static files
    (checked by :func:`log_path_limit`, answers bounded by the path's size). The proxy already reads the same files
    itself; nothing the page sends is forwarded but the path."""

    def __init__(self, log_url: str) -> None:
        self.log_url = log_url.rstrip("/")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PAGE_LOG_PATH + "/checkpoint", self.forward, allow_head=False)
        app.router.add_get(PAGE_LOG_PATH + "/tile/{tail:[0-9a-z./]+}", self.forward, allow_head=False)
        app.cleanup_ctx.append(self.ctx)

    async def forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        path = request.path[len(PAGE_LOG_PATH) + 1:]
        limit = log_path_limit(path)
        if limit is None:
            raise web.HTTPNotFound(text="veil proxy: not a tlog-tiles path")
        try:
            # No redirects: the log's operator must not make the proxy fetch any other URL.
            async with self._session.get(f"{self.log_url}/{path}", allow_redirects=False) as upstream:
                if upstream.status != 200:
                    return web.Response(status=404 if upstream.status == 404 else 502,
                                        text=f"veil proxy: the log answered HTTP {upstream.status}")
                if upstream.content_length is not None and upstream.content_length > limit:
                    raise web.HTTPBadGateway(text=f"veil proxy: the log's {path} exceeds {limit} bytes")
                data = await read_bounded(upstream.content, limit)
                if upstream.content_length is not None and len(data) != upstream.content_length:
                    raise web.HTTPBadGateway(text=f"veil proxy: the log's {path} ended after {len(data)} of "
                                                  f"{upstream.content_length} bytes")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("cannot reach the log at %s: %s", self.log_url, type(exc).__name__)
            raise web.HTTPBadGateway(text=f"veil proxy: cannot reach the log at {self.log_url}") from None
        if len(data) > limit:
            raise web.HTTPBadGateway(text=f"veil proxy: the log's {path} exceeds {limit} bytes")
        ctype = "text/plain; charset=utf-8" if path == "checkpoint" else "application/octet-stream"
        return web.Response(body=data, headers={"Content-Type": ctype, "Cache-Control": "no-store"})
