"""The client side of Veil's OHTTP: fetch and verify keys, encapsulate requests, open (chunked) responses.

One aiohttp ``ClientSession`` for key and evidence fetches (and, for ``veil proxy`` and the in-process transports, a
:class:`hop.Pool` carrying the OHTTP requests, where every streamed token passes); all protocol work is done by
``ohttp``. Used by ``veil proxy``, the in-process httpx transport and the tests. Every request gets a fresh HPKE
context and a ``Date`` inside the encapsulation, carries only the headers the API needs (:data:`INNER_HEADERS`)
and is padded to a size bucket (RFC 9292 zero padding), so the relay cannot tell prompts apart by length; nothing
that links two requests is added.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from collections.abc import AsyncIterable, Mapping
from typing import AsyncIterator, Callable, Final, Protocol

import aiohttp
import orjson
from aiohttp.client_middlewares import ClientMiddlewareType

import hop
import ohttp
from ohttp import bhttp

log = logging.getLogger("veil.client")

#: The only caller headers copied into the encapsulated request: what the OpenAI API inside needs. Anything else
#: (X-Real-IP, Referer, Origin, Accept-Language, Sec-CH-UA-*, User-Agent, Idempotency-Key, cookies, and the SDK's
#: X-Stainless-* headers, which name the client's OS, architecture and runtime versions) would identify or link
#: the user to the gateway. ``authorization`` is here because callers pass it only when the gateway wants API keys
#: (``veil proxy --api-key``, ``send_api_key=True``); ``x-veil-tenant`` is Veil's own prompt-cache tenant claim.
INNER_HEADERS: Final = frozenset({"content-type", "accept", "authorization", "openai-beta", "x-veil-tenant"})
#: Inner requests are padded to ``ohttp.padded_size(n, REQUEST_PAD)``: prompts up to about 1 KiB look alike, and
#: longer ones differ only in steps of 1 KiB (Padmé's larger steps past 32 KiB).
REQUEST_PAD: Final = 1024
#: The response header in which clients tell their caller how the gateway's attestation was checked.
ATTESTATION_HEADER: Final = b"x-veil-attestation"
#: The largest whole (non-streamed) answer read from the relay: a relay cuts answers off at its
#: ``--max-response-bytes`` (64 MiB by default), and the gateway's BHTTP content is bounded by the same 64 MiB
#: (``bhttp.Limits.max_content_size``). A body past it is refused (:class:`VeilClientError`, 502), never buffered.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024


def inner_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """The caller's headers that may travel inside the encapsulation (:data:`INNER_HEADERS`), lowercased."""
    out = []
    for name, value in headers:
        n = name.lower()
        if n in INNER_HEADERS:
            out.append((n.encode("latin-1"), value.encode("latin-1")))
    return out


