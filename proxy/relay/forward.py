"""``POST /NAME``: forward one encapsulated request to the allow-listed gateway NAME and stream its answer back.

The relay's half of RFC 9458's promise: the forwarded request is built from scratch (content type and framing;
no client address, cookie, user agent or other client header), the answer keeps only ``Content-Type`` and
``Incremental``, both directions stream without buffering, and every limit (size, rate, concurrency, time) is
checked before a byte reaches the gateway. A refusal is the relay's own plain-HTTP problem; a gateway that cannot
be reached is a 502, one that is too slow a 504. Once a response has started, a failure cuts the stream short so
the client sees truncation, never a silent success.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

import hop

from . import cors
from .errors import bad_gateway, forbidden, gateway_timeout, refuse
from .limits import BodyClock
from .metrics import Inc
from .pool import ReplicaPool
from .state import STATE, RelayState

MEDIA_REQ: Final = "message/ohttp-req"
MEDIA_CHUNKED_REQ: Final = "message/ohttp-chunked-req"
#: Response headers from the gateway that reach the client; everything else is dropped.
PASS_RESPONSE: Final = ("Content-Type", "Incremental")


async def forward(request: web.Request) -> web.StreamResponse:
    """``POST /NAME`` (or ``/``): forward an encapsulated request to the allow-listed gateway NAME."""
    resp = await _admit(request)
    if not resp.prepared:  # the relay's own refusals (403, 413, 429, ...) must be readable by browser pages too
        cors.allow(request, resp)
    return resp


async def forbidden_post(request: web.Request) -> web.Response:
    """``POST`` to any other path (``/a/b``, ``/gw/x``): not a gateway of the allow list; readable by allowed pages
    as every other refusal is (without CORS headers a browser shows the page a network error instead)."""
    resp = forbidden(request.app[STATE].metrics)
    cors.allow(request, resp)
    return resp


def _too_large(state: RelayState) -> web.Response:
    return refuse(state.metrics, "too_large", 413, "request too large",
                  f"limit is {state.config.max_request_bytes} bytes")


#: The forwarded request's headers, built from scratch: content type, framing, nothing else of the client's.
_FORWARD_HEADERS: Final = {MEDIA_REQ: (("Content-Type", MEDIA_REQ),),
                           MEDIA_CHUNKED_REQ: (("Content-Type", MEDIA_CHUNKED_REQ), ("Incremental", "?1"))}


class _TooLarge(Exception):
    pass


#: What reading a client's body can end in (too large, too slow, malformed framing, the client gone).
_BODY_FAILURES: Final = (_TooLarge, asyncio.TimeoutError, HttpProcessingError, OSError)


def _body_failed(state: RelayState, exc: BaseException) -> web.StreamResponse:
    if isinstance(exc, _TooLarge):
        return _too_large(state)
    if isinstance(exc, asyncio.TimeoutError):
        return _too_slow(state)
    if isinstance(exc, HttpProcessingError):
        return _bad_body(state)
    return _client_gone(state)


def _bad_body(state: RelayState) -> web.Response:
    return refuse(state.metrics, "bad_request", 400, "bad request", "the request body's framing is malformed")


def _client_gone(state: RelayState) -> web.StreamResponse:
    """The client's connection broke while its request body was read or forwarded: nobody is left to answer."""
    state.metrics.outcome("client_gone").inc()
    return web.StreamResponse()


def _too_slow(state: RelayState) -> web.Response:
    return refuse(state.metrics, "client_timeout", 408, "request timeout", "the request body arrived too slowly")


