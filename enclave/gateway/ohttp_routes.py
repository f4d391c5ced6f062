"""The OHTTP surface of the gateway (RFC 9458, RFC 9540 conventions).

Layers, each mapped to its errors in one place:
- before decapsulation: plain HTTP status with ``application/problem+json`` (415, 400, 413, 422 ``ohttp-key``);
- after decapsulation: everything is encapsulated; the outer response is always 200 and reveals nothing of the
  inner status or headers;
- inside the API: OpenAI error JSON (``enclave.api``).
Once a chunked response has started it cannot be rewritten: an engine failure becomes an SSE error event followed
by a proper final chunk; anything worse ends the stream without its final chunk, which the client sees as truncation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import AsyncIterator, Callable, Final

import orjson
from aiohttp import web
from prometheus_client import Counter

import hop
import ohttp
from ohttp import bhttp

from ..attestation.errors import AttestationError
from ..engines import EngineUnavailable, InnerResponse
from ..engines.sse import SseStream
from .app_state_keys import STATE
from .inner import MAX_REQUEST_CHUNKS as _MAX_REQUEST_CHUNKS
from .inner import serve_inner
from .state import GatewayState

log = logging.getLogger("veil.gateway")

PROBLEM_KEY: Final = "https://iana.org/assignments/http-problem-types#ohttp-key"
_NO_STORE: Final = "private, no-store"


def problem(status: int, title: str, *, type_: str = "about:blank", detail: str | None = None) -> web.Response:
    """An unencapsulated RFC 9457 problem response (only for errors before decapsulation)."""
    body: dict[str, object] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/problem+json",
        headers={"Cache-Control": "no-store"},
    )


def _outer_error(exc: ohttp.RemoteProtocolError, *, header_ok: bool = False) -> tuple[web.Response, str]:
    # A chunk that fails to open after the HPKE set-up succeeded is tampering or truncation, not a stale key:
    # answering 422 there would send an honest client to refresh keys for nothing.
    if isinstance(exc, ohttp.KeyIdError) or (isinstance(exc, ohttp.DecryptError) and not header_ok):
        return problem(422, "key identifier unknown", type_=PROBLEM_KEY, detail=str(exc)), "key_error"
    if isinstance(exc, ohttp.LimitError):
        return problem(413, "request too large", detail=str(exc)), "too_large"
    return problem(400, "malformed encapsulated request", detail=str(exc)), "decode_error"


async def _read_body(request: web.Request, limit: int, deadline: float) -> bytes | None:
    """The request body, or ``None`` if it exceeds ``limit`` (checked while reading, not trusted from headers);
    ``TimeoutError`` if it has not arrived by ``deadline`` (the loop's clock)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    content = request.content
    parts: list[bytes] = []
    total = 0
    while True:
        # What has arrived already is taken without waiting (usually the whole body came with the headers).
        piece = content.read_nowait()
        if not piece:
            if content.at_eof():
                break
            async with asyncio.timeout_at(deadline):
                piece = await content.readany()
            if not piece:
                break
        total += len(piece)
        if total > limit:
            return None
        parts.append(piece)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _within(request: web.Request, deadline: float) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive; ``TimeoutError`` if it has not arrived in full by ``deadline``."""
    while True:
        async with asyncio.timeout_at(deadline):  # around each read only: never across a yield
            piece = await request.content.readany()
        if not piece:
            return
        yield piece


def _body_deadline(state: GatewayState) -> float:
    return asyncio.get_running_loop().time() + state.config.body_timeout


def _media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";")[0].strip().lower()


# ------------------------------------------------------------------------------------------------------------------
# Keys and evidence


async def get_keys(request: web.Request) -> web.Response:
    """``GET /.well-known/ohttp-gateway``: the published ``application/ohttp-keys``."""
    state = request.app[STATE]
    accept = request.headers.get("Accept", "*/*")
    if not any(a.split(";")[0].strip() in (ohttp.MEDIA_TYPE_KEYS, "*/*", "application/*") for a in accept.split(",")):
        return problem(406, "not acceptable", detail=f"this resource is {ohttp.MEDIA_TYPE_KEYS}")
    await state.refresh_async()
    return web.Response(
        body=state.keys_body,
        content_type=ohttp.MEDIA_TYPE_KEYS,
        headers={"Cache-Control": f"max-age={_max_age(state)}"},
    )


def _max_age(state: GatewayState) -> int:
    age = state.config.keys_max_age
    change = state.keyring.next_change()
    if change is not None:
        age = min(age, max(0, int(change - time.time())))
    due = state.refresh_due()
    if due is not None:  # no cache may keep evidence (or the keys it binds) past the moment it is re-collected
        age = min(age, max(0, int(due - time.time())))
    return age


async def get_attestation(request: web.Request) -> web.Response:
    """``GET /.well-known/veil-attestation[?nonce=HEX32]``: the evidence bundle for the published keys."""
    state = request.app[STATE]
    await state.refresh_async()
    nonce_hex = request.query.get("nonce")
    if nonce_hex is None:
        body = state.bundle_json
        age = _max_age(state)
        if state.config.transparency_log is not None and state.log_proofs is None:
            # the log's proofs are expected soon (the operator logs the key after start): let caches refetch
            age = min(age, math.ceil(state.config.transparency_refresh))
        cache = f"max-age={age}"
    else:
        try:
            nonce = bytes.fromhex(nonce_hex)
        except ValueError:
            nonce = b""
        if len(nonce) != 32:
            return problem(400, "bad nonce", detail="nonce must be 64 hex characters (32 bytes)")
        now = time.monotonic()
        if now - state.last_fresh_evidence < state.config.fresh_evidence_interval:
            return problem(429, "fresh evidence rate limit", detail="retry in a second")
        state.last_fresh_evidence = now
        try:
            # A hardware round trip (configfs-tsm, vTPM, NSM) that can take a second: off the event loop.
            bundle = await asyncio.to_thread(state.collect, state.keys_body, nonce)
        except AttestationError as exc:
            log.error("fresh evidence collection failed: %s", exc)
            return problem(503, "evidence unavailable", detail="the gateway could not collect fresh evidence")
        body = state.with_log_proofs(bundle).to_json()
        cache = "no-store"
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": cache})


# ------------------------------------------------------------------------------------------------------------------
# Encapsulated requests


async def post_gateway(request: web.Request) -> web.StreamResponse:
    """``POST /.well-known/ohttp-gateway`` with ``message/ohttp-req`` or ``message/ohttp-chunked-req``."""
    mtype = _media_type(request)
    if mtype == ohttp.MEDIA_TYPE_REQUEST:
        return await _post_plain(request)
    if mtype == ohttp.MEDIA_TYPE_CHUNKED_REQUEST:
        return await _post_chunked(request)
    request.app[STATE].metrics.requests.labels("none", "media_type").inc()
    return problem(
        415,
        "unsupported media type",
        detail=f"send {ohttp.MEDIA_TYPE_REQUEST} or {ohttp.MEDIA_TYPE_CHUNKED_REQUEST}",
    )


async def _post_plain(request: web.Request) -> web.Response:
    state = request.app[STATE]
    start = time.perf_counter()
    m = state.metrics
    if request.headers.get("Expect", "").lower() == "100-continue":
        # RFC 9458 §5.1: non-chunked OHTTP cannot carry 1xx; a client must not ask for it.
        m.requests.labels("plain", "decode_error").inc()
        return problem(417, "expectation failed", detail="100-continue is not possible with message/ohttp-req")
    try:
        body = await _read_body(request, state.config.max_request_bytes, _body_deadline(state))
    except TimeoutError:
        m.requests.labels("plain", "client_timeout").inc()
        return problem(408, "request timeout", detail="the request body arrived too slowly")
    if body is None:
        m.requests.labels("plain", "too_large").inc()
        return problem(413, "request too large", detail=f"limit is {state.config.max_request_bytes} bytes")
    try:
        inner, ctx = state.gateway.decapsulate(body)
    except ohttp.RemoteProtocolError as exc:
        resp, outcome = _outer_error(exc)
        m.requests.labels("plain", outcome).inc()
        return resp
    outcome, inner_resp = await serve_inner(state, inner, ctx.enc)
    m.inner_status_of(inner_resp.status).inc()
    encoded = bhttp.encode_response(await _whole(inner_resp))
    encoded += bytes(bhttp.padded_size(len(encoded), state.config.pad_to) - len(encoded))  # RFC 9292 §3.8
    sealed = ctx.encapsulate(encoded)
    m.outcome("plain", outcome).inc()
    m.latency_of("plain").observe(time.perf_counter() - start)
    return web.Response(body=sealed, content_type=ohttp.MEDIA_TYPE_RESPONSE, headers={"Cache-Control": _NO_STORE})


async def _post_chunked(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    start = time.perf_counter()
    m = state.metrics
    # The inner request is taken whole (bhttp=False): _serve_inner decodes it after its replay check, as for
    # message/ohttp-req, so both paths decode and answer a bad inner request alike.
    dec = ohttp.ChunkedMessageDecoder(
        ohttp.ChunkedGatewayRequest(state.keyring, max_chunks=_MAX_REQUEST_CHUNKS), bhttp=False
    )
    inner = bytearray()
    total = 0
    limit = state.config.max_request_bytes
    try:
        async for piece in _within(request, _body_deadline(state)):
            total += len(piece)
            if total > limit:
                m.requests.labels("chunked", "too_large").inc()
                return problem(413, "request too large", detail=f"limit is {limit} bytes")
            dec.receive_data(piece)
            _take_data(dec, inner)
        dec.receive_data(b"")
        _take_data(dec, inner)
    except TimeoutError:
        m.requests.labels("chunked", "client_timeout").inc()
        return problem(408, "request timeout", detail="the request body arrived too slowly")
    except ohttp.RemoteProtocolError as exc:
        resp, outcome = _outer_error(exc, header_ok=dec.chunks.header_ready)
        m.requests.labels("chunked", outcome).inc()
        return resp
    enc = dec.chunks.response()
    outcome, api_resp = await _serve_inner(state, bytes(inner), dec.chunks.enc)
    m.inner_status_of(api_resp.status).inc()
    out = hop.HeadWithBody(
        status=200,
        headers={
            "Content-Type": ohttp.MEDIA_TYPE_CHUNKED_RESPONSE,
            "Incremental": "?1",
            "Cache-Control": _NO_STORE,
        },
    )
    out.enable_chunked_encoding()
    head_headers = [("content-type", api_resp.content_type), *api_resp.headers.items()]
    pad = state.config.pad_to
    try:
        await out.prepare(request)
        await out.write(enc.encode_chunk(bhttp.encode_response_head(api_resp.status, head_headers)))
        m.first_chunk.observe(time.perf_counter() - start)
        write, seal, frame, sent = out.write, enc.encode_chunk, bhttp.encode_chunk, m.chunks.inc
        last = b""
        if api_resp.events is None:
            # A whole body (an error, or a route that does not stream) travels in the final chunk, padded as a
            # whole so that the one sealed chunk the relay sees has the bucket's size, not the body's.
            last = bhttp.encode_chunk(api_resp.body) if api_resp.body else b""
        elif isinstance(api_resp.events, SseStream) and state.config.coalesce_ms <= 0:
            await _pipe_events(request, api_resp.events, seal, pad, m.chunks, state.config.write_timeout)
        elif state.config.coalesce_ms <= 0:
            # No coalescing window: without _events in between, one generator hop less per token; each piece is
            # padded and framed in one join (the bytes of frame(_pad_event(piece, pad))).
            try:
                async for piece in api_resp.events:
                    await write(seal(_padded_chunk(piece, pad)))
                    sent()
            except EngineUnavailable as exc:
                await write(seal(_padded_chunk(_engine_failed_event(exc), pad)))
                sent()
        else:
            async for piece in _events(api_resp.events, pad, state.config.coalesce_ms / 1000):
                await write(seal(frame(piece)))
                sent()
        end = bhttp.encode_end()
        if last:
            end = last + end
            end += bytes(bhttp.padded_size(len(end), pad) - len(end))  # RFC 9292 §3.8 padding
        # The final chunk and the end of the HTTP chunked body in one send.
        await out.write_eof(enc.encode_chunk(end, final=True))
    except (ConnectionResetError, asyncio.CancelledError, OSError) as exc:
        # The client (or relay) went away: stop generating. Nothing else to do; the stream is gone.
        await api_resp.aclose()
        m.requests.labels("chunked", "client_gone").inc()
        if isinstance(exc, asyncio.CancelledError):
            raise
        return out
    m.outcome("chunked", outcome).inc()
    m.latency_of("chunked").observe(time.perf_counter() - start)
    return out


class _Sealer:
    """One piece of a stream's content, padded, framed and sealed as the next chunk (the bytes the pulled path
    sends), and written by ``write`` (:class:`hop.Downstream`'s, straight onto the relay's connection). ``count``:
    the chunks written, added to the metrics once per stream (a counter's ``inc`` takes a lock: per token, it cost
    as much as the padding)."""

    __slots__ = ("write", "seal", "pad", "count")

    def __init__(self, write: Callable[[bytes], None], seal: Callable[[bytes], bytes], pad: int) -> None:
        self.write = write
        self.seal = seal
        self.pad = pad
        self.count = 0

    def __call__(self, piece: bytes) -> None:
        self.write(self.seal(_padded_chunk(piece, self.pad)))
        self.count += 1


async def _pipe_events(request: web.Request, events: SseStream, seal: Callable[[bytes], bytes], pad: int,
                       chunks: Counter, write_timeout: float) -> None:
    """An upstream engine's stream, each piece of events sealed and written from the engine socket's callback onto
    the relay's connection (no task wakes up per token; see :mod:`hop.client`), with the relay's unread bytes
    bounded by pausing the engine's socket (:class:`hop.Downstream`), and a relay that takes none of them for
    ``write_timeout`` seconds dropped. The response head has gone out through
    aiohttp's writer; its final chunk follows the same way. An engine failure ends the stream in an SSE error event,
    as on the pulled path; a client that has gone is a ``ConnectionResetError`` (and the engine's connection is
    closed, which makes vLLM abort the generation)."""
    transport = hop.client_transport(request)  # or ConnectionResetError: the caller closes the events
    down = hop.Downstream(events.upstream, transport, chunked=True, stall_timeout=write_timeout)
    sealer = _Sealer(down.write, seal, pad)
    events.pipe(sealer)
    try:
        await events.finished()
    except EngineUnavailable as exc:
        sealer(_engine_failed_event(exc))
    except hop.ClientGone:
        raise ConnectionResetError("the client closed its connection") from None
    finally:
        chunks.inc(sealer.count)


def _take_data(dec: ohttp.ChunkedMessageDecoder[ohttp.ChunkedGatewayRequest], inner: bytearray) -> None:
    # Every plaintext piece that has arrived; the final chunk's EndOfMessage comes only after end of input.
    while (ev := dec.next_event()) is not ohttp.NEED_DATA:
        if isinstance(ev, bhttp.Data):
            inner += ev.data



async def _events(events: AsyncIterator[bytes], pad: int, window: float) -> AsyncIterator[bytes]:
    """The content pieces of a stream, each padded to a multiple of ``pad``: one per SSE event as the engine
    produces it or, with a ``window`` (seconds), the events that arrive within ``window`` of the first one of a
    batch joined into one piece, so the first token waits at most ``window``."""
    if window <= 0:
        try:
            async for event in events:
                yield _pad_event(event, pad)
        except EngineUnavailable as exc:
            yield _pad_event(_engine_failed_event(exc), pad)
        return
    # A task drains the engine into a queue: waiting on the queue with a timeout is safe, whereas cancelling the
    # engine's own generator mid-wait would end it.
    queue: asyncio.Queue[bytes | EngineUnavailable | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except EngineUnavailable as exc:
            queue.put_nowait(exc)
            return
        queue.put_nowait(None)

    task = asyncio.create_task(pump())
    loop = asyncio.get_running_loop()
    try:
        done = False
        while not done:
            batch: list[bytes] = []
            item = await queue.get()
            deadline = loop.time() + window
            while True:
                if item is None:
                    done = True
                elif isinstance(item, EngineUnavailable):
                    batch.append(_engine_failed_event(item))
                    done = True
                else:
                    batch.append(item)
                if done or (left := deadline - loop.time()) <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except asyncio.TimeoutError:
                    break
            if batch:
                yield _pad_event(b"".join(batch), pad)
    finally:
        if not task.done():
            task.cancel()  # the client went away: the engine's generator ends, and with it the generation
        try:
            await task
        except asyncio.CancelledError:
            pass


def _engine_failed_event(exc: EngineUnavailable) -> bytes:
    # Headers are out; an SSE error event (as vLLM itself sends) is the cleanest error left.
    err = {"error": {"message": f"The inference engine failed mid-stream ({exc}).", "type": "server_error",
                     "param": None, "code": "engine_unavailable"}}
    return b"data: " + orjson.dumps(err) + b"\n\n"


_PAD_LINES: dict[int, bytes] = {}


def _padded_chunk(event: bytes, pad: int) -> bytes:
    """``bhttp.encode_chunk(_pad_event(event, pad))``, built with one join: the padding line comes from a cache (one
    per length), so a token costs no ``b"p" * n`` and no intermediate copies."""
    if pad <= 0:
        return bhttp.encode_chunk(event)
    n = -(len(event) + 2) % pad
    line = _PAD_LINES.get(n)
    if line is None:
        line = b":" + b"p" * n + b"\n"
        if n < 1024:  # bounded: at most 1024 lines of at most 1 KiB, whatever --pad-to is
            _PAD_LINES[n] = line
    size = len(line) + len(event)
    if not 0x40 <= size < 0x4000:  # outside the two-byte varint's range (the usual padded token is in it)
        return bhttp.encode_chunk(line + event)
    return b"".join(((size | 0x4000).to_bytes(2, "big"), line, event))


def _pad_event(event: bytes, pad: int) -> bytes:
    # An SSE comment line (":" ...) is ignored by every SSE parser; it hides the token length on the wire. It goes
    # first, so a stream still ends with "data: [DONE]\n\n" for clients that look for exactly that.
    if pad <= 0:
        return event
    return b":" + b"p" * (-(len(event) + 2) % pad) + b"\n" + event


async def _whole(resp: InnerResponse) -> bhttp.Response:
    """``resp`` as one BHTTP response: a stream is read to its end (an engine failure ends it in an error event)."""
    if resp.events is None:
        return bhttp.Response(status=resp.status, headers=resp.headers, content=resp.body)
    buf = bytearray()
    try:
        async for piece in resp.events:
            buf += piece
    except EngineUnavailable as exc:
        buf += _engine_failed_event(exc)
    return bhttp.Response(status=resp.status, headers=resp.headers, content=bytes(buf))


async def _serve_inner(state: GatewayState, inner: bytes, enc: bytes) -> tuple[str, _HeadView]:
    """:func:`~enclave.gateway.inner.serve_inner` in the shape ``_post_chunked`` reads (:class:`_HeadView`)."""
    outcome, resp = await serve_inner(state, inner, enc)
    return outcome, _HeadView(resp)


class _HeadView:
    """An :class:`InnerResponse` as ``_post_chunked`` still reads it: ``content_type`` and the other ``headers``
    apart. Transitional (the chunked pipeline is being reworked elsewhere): once it encodes the head as
    ``bhttp.encode_response_head(resp.status, resp.headers)`` from ``serve_inner``, this and ``_serve_inner`` go.
    The fields stay bytes and their order is kept."""

    __slots__ = ("_resp", "status", "body", "events", "content_type", "headers")

    def __init__(self, resp: InnerResponse) -> None:
        self._resp = resp
        self.status, self.body, self.events = resp.status, resp.body, resp.events
        self.content_type: bytes | str = resp.header(b"content-type") or b"application/json"
        self.headers = _Fields(f for f in resp.headers if f[0] != b"content-type")

    async def aclose(self) -> None:
        await self._resp.aclose()


class _Fields(tuple[tuple[bytes, bytes], ...]):
    """Header fields with a mapping's ``items()``, for :class:`_HeadView`."""

    def items(self) -> tuple[tuple[bytes | str, bytes | str], ...]:  # (typed as encode_response_head takes them)
        return self