class VeilClientError(Exception):
    """A failure on the way to or from the gateway (not an API error: those arrive as responses)."""

    def __init__(self, message: str, status: int = 502, code: str = "veil_upstream_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class KeyState:
    """The verified key configuration in use."""

    keys_body: bytes
    config: ohttp.KeyConfig
    verification: object = None
    simulated: bool = False
    fetched_at: float = field(default_factory=time.time)
    #: When these keys and their evidence must be fetched and verified again (unix time; None: only on a 422): the
    #: earliest of the keys' and the bundle's ``Cache-Control: max-age`` and the evidence's own expiry.
    expires_at: float | None = None

    def expired(self, now: float | None = None) -> bool:
        """Whether the verification no longer holds: nothing may be sent to these keys before a new one."""
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    @property
    def attestation(self) -> bytes:
        """The :data:`ATTESTATION_HEADER` value for these keys: ``simulated`` or ``verified``."""
        return b"simulated" if self.simulated else b"verified"


class HeldToken(Protocol):
    """One Privacy Pass token to spend (:class:`proxy.client.tokens.HeldToken`)."""

    @property
    def key_id(self) -> bytes: ...

    @property
    def header(self) -> str: ...


class Tokens(Protocol):
    """Where a client with a :class:`hop.Pool` gets its Privacy Pass tokens (:class:`proxy.client.tokens.
    TokenWallet`; sessions use its ``middleware()`` instead)."""

    async def take(self) -> HeldToken: ...

    def learn(self, www_authenticate: str) -> bool: ...

    def drop_key(self, key_id: bytes) -> None: ...


#: Verifies an evidence bundle for a keys body; returns (verification result, simulated?) or raises.
Verifier = Callable[[bytes, bytes], "tuple[object, bool]"]
#: When a verified bundle stops verifying by itself (unix time), read from its bytes; None: it does not expire.
EvidenceExpiry = Callable[[bytes], "float | None"]


@dataclass
class InnerResponse:
    """A decapsulated response: status, headers and either a whole body or a stream of content pieces."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    pieces: AsyncIterator[bytes] | None = None

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def caller_headers(self, drop: frozenset[bytes], keys: KeyState | None) -> list[tuple[bytes, bytes]]:
        """The headers to hand on to the caller: none named in ``drop`` (hop-by-hop ones) nor an
        :data:`ATTESTATION_HEADER` from the gateway, then this client's own one for ``keys`` when there are keys."""
        out = [(n, v) for n, v in self.headers if n not in drop and n != ATTESTATION_HEADER]
        if keys is not None:
            out.append((ATTESTATION_HEADER, keys.attestation))
        return out


class OhttpClient:
    """Talks OHTTP to ``url`` (a relay path for one gateway, or a gateway's ``/.well-known/ohttp-gateway``).

    ``keys_url`` and ``attestation_url`` default to ``url`` and ``url + "/attestation"`` (the relay's layout);
    pass the gateway's own paths when talking to a gateway directly.

    Keys are verified again, before the next request, once their ``Cache-Control: max-age`` (keys or bundle,
    whichever is shorter) or the evidence's own expiry (``evidence_expiry``, default
    :func:`proxy.verify.evidence_expiry`: an MAA token's ``exp``, a Nitro document's leaf certificate) has passed:
    a verification holds only as long as what it checked.

    ``middlewares`` go on the session this client makes (not on one passed in): a :class:`~proxy.client.tokens.
    TokenWallet`'s ``middleware()`` spends one Privacy Pass token per OHTTP ``POST`` to a relay that requires them.

    ``pool`` (``veil proxy``, the in-process transports): the OHTTP ``POST`` requests go through this
    :class:`hop.Pool` (closed with the client) instead of the session, and a chunked response's content is a
    :class:`ChunkedStream`, which can be piped (``veil proxy``) or pulled (the in-process transports); then
    ``tokens`` (a ``TokenWallet``) spends the Privacy Pass tokens, as its middleware does on a session. Key and
    evidence fetches always use the session.
    """

    def __init__(
        self,
        url: str,
        *,
        verifier: Verifier,
        keys_url: str | None = None,
        attestation_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 600.0,
        evidence_expiry: EvidenceExpiry | None = None,
        pad_to: int = REQUEST_PAD,
        middlewares: tuple[ClientMiddlewareType, ...] = (),
        pool: hop.Pool | None = None,
        tokens: Tokens | None = None,
    ) -> None:
        self.url = url
        self._pool = pool
        self._tokens = tokens
        self._origin: hop.Origin | None = None
        self._target = "/"
        if pool is not None:  # checked here, once: a bad URL would otherwise fail every request
            self._origin, self._target = _hop_target(url)
        self._middlewares = middlewares
        self.keys_url = keys_url or url
        self.attestation_url = attestation_url or url.rstrip("/") + "/attestation"
        self._verifier = verifier
        self._session = session
        self._own_session = session is None
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._evidence_expiry = evidence_expiry or _default_evidence_expiry
        self.keys: KeyState | None = None
        self.pad_to = pad_to

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._timeout),
                connector=aiohttp.TCPConnector(limit=0),
                cookie_jar=aiohttp.DummyCookieJar(),  # never store or send cookies
                auto_decompress=False,
                middlewares=self._middlewares,  # e.g. a TokenWallet's: one Privacy Pass token per OHTTP POST
            )
        return self._session

    async def close(self) -> None:
        """Close the session if this client created it, and the pool."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
        if self._pool is not None:
            await self._pool.close()

    async def refresh_keys(self, *, stale: bytes | None = None, if_expired: bool = False) -> KeyState:
        """Fetch the key configuration and its evidence, verify, and keep them. Refuses unverifiable keys.

        ``stale``: the keys body a 422 rejected (nothing is fetched if another task replaced it already);
        ``if_expired``: nothing is fetched if another task verified keys that have not expired meanwhile."""
        async with self._lock:
            if self.keys is not None and stale is not None and self.keys.keys_body != stale:
                return self.keys  # another task refreshed already
            if if_expired and self.keys is not None and not self.keys.expired():
                return self.keys
            s = await self._http()
            started = time.time()
            try:
                async with s.get(self.keys_url, headers={"Accept": ohttp.MEDIA_TYPE_KEYS}) as r:
                    if r.status != 200:
                        raise VeilClientError(f"key fetch from {self.keys_url} failed: HTTP {r.status}")
                    body = await _read_aiohttp(r)
                    keys_age = max_age(r.headers.get("Cache-Control"))
                async with s.get(self.attestation_url, headers={"Accept": "application/json"}) as r:
                    if r.status != 200:
                        raise VeilClientError(f"attestation fetch from {self.attestation_url} failed: HTTP {r.status}")
                    bundle = await _read_aiohttp(r)
                    bundle_age = max_age(r.headers.get("Cache-Control"))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise VeilClientError(f"cannot reach {self.keys_url}: {type(exc).__name__}: {exc}") from None
            try:
                configs = ohttp.decode_list(body)
            except ohttp.OHTTPError as exc:
                raise VeilClientError(f"gateway key configuration is malformed: {exc}") from None
            if not configs:
                raise VeilClientError("the gateway offers no key configuration this client supports")
            try:
                if getattr(self._verifier, "blocking", False):  # e.g. one that fetches a transparency log
                    verification, simulated = await asyncio.to_thread(self._verifier, bundle, body)
                else:
                    verification, simulated = self._verifier(bundle, body)
            except Exception as exc:  # fail closed: nothing is sent to keys that did not verify
                self.keys = None  # nor to the keys verified before: their evidence is no longer what is served
                raise VeilClientError(f"attestation refused: {exc}", 502, "veil_attestation_refused") from None
            # Ages count from when the fetch started (conservative); the evidence's expiry is read from the bytes
            # that just verified, so it is the verified one.
            limits = [started + a for a in (keys_age, bundle_age) if a is not None]
            if (evidence_end := self._evidence_expiry(bundle)) is not None:
                limits.append(evidence_end)
            # X-Wing (post-quantum) when the gateway offers it, else the first; a policy that requires post-quantum
            # keys has refused a list without one in the verifier already.
            self.keys = KeyState(keys_body=body, config=ohttp.choose_config(configs), verification=verification,
                                 simulated=simulated, fetched_at=started,
                                 expires_at=min(limits) if limits else None)
            return self.keys

    async def request(
        self,
        method: str,
        path: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        chunked: bool = False,
    ) -> InnerResponse:
        """Send one request through OHTTP; ``chunked`` uses chunked OHTTP and streams the response."""
        keys = self.keys
        if keys is None or keys.expired():  # verified again before anything is sent, never in the background
            keys = await self.refresh_keys(if_expired=True)
        for attempt in (1, 2):
            try:
                return await self._send(keys, method, path, headers or [], body, chunked)
            except _KeyRejected:
                if attempt == 2:
                    raise VeilClientError("the gateway rejected freshly verified keys twice; giving up", 502) from None
                log.info("gateway rejected the key id; refreshing keys and retrying once")
                keys = await self.refresh_keys(stale=keys.keys_body)
        raise AssertionError("unreachable")

    def _inner(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """The encoded, padded inner request. It always carries a ``Date`` (RFC 9458 §6.5.1): gateways require
        one, since without it a request could be replayed once the gateway's replay cache has forgotten it."""
        fields = inner_headers(headers)
        fields.append((b"date", _http_date()))
        req = bhttp.Request(
            method=method.encode("ascii"), scheme=b"https", authority=b"", path=path.encode("latin-1"),
            headers=tuple(fields), content=body,
        )
        encoded = bhttp.encode_request(req)
        return encoded + bytes(bhttp.padded_size(len(encoded), self.pad_to) - len(encoded))  # RFC 9292 §3.8

    async def _send(
        self, keys: KeyState, method: str, path: str, headers: list[tuple[str, str]], body: bytes, chunked: bool
    ) -> InnerResponse:
        inner = self._inner(method, path, headers, body)
        if self._pool is not None:
            return await self._send_hop(keys.config, inner, chunked)
        s = await self._http()
        if not chunked:
            enc_req, ctx = ohttp.ClientRequest(keys.config).encapsulate(inner)
            try:
                async with s.post(self.url, data=enc_req, headers=_PLAIN_HEADERS) as r:
                    data = await _read_aiohttp(r)
                    _check_outer(r.status, r.headers, data, ohttp.MEDIA_TYPE_RESPONSE)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise VeilClientError(f"relay unreachable: {type(exc).__name__}: {exc}", 502) from None
            return _open_whole(ctx, data)
        creq = ohttp.ChunkedClientRequest(keys.config)
        wire = creq.encode_chunk(inner, final=True)
        try:
            r = await s.post(self.url, data=wire, headers=_CHUNKED_HEADERS)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise VeilClientError(f"relay unreachable: {type(exc).__name__}: {exc}", 502) from None
        if r.status != 200 or r.headers.get("Content-Type", "").split(";")[0] != ohttp.MEDIA_TYPE_CHUNKED_RESPONSE:
            try:
                data = await _read_aiohttp(r)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise VeilClientError(f"relay unreachable: {type(exc).__name__}: {exc}", 502) from None
            finally:
                r.release()
            _check_outer(r.status, r.headers, data, ohttp.MEDIA_TYPE_CHUNKED_RESPONSE)
        return await _open_stream(r, creq.response())

    async def _send_hop(self, config: ohttp.KeyConfig, inner: bytes, chunked: bool) -> InnerResponse:
        """:meth:`_send` through the pool: a whole response read at once, a chunked one opened as a
        :class:`ChunkedStream`."""
        try:
            if not chunked:
                enc_req, ctx = ohttp.ClientRequest(config).encapsulate(inner)
                r = await self._post(enc_req, _PLAIN_HOP)
                try:
                    data = await _read_hop(r)
                finally:
                    r.release()
                _check_outer(r.status, r.headers, data, ohttp.MEDIA_TYPE_RESPONSE)
                return _open_whole(ctx, data)
            creq = ohttp.ChunkedClientRequest(config)
            r = await self._post(creq.encode_chunk(inner, final=True), _CHUNKED_HOP)
            if r.status != 200 or r.headers.get("content-type", "").split(";")[0] != ohttp.MEDIA_TYPE_CHUNKED_RESPONSE:
                try:
                    data = await _read_hop(r)
                finally:
                    r.release()
                _check_outer(r.status, r.headers, data, ohttp.MEDIA_TYPE_CHUNKED_RESPONSE)
        except (hop.HopError, aiohttp.ClientError) as exc:  # a TokenWallet's TokenUnavailable is a ClientError
            raise VeilClientError(f"relay unreachable: {type(exc).__name__}: {exc}", 502) from None
        stream = ChunkedStream(r, ohttp.ChunkedMessageDecoder(creq.response()))
        head = await stream.open()
        return InnerResponse(head.status, head.headers, pieces=stream)

    async def _post(self, body: bytes, headers: tuple[tuple[str, str], ...]) -> hop.Response:
        """One OHTTP ``POST`` through the pool, spending a token if the client has ``tokens``: a 401/403 carrying
        a PrivateToken challenge drops the tokens under the refused key, adopts the challenge and is retried once
        with another token (the relay refused it before forwarding, so the gateway never saw it)."""
        assert self._pool is not None and self._origin is not None
        if self._tokens is None:
            return await self._pool.request(self._origin, "POST", self._target, headers, body)
        r: hop.Response | None = None
        try:
            for attempt in (1, 2):
                try:
                    held = await self._tokens.take()
                except aiohttp.ClientError:  # TokenUnavailable: the refusal stands
                    if r is None:
                        raise
                    refused, r = r, None
                    return refused
                if r is not None:
                    r.close()
                    r = None
                r = await self._pool.request(self._origin, "POST", self._target,
                                             (*headers, ("Authorization", held.header)), body)
                if r.status not in (401, 403) or attempt == 2 or not self._tokens.learn(r.headers.get(
                        "www-authenticate", "")):
                    answer, r = r, None
                    return answer
                if r.status == 401:
                    self._tokens.drop_key(held.key_id)
        finally:
            # a refused answer not handed on (taking another token failed otherwise, or the task was cancelled):
            # its connection is dropped, never left open
            if r is not None:
                r.close()
        raise AssertionError("unreachable")