async def _admit(request: web.Request) -> web.StreamResponse:
    """The relay's own checks, cheapest first; then the request holds a slot while it is forwarded."""
    state = request.app[STATE]
    metrics = state.metrics
    pool = state.target(request.match_info.get("name", ""))
    if pool is None:
        return forbidden(metrics)
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in (MEDIA_REQ, MEDIA_CHUNKED_REQ):
        return refuse(metrics, "media_type", 415, "unsupported media type", f"send {MEDIA_REQ} or {MEDIA_CHUNKED_REQ}")
    cfg = state.config
    if request.content_length is not None and request.content_length > cfg.max_request_bytes:
        return _too_large(state)
    # --require-token: a missing, malformed or forged token is refused here, before the request takes a slot or an
    # in-flight unit or its body is read (else tokenless requests with slow bodies could hold every slot); the
    # token is spent only later (redeem), so a request refused by the limits below keeps it.
    if state.check_token is not None and (refused_token := await state.check_token(request)) is not None:
        return refused_token
    clock = BodyClock(cfg.body_timeout, cfg.min_rate, cfg.max_body_time)  # from the end of the request head
    client = state.limits.client_key(request)
    admission = state.admission
    refused = admission.admit(client)  # rate, then slots, then the address's in flight (one lock with workers)
    if refused == "rate_limited":
        return refuse(metrics, "rate_limited", 429, "too many requests", "slow down", {"Retry-After": "60"})
    if refused == "busy":
        return refuse(metrics, "busy", 503, "relay busy", "too many concurrent requests", {"Retry-After": "1"})
    if refused is not None:
        return refuse(metrics, "address_busy", 429, "too many requests at once",
                      "too many requests from this address are in flight", {"Retry-After": "1"})
    metrics.in_flight.inc()
    try:
        return await _forward(request, state, pool, ctype, clock)
    finally:
        metrics.in_flight.dec()
        admission.release(client)



def _count(piece: bytes, limit: int, counter: Inc, clock: BodyClock) -> None:
    """Account for one piece of a request body: its deadline grows with it, and past ``limit`` it is refused."""
    clock.received += len(piece)
    if clock.received > limit:
        raise _TooLarge()
    counter.inc(len(piece))


async def _body(request: web.Request, limit: int, timeout: float, counter: Inc,
                clock: BodyClock, first: bytearray) -> AsyncIterator[bytes]:
    """A streamed ``message/ohttp-chunked-req`` body; its first byte (the key id) is kept in ``first``. A body that
    misses its deadline raises ``TimeoutError`` (a 408 in ``_body_failed``)."""
    it = request.content.iter_any().__aiter__()
    while True:
        try:
            async with asyncio.timeout(clock.remaining(timeout)):  # not wait_for: that wraps every piece in a task
                piece = await it.__anext__()
        except StopAsyncIteration:
            return
        if not first and piece:
            first.append(piece[0])
        _count(piece, limit, counter, clock)
        yield piece


