"""``veil proxy``: a local OpenAI-compatible endpoint; every request leaves this machine encapsulated.

The SDK talks plain HTTP to 127.0.0.1; the proxy encapsulates the whole request (method, path, headers, body)
as BHTTP to the verified gateway key and sends it through the relay. ``stream: true`` travels as chunked OHTTP
and is re-emitted as SSE as chunks arrive: through a :class:`hop.Pool` (``veil proxy`` makes its client with one),
each piece is decrypted in the relay socket's callback and written straight onto the SDK's connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Final

import orjson
from aiohttp import web

import hop
from enclave.attestation import Verdict

from ..transport import ATTESTATION_HEADER, ChunkedStream, OhttpClient, VeilClientError, wants_stream
from .guard import host_guard
from .passthrough import (
    PAGE_ISSUER_PATH,
    PAGE_LOG_PATH,
    PAGE_RELAY_PATH,
    IssuerPassthrough,
    LogPassthrough,
    RelayPassthrough,
)
from .tokens import TokenUnavailable, TokenWallet

if TYPE_CHECKING:
    from tlog import Verifier as NoteVerifier

    from ..verify import Transparency

log = logging.getLogger("veil.proxy")

API_KEY_MODES: Final = ("auto", "always", "never")
#: Inner response headers not handed on: hop-by-hop ones, and those aiohttp writes itself.
_HOP: Final = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date", b"server"})


@dataclass
class ProxyState:
    """Per-app state."""

    client: OhttpClient
    api_key_mode: str = "auto"
    gateway_wants_key: bool = False
    started: float = 0.0
    #: Privacy Pass tokens for a relay that requires them (``--issuer``); its middleware is on ``client``'s session
    tokens: TokenWallet | None = None


STATE = web.AppKey("STATE", ProxyState)


def _openai_error(status: int, message: str, code: str) -> web.Response:
    body = {"error": {"message": message, "type": "veil_error", "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _attestation_header(state: ProxyState) -> dict[str, str]:
    keys = state.client.keys
    if keys is None:
        return {}
    return {ATTESTATION_HEADER.decode(): keys.attestation.decode()}


async def api(request: web.Request) -> web.StreamResponse:
    """Any ``/v1/...`` request: encapsulate, send through the relay, answer with the gateway's response."""
    state = request.app[STATE]
    body = await request.read()
    headers = list(request.headers.items())
    auth = [(n, v) for n, v in headers if n.lower() == "authorization"]
    headers = [(n, v) for n, v in headers if n.lower() != "authorization"]
    if state.api_key_mode == "always" or (state.api_key_mode == "auto" and state.gateway_wants_key):
        headers += auth
    stream = request.method == "POST" and wants_stream(body)
    path = request.path_qs
    try:
        inner = await state.client.request(request.method, path, headers, body, chunked=stream)
        if (inner.status == 401 and state.api_key_mode == "auto" and not state.gateway_wants_key and auth):
            # The gateway asks for API keys: from now on the SDK's key travels (inside the encapsulation only).
            state.gateway_wants_key = True
            if inner.pieces is not None:
                async for _ in inner.pieces:
                    pass
            inner = await state.client.request(request.method, path, headers + auth, body, chunked=stream)
    except VeilClientError as exc:
        log.warning("request failed: %s", exc)
        return _openai_error(exc.status if exc.status >= 400 else 502, f"Veil: {exc}", exc.code)
    # Bytes until here, where aiohttp wants str.
    out_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in inner.caller_headers(_HOP, state.client.keys)]
    if inner.pieces is None:
        return web.Response(status=inner.status, body=inner.body, headers=out_headers)
    resp = hop.HeadWithBody(status=inner.status, headers=out_headers)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        if isinstance(inner.pieces, ChunkedStream):
            await _pipe(request, resp, inner.pieces)
        else:
            async for piece in inner.pieces:
                await resp.write(piece)
    except VeilClientError as exc:
        # The head is decided: tell the SDK in-band, as an SSE error event (the openai SDK raises it), then cut the
        # connection short of the final HTTP chunk, so that any client sees truncation rather than an end.
        log.warning("stream failed: %s", exc)
        err = {"error": {"message": f"Veil: {exc}", "type": "veil_error", "code": "veil_stream_broken"}}
        try:
            await resp.write(b"data: " + orjson.dumps(err) + b"\n\n")
        except (ConnectionResetError, OSError):
            pass
        return hop.cut(request, resp)
    except (ConnectionResetError, OSError, hop.ClientGone):
        await _drain_close(inner.pieces)
        return resp
    await resp.write_eof()
    return resp



async def _pipe(request: web.Request, resp: web.StreamResponse, stream: ChunkedStream) -> None:
    """The first piece through aiohttp's writer (with the head), the rest piped from the relay's socket onto the
    SDK's: no task wakes up per token, and reading from the relay stops while the SDK leaves too much unread
    (:class:`hop.Downstream`)."""
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        return
    await resp.write(first)
    stream.pipe(hop.Downstream(stream.upstream, hop.client_transport(request), chunked=True).write)
    await stream.finished()



async def _drain_close(pieces: AsyncIterator[bytes]) -> None:
    aclose = getattr(pieces, "aclose", None)
    if aclose is not None:
        await aclose()


