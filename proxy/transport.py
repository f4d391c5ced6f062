"""The client side of Veil's OHTTP: fetch and verify keys, encapsulate requests, open (chunked) responses.

One aiohttp ``ClientSession``; all protocol work is done by ``ohttp``. Used by ``veil proxy``, the in-process
httpx transport and the tests. Every request gets a fresh HPKE context and a ``Date`` inside the encapsulation,
carries only the headers the API needs (:data:`INNER_HEADERS`) and is padded to a size bucket (RFC 9292 zero
padding), so the relay cannot tell prompts apart by length; nothing that links two requests is added.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import AsyncIterator, Callable, Final

import aiohttp
import orjson
from aiohttp.client_middlewares import ClientMiddlewareType

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
    ) -> None:
        self.url = url
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
        """Close the session if this client created it."""
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

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
                    body = await r.read()
                    keys_age = max_age(r.headers.get("Cache-Control"))
                async with s.get(self.attestation_url, headers={"Accept": "application/json"}) as r:
                    if r.status != 200:
                        raise VeilClientError(f"attestation fetch from {self.attestation_url} failed: HTTP {r.status}")
                    bundle = await r.read()
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
        s = await self._http()
        if not chunked:
            enc_req, ctx = ohttp.ClientRequest(keys.config).encapsulate(inner)
            try:
                async with s.post(self.url, data=enc_req, headers=_PLAIN_HEADERS) as r:
                    data = await r.read()
                    await _check_outer(r, data, ohttp.MEDIA_TYPE_RESPONSE)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise VeilClientError(f"relay unreachable: {type(exc).__name__}: {exc}", 502) from None
            try:
                resp = bhttp.decode_response(ctx.decapsulate(data))
            except ohttp.OHTTPError as exc:
                raise VeilClientError(f"the encapsulated response did not open: {exc}") from None
            return InnerResponse(resp.status, resp.headers, resp.content)
        creq = ohttp.ChunkedClientRequest(keys.config)
        wire = creq.encode_chunk(inner, final=True)
        try:
            r = await s.post(self.url, data=wire, headers=_CHUNKED_HEADERS)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise VeilClientError(f"relay unreachable: {type(exc).__name__}: {exc}", 502) from None
        if r.status != 200 or r.headers.get("Content-Type", "").split(";")[0] != ohttp.MEDIA_TYPE_CHUNKED_RESPONSE:
            data = await r.read()
            r.release()
            await _check_outer(r, data, ohttp.MEDIA_TYPE_CHUNKED_RESPONSE)
        return await _open_stream(r, creq.response())


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


async def _check_outer(r: aiohttp.ClientResponse, data: bytes, expected: str) -> None:
    if r.status == 422 and b"ohttp-key" in data:
        raise _KeyRejected()
    if r.status in (401, 403) and "privatetoken" in r.headers.get("WWW-Authenticate", "").lower():
        raise VeilClientError(f"the relay wants a Privacy Pass token (HTTP {r.status}): give veil proxy --issuer, or "
                              "the transport tokens=TokenWallet(...)", r.status, "veil_token_required")
    if r.status != 200:
        # Unencapsulated: from the relay or the gateway before decapsulation. Not trusted beyond its status.
        raise VeilClientError(f"relay or gateway answered HTTP {r.status} before decryption", 502 if r.status >= 500 else r.status)
    ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
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