async def _whole_body(request: web.Request, limit: int, timeout: float, counter: Inc, clock: BodyClock) -> bytes:
    """A ``message/ohttp-req`` body: the same limits and deadlines as :func:`_body`, but what has arrived already
    is taken without waiting (the common case: the whole small body came with the headers)."""
    content = request.content
    parts: list[bytes] = []
    while piece := content.read_nowait():
        _count(piece, limit, counter, clock)
        parts.append(piece)
    while not content.at_eof():
        async with asyncio.timeout(clock.remaining(timeout)):
            piece = await content.readany()
        if not piece:
            break
        _count(piece, limit, counter, clock)
        parts.append(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _forward(request: web.Request, state: RelayState, pool: ReplicaPool, ctype: str,
                   clock: BodyClock) -> web.StreamResponse:
    cfg = state.config
    metrics = state.metrics
    assert state.client is not None
    up_bytes = metrics.bytes_up
    headers = _FORWARD_HEADERS[ctype]
    data: bytes | AsyncIterator[bytes]
    first = bytearray()  # the request's key id (RFC 9458 §4.1: the first byte of the encapsulated request)
    if ctype == MEDIA_CHUNKED_REQ and not request.content.is_eof():
        data = _body(request, cfg.max_request_bytes, cfg.client_timeout, up_bytes, clock, first)
    else:
        # A whole message, or an incremental one that has arrived completely already (the usual chat request):
        # forwarded in one piece with a Content-Length, rather than as chunks and a terminator in separate sends.
        try:
            data = await _whole_body(request, cfg.max_request_bytes, cfg.client_timeout, up_bytes, clock)
        except _BODY_FAILURES as exc:
            return _body_failed(state, exc)
        first += data[:1]
    if state.redeem is not None and (refused := await state.redeem(request)) is not None:
        return refused  # --require-token: verified before admission, spent only now (the double-spend check)
    t0 = time.perf_counter()
    try:
        # Another replica is tried only when nothing was sent (connection refused or timed out); never after.
        upstream, replica = await pool.post(state.client, data, headers, metrics.retries)
    except _BODY_FAILURES as exc:  # the client's streamed body, while it was being forwarded
        return _body_failed(state, exc)
    except hop.HopError as exc:
        if isinstance(exc, hop.ReadTimeout) or (isinstance(exc, hop.ConnectFailed) and exc.timed_out):
            metrics.outcome("gateway_timeout").inc()
            return gateway_timeout("the gateway did not answer in time")
        metrics.outcome("gateway_error").inc()
        return bad_gateway()
    metrics.latency.observe(time.perf_counter() - t0)
    if upstream.status == 422 and first:
        state.keycache.key_rejected(pool.name, first[0])
    try:
        return await _stream_back(request, state, upstream)
    except (ConnectionResetError, OSError):
        return _client_gone(state)
    finally:
        upstream.release()
        replica.release()


class _TooLong(hop.HopError):
    """The gateway's answer grew past ``--max-response-bytes``."""


class _Pipe:
    """The gateway's answer, piece by piece, from its socket's callback onto the client's socket (no task wakes up
    per piece; see :mod:`hop.client`), counted and cut off past the limit."""

    __slots__ = ("downstream", "limit", "total", "down")

    def __init__(self, downstream: hop.Downstream, limit: int, total: int, down: Inc) -> None:
        self.downstream = downstream
        self.limit = limit
        self.total = total
        self.down = down

    def __call__(self, piece: bytes) -> None:
        self.total += len(piece)
        if self.total > self.limit:
            self.downstream.upstream.abort(_TooLong("the answer grew past --max-response-bytes"))
            return
        self.down.inc(len(piece))
        self.downstream.write(piece)


async def _stream_back(request: web.Request, state: RelayState, upstream: hop.Response) -> web.StreamResponse:
    """The gateway's answer, with only :data:`PASS_RESPONSE` headers, cut off past ``max_response_bytes``: one whose
    ``Content-Length`` says it is too large is a 502 before anything is sent; one that grows past the limit, or that
    the gateway breaks off, has its client connection closed short of the body's end."""
    metrics = state.metrics
    limit = state.config.max_response_bytes
    if upstream.content_length is not None and upstream.content_length > limit:
        metrics.outcome("response_too_large").inc()
        upstream.close()
        return bad_gateway("the gateway's answer is larger than this relay forwards")
    out_headers = {k: v for k in PASS_RESPONSE if (v := upstream.headers.get(k.lower())) is not None}
    out_headers["Cache-Control"] = "no-store"
    resp = hop.HeadWithBody(status=upstream.status, headers=out_headers)
    if upstream.content_length is not None and "Incremental" not in out_headers:
        resp.content_length = upstream.content_length
    else:
        resp.enable_chunked_encoding()
    cors.allow(request, resp)
    await resp.prepare(request)
    down = metrics.bytes_down
    try:
        # The first piece goes through aiohttp's writer, with the status line and headers in the same send; the
        # rest is piped. The relay never looks inside a piece.
        total = 0
        while piece := await upstream.readany():  # the first piece; all of a body that had arrived whole
            total += len(piece)
            if total > limit:
                raise _TooLong("the answer grew past --max-response-bytes")
            down.inc(len(piece))
            await resp.write(piece)
            if not upstream.done:  # the rest is piped
                downstream = hop.Downstream(upstream, hop.client_transport(request), chunked=resp.chunked)
                upstream.pipe(_Pipe(downstream, limit, total, down))
                await upstream.finished()
                break
    except hop.ClientGone:
        raise ConnectionResetError("the client closed its connection") from None
    except _TooLong:
        metrics.outcome("response_too_large").inc()
        upstream.close()
        return hop.cut(request, resp)
    except hop.HopError:
        metrics.outcome("gateway_broke").inc()
        return hop.cut(request, resp)
    await resp.write_eof()
    metrics.outcome("ok" if upstream.status == 200 else f"gateway_{upstream.status // 100}xx").inc()
    return resp