async def attestation(request: web.Request) -> web.Response:
    """``GET /v1/veil/attestation``: what this proxy verified about the gateway it talks to."""
    state = request.app[STATE]
    keys = state.client.keys
    if keys is None:
        return _openai_error(503, "No gateway key verified yet.", "veil_not_ready")
    v = keys.verification
    verdict = v.to_json() if isinstance(v, Verdict) else {}
    doc = {
        "relay": state.client.url,
        "verified_at": keys.fetched_at,
        "simulated": keys.simulated,
        "trusted": bool(verdict.get("ok")) and not keys.simulated,
        "platform": verdict.get("platform", "unknown"),
        "key_id": keys.config.key_id,
        "kem": keys.config.kem.name,
        "post_quantum": keys.config.kem.post_quantum,
        "suites": [f"{s.kdf.name}/{s.aead.name}" for s in keys.config.suites],
        "measurement": verdict.get("measurement"),
        "checks": verdict.get("checks", []),
        "claims": verdict.get("claims", {}),
        "document": v.document() if isinstance(v, Verdict) else None,
        "warning": "SIMULATED attestation: no TEE protects this gateway" if keys.simulated else None,
    }
    return web.Response(body=orjson.dumps(doc, default=str), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """Ready once a verified key is held."""
    state = request.app[STATE]
    ok = state.client.keys is not None
    body = {"status": "ok" if ok else "no verified key", **_attestation_header(state)}
    return web.Response(status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json")


async def _client_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.started = time.time()
    prefetch = asyncio.create_task(_prefetch(state.tokens)) if state.tokens is not None else None
    try:
        await state.client.refresh_keys()
    except Exception as exc:  # keep serving: each request retries the fetch and reports the error
        log.error("could not verify the gateway yet: %s", exc)
    if prefetch is not None:
        await prefetch  # so the first request spends a token it already holds
    yield
    await state.client.close()
    if state.tokens is not None:
        await state.tokens.close()


async def _prefetch(wallet: TokenWallet) -> None:
    """Fill the token pool before serving; without tokens yet, keep serving (each request tries again)."""
    try:
        await wallet.prefetch()
    except TokenUnavailable as exc:
        log.error("no Privacy Pass tokens yet: %s", exc)


def create_app(
    client: OhttpClient, *, api_key_mode: str = "auto", static_dir: str | None = None, allow_simulated: bool = False,
    hosts: frozenset[str] | None = None, tokens: TokenWallet | None = None, require_post_quantum: bool = False,
    transparency: Transparency | None = None,
) -> web.Application:
    """Build the client proxy application; ``static_dir`` serves the browser chat page (``proxy/web``) at ``/``;
    ``hosts`` (``guard.allowed_hosts``) restricts the ``Host``/``Origin`` it answers (DNS rebinding); ``tokens`` is
    the wallet whose middleware ``client``'s session carries (filled before serving, closed with the app);
    ``require_post_quantum`` (the policy's) tells the page to refuse gateways without an X-Wing key;
    ``transparency`` (``--publisher --log --log-key``) tells the page the same keys, so it requires the gateway's log
    proofs, and serves the log's static files at ``/log`` for its consistency proofs."""
    app = web.Application(client_max_size=64 * 1024 * 1024,
                          middlewares=[host_guard(hosts)] if hosts is not None else [])
    app[STATE] = ProxyState(client=client, api_key_mode=api_key_mode, tokens=tokens)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/veil/attestation", attestation)
    app.router.add_route("*", "/v1/{tail:.*}", api)
    if static_dir is not None:
        app.router.add_get("/", _index(static_dir))
        app.router.add_get("/veil-config.json", _web_config(client.url, allow_simulated, tokens,
                                                                  require_post_quantum, transparency))
        app.router.add_static("/static/", static_dir)
        relay = RelayPassthrough(client.url)
        app.router.add_get(PAGE_RELAY_PATH, relay.forward)
        app.router.add_post(PAGE_RELAY_PATH, relay.forward)
        app.router.add_get(PAGE_RELAY_PATH + "/attestation", relay.forward)
        app.cleanup_ctx.append(relay.ctx)
        if tokens is not None:
            IssuerPassthrough(tokens.issuer_url, tokens.api_key).add_routes(app)
        if transparency is not None:
            LogPassthrough(transparency.log).add_routes(app)
    app.cleanup_ctx.append(_client_ctx)
    return app


def _web_config(relay: str, allow_simulated: bool, tokens: TokenWallet | None,  # type: ignore[no-untyped-def]
                require_post_quantum: bool = False, transparency: Transparency | None = None):
    """``GET /veil-config.json``: where the page sends its OHTTP requests (this proxy's same-origin relay path, so
    the relay needs no CORS rule for the page) and which relay they reach. The page encrypts in the browser. With
    ``--issuer``, ``tokens`` says where the page gets Privacy Pass tokens (the same-origin issuer path) and the
    issuer's name in the relay's challenge; the page blinds and spends them itself. With ``--publisher --log
    --log-key``, ``transparency`` gives the page the publisher, log and witness keys (it then requires the gateway's
    log proofs) and the same-origin path to the log's tiles."""
    doc: dict[str, object] = {"relay": PAGE_RELAY_PATH, "relay_upstream": relay, "allow_simulated": allow_simulated,
                              "require_post_quantum": require_post_quantum}
    if tokens is not None:
        doc["tokens"] = {"issuer": PAGE_ISSUER_PATH, "issuer_name": tokens.challenge.issuer_name,
                         "issuer_upstream": tokens.issuer_url}
    if transparency is not None:
        def vkey(k: str | NoteVerifier) -> str:
            return k if isinstance(k, str) else k.vkey()

        doc["transparency"] = {"publishers": [vkey(k) for k in transparency.publishers],
                               "log_key": vkey(transparency.log_key),
                               "witnesses": [vkey(k) for k in transparency.witnesses],
                               "min_witnesses": transparency.min_witnesses, "log": PAGE_LOG_PATH,
                               "log_upstream": transparency.log}
    body = orjson.dumps(doc)

    async def web_config(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    return web_config


def _index(static_dir: str):  # type: ignore[no-untyped-def]
    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(f"{static_dir}/index.html")

    return index