_MAX_AGE: Final = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)\"?", re.IGNORECASE)


def max_age(cache_control: str | None) -> float | None:
    """Seconds a response may be used, from its ``Cache-Control``: ``max-age=N``; 0 for ``no-store`` /
    ``no-cache``; None when it says neither (then only the evidence's expiry and a 422 bound the keys)."""
    if not cache_control:
        return None
    directives = {d.strip().split("=")[0].lower() for d in cache_control.split(",")}
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    m = _MAX_AGE.search(cache_control)
    return float(m.group(1)) if m else None


def _default_evidence_expiry(bundle_json: bytes) -> float | None:
    from .verify import evidence_expiry  # imports the verifiers; only once keys are fetched

    return evidence_expiry(bundle_json)


_PLAIN_HEADERS: Final = {"Content-Type": ohttp.MEDIA_TYPE_REQUEST}
_CHUNKED_HEADERS: Final = {"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_REQUEST, "Incremental": "?1"}
_PLAIN_HOP: Final = tuple(_PLAIN_HEADERS.items())
_CHUNKED_HOP: Final = tuple(_CHUNKED_HEADERS.items())
_date_cache: tuple[int, bytes] = (0, b"")


def _http_date() -> bytes:
    """``formatdate(usegmt=True)`` as bytes, formatted once per second (it has one-second resolution anyway)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def wants_stream(body: bytes) -> bool:
    """Whether an OpenAI request body asks for ``stream: true`` (then chunked OHTTP carries it)."""
    if b'"stream"' not in body:
        return False
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("stream") is True


class _KeyRejected(Exception):
    pass


def _hop_target(url: str) -> tuple[hop.Origin, str]:
    """``url``'s origin and request target for a :class:`hop.Pool`; ValueError (saying what is wrong) for a URL
    the pool could not send a request to: not http(s), a bad port, a host IDNA refuses (``a..b``), a path with
    spaces, control or non-ASCII characters."""
    try:
        return hop.target_of(url)
    except ValueError as exc:  # UnicodeError is one
        raise ValueError(f"bad relay URL {url!r}: {exc}") from None


def _too_large(limit: int) -> VeilClientError:
    return VeilClientError(f"the relay's answer is larger than {limit} bytes", 502)


async def _read_aiohttp(r: aiohttp.ClientResponse) -> bytes:
    """A whole answer through the session, at most :data:`MAX_RESPONSE_BYTES` (else :class:`VeilClientError`, the
    connection dropped)."""
    return await _read_bounded(r.content_length, r.content.iter_any(), r.close)


async def _read_hop(r: hop.Response) -> bytes:
    """:func:`_read_aiohttp` for a :class:`hop.Response` (its :class:`hop.HopError` pass through)."""
    return await _read_bounded(r.content_length, r, r.close)


def _open_whole(ctx: ohttp.ClientResponse, data: bytes) -> InnerResponse:
    """A whole encapsulated response, opened and decoded."""
    try:
        resp = bhttp.decode_response(ctx.decapsulate(data))
    except ohttp.OHTTPError as exc:
        raise VeilClientError(f"the encapsulated response did not open: {exc}") from None
    return InnerResponse(resp.status, resp.headers, resp.content)


async def _read_bounded(length: int | None, pieces: AsyncIterable[bytes], close: Callable[[], None]) -> bytes:
    limit = MAX_RESPONSE_BYTES
    if length is not None and length > limit:
        close()
        raise _too_large(limit)
    parts: list[bytes] = []
    total = 0
    async for piece in pieces:
        total += len(piece)
        if total > limit:
            close()
            raise _too_large(limit)
        parts.append(piece)
    return b"".join(parts)


def _check_outer(status: int, headers: Mapping[str, str], data: bytes, expected: str) -> None:
    """``headers``: aiohttp's (any case) or hop's (lower-cased names)."""
    if status == 422 and b"ohttp-key" in data:
        raise _KeyRejected()
    if status in (401, 403) and "privatetoken" in headers.get("www-authenticate", "").lower():
        raise VeilClientError(f"the relay wants a Privacy Pass token (HTTP {status}): give veil proxy --issuer, or "
                              "the transport tokens=TokenWallet(...)", status, "veil_token_required")
    if status != 200:
        # Unencapsulated: from the relay or the gateway before decapsulation. Not trusted beyond its status.
        raise VeilClientError(f"relay or gateway answered HTTP {status} before decryption", 502 if status >= 500 else status)
    ctype = headers.get("content-type", "").split(";")[0].strip()
    if ctype != expected:
        raise VeilClientError(f"unexpected response media type {ctype!r}, wanted {expected}")


async def _open_stream(r: aiohttp.ClientResponse, dec: ohttp.ChunkedClientResponse) -> InnerResponse:
    """Open a chunked response: return once its head has arrived, with its content pieces still to come."""
    return await _open_pieces(r.content.iter_any(), r.close, ohttp.ChunkedMessageDecoder(dec))


async def _open_pieces(
    body: AsyncIterator[bytes], close: Callable[[], None], dec: ohttp.ChunkedMessageDecoder[ohttp.ChunkedClientResponse]
) -> InnerResponse:
    """Feed ``body`` (ciphertext as it arrives) into ``dec``; return once the head has arrived. ``close`` is called
    once the content has been read, or on any failure."""
    it = body.__aiter__()
    ended = False

    async def pump() -> bool:
        """Read more from the network into the decoder; False at end of input."""
        nonlocal ended
        if ended:
            return False
        try:
            piece = await it.__anext__()
        except StopAsyncIteration:
            piece = b""
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise VeilClientError(f"stream broke: {type(exc).__name__}", 502) from None
        dec.receive_data(piece)
        ended = not piece
        return True

    head: bhttp.ResponseHead | None = None
    try:
        while head is None:
            ev = dec.next_event()
            if ev is ohttp.NEED_DATA:
                if not await pump():
                    raise VeilClientError("stream ended before the response head")
            elif isinstance(ev, bhttp.ResponseHead):
                head = ev
    except ohttp.OHTTPError as exc:
        close()
        raise VeilClientError(f"the encapsulated stream did not open: {exc}") from None
    except BaseException:
        close()
        raise

    async def pieces() -> AsyncIterator[bytes]:
        try:
            while True:
                ev = dec.next_event()
                if ev is ohttp.NEED_DATA:
                    if not await pump():
                        raise VeilClientError("stream truncated: it ended without its final chunk")
                elif isinstance(ev, bhttp.Data):
                    yield ev.data
                elif isinstance(ev, bhttp.EndOfMessage):
                    return
        except ohttp.OHTTPError as exc:
            raise VeilClientError(f"stream failed: {exc}") from None
        finally:
            close()

    return InnerResponse(head.status, head.headers, pieces=pieces())



class _Failed(hop.HopError):
    """A piped piece did not open: the stream is invalid."""


class ChunkedStream:
    """The content of a chunked OHTTP response that came through a :class:`hop.Pool`, after its head: pulled
    (``async for``, as the in-process transports do) or pushed (:meth:`pipe`, as ``veil proxy`` does: each piece is
    decrypted in the socket's callback and handed on at once, with no task woken per token).

    Errors are :class:`VeilClientError` (``stream broke`` for the connection, ``stream failed`` for the bytes), or
    the :class:`hop.ClientGone` of a piped writer. The response is released once its content has ended (its
    connection goes back to the pool when the HTTP body has ended too), closed on any failure.
    """

    __slots__ = ("upstream", "_dec", "_eof", "_ended", "_error", "_write")

    def __init__(self, upstream: hop.Response, dec: ohttp.ChunkedMessageDecoder[ohttp.ChunkedClientResponse]) -> None:
        self.upstream = upstream
        self._dec = dec
        self._eof = False  # the end of the HTTP body was fed to the decoder
        self._ended = False  # the message's EndOfMessage came out
        self._error: ohttp.OHTTPError | None = None  # a piped piece did not open
        self._write: Callable[[bytes], None] | None = None

    async def open(self) -> bhttp.ResponseHead:
        """Read until the response head has arrived."""
        try:
            while not isinstance(ev := await self._event("stream ended before the response head"),
                                 bhttp.ResponseHead):
                pass
            return ev
        except ohttp.OHTTPError as exc:
            self.upstream.close()
            raise VeilClientError(f"the encapsulated stream did not open: {exc}") from None
        except BaseException:
            self.upstream.close()
            raise

    async def _event(self, short: str) -> object:
        """The decoder's next event, reading from the network as it needs; ``VeilClientError(short)`` when the body
        ends first."""
        while (ev := self._dec.next_event()) is ohttp.NEED_DATA:
            if not await self._pump():
                raise VeilClientError(short)
        return ev

    async def _pump(self) -> bool:
        """Read more from the network into the decoder; False once its end has been fed already."""
        if self._eof:
            return False
        try:
            piece = await self.upstream.readany()
        except hop.HopError as exc:
            raise VeilClientError(f"stream broke: {type(exc).__name__}", 502) from None
        self._dec.receive_data(piece)
        self._eof = not piece
        return True

    # -- pulling ---------------------------------------------------------------------------------------------

    def __aiter__(self) -> ChunkedStream:
        return self

    async def __anext__(self) -> bytes:
        if self._ended:
            raise StopAsyncIteration
        try:
            while True:
                ev = await self._event("stream truncated: it ended without its final chunk")
                if isinstance(ev, bhttp.Data):
                    return ev.data
                if isinstance(ev, bhttp.EndOfMessage):
                    self._ended = True
                    await self._end()
                    raise StopAsyncIteration
        except ohttp.OHTTPError as exc:
            self.upstream.close()
            raise VeilClientError(f"stream failed: {exc}") from None
        except BaseException as exc:
            if not isinstance(exc, StopAsyncIteration):
                self.upstream.close()
            raise

    async def _end(self) -> None:
        """The message has ended: wait for the HTTP body's own end (it follows at once) so the connection is kept."""
        try:
            while await self.upstream.readany():
                pass  # nothing may follow the final chunk; the decoder is done, so it is not read
        except hop.HopError:
            self.upstream.close()  # the content is complete; only the connection is lost
            return
        self.upstream.release()

    async def aclose(self) -> None:
        """Stop reading: the connection is dropped unless the content has ended."""
        if self._ended:
            return
        self.upstream.close()

    # -- pushing ---------------------------------------------------------------------------------------------

    def pipe(self, write: Callable[[bytes], None]) -> None:
        """From now on, decrypted content goes to ``write`` from the socket's callback (what has arrived already
        goes at once). Then ``await`` :meth:`finished`."""
        self._write = write
        self._decrypt()
        # Always attached, even when the content has ended already (or failed): the HTTP body's end is still to
        # be read, and bytes after the content must be taken (and ignored) for it to come; left to the pull mode,
        # they would pile up unread until reading paused, and finished() would wait for ever.
        self.upstream.pipe(self._received)

    def _received(self, piece: bytes) -> None:
        if self._ended or self._error is not None:
            return  # past the final chunk: ignored, as the pulling reader does
        try:
            self._dec.receive_data(piece)
        except ohttp.OHTTPError as exc:
            self._fail(exc)
            return
        self._decrypt()

    def _decrypt(self) -> None:
        """Hand on what the decoder holds, joined: one write (one HTTP chunk, one send) per network piece."""
        assert self._write is not None
        out: list[bytes] = []
        try:
            while (ev := self._dec.next_event()) is not ohttp.NEED_DATA:
                if isinstance(ev, bhttp.Data):
                    out.append(ev.data)
                elif isinstance(ev, bhttp.EndOfMessage):
                    self._ended = True
                    break
        except ohttp.OHTTPError as exc:
            self._fail(exc)  # what opened before the bad chunk is still handed on
        if out:
            self._write(out[0] if len(out) == 1 else b"".join(out))

    def _fail(self, exc: ohttp.OHTTPError) -> None:
        self._error = exc
        self.upstream.abort(_Failed(str(exc)))  # nothing more is read (a no-op if the body had ended)

    async def finished(self) -> None:
        """Wait for the end of a piped stream: for the HTTP body's end after the content's (then the connection
        goes back to the pool). A connection that breaks or stalls after the content has ended is closed, and the
        stream has still succeeded.

        Raises:
            VeilClientError: the stream broke or failed (then the response is closed).
            hop.ClientGone: ``write``'s client went away.
        """
        try:
            await self.upstream.finished()
            if self._error is None and not self._ended:  # the body ended short of the final chunk
                try:
                    self._dec.receive_data(b"")
                except ohttp.OHTTPError as exc:
                    self._fail(exc)
                else:
                    self._decrypt()
                if self._error is None and not self._ended:
                    raise VeilClientError("stream truncated: it ended without its final chunk")
        except _Failed:
            pass  # self._error says why
        except hop.ClientGone:
            self.upstream.close()
            raise
        except hop.HopError as exc:
            self.upstream.close()  # never reused: the HTTP body did not end as it should
            if self._ended and self._error is None:
                return  # the content is complete (as the pulling reader takes it); only the connection is lost
            raise VeilClientError(f"stream broke: {type(exc).__name__}", 502) from None
        except BaseException:
            self.upstream.close()
            raise
        if self._error is not None:
            self.upstream.close()
            raise VeilClientError(f"stream failed: {self._error}")
        self.upstream.release()
