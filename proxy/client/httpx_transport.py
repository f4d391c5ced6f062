"""In-process OHTTP for Python users who cannot run a proxy: an ``httpx`` transport for the OpenAI SDK.

    from openai import OpenAI
    import httpx2  # the SDK's HTTP client (httpx for openai < 3)
    from proxy.client import VeilTransport

    client = OpenAI(base_url="http://veil.invalid/v1", api_key="unused",
                    http_client=httpx2.Client(transport=VeilTransport("http://relay.example/NAME",
                                                                      policy="policy.toml")))

``policy`` is what ``veil proxy --policy`` takes (a :class:`~enclave.attestation.policy.Policy` or the path of its
TOML file) and goes through the same :func:`~proxy.verify.make_verifier`; without one the default policy refuses
every real gateway. ``allow_simulated=True`` accepts simulated attestation (development only). ``verifier``
replaces both with your own check (``(bundle_json, keys_body) -> (verification, simulated)``, raising to refuse).

To trust a publisher instead of naming measurements (``veil proxy --publisher VKEY --log URL --log-key VKEY``), pass
``publisher=VKEY, log=URL, log_key=VKEY`` (``publisher`` may be a list; optional ``witnesses``, ``min_witnesses``,
``log_state``) or a ready ``transparency=Transparency(...)`` (:class:`proxy.verify.Transparency`): the policy is the
publisher's unexpired logged releases (``policy`` then narrows it: both must pass) and a key configuration not in
the log is refused; the log is fetched in a thread, never on the event loop.

The host in ``base_url`` is never contacted: every request is encapsulated and sent to the relay, through a
:class:`hop.Pool` (a relay URL no request could go to, such as one with spaces in its path, raises ValueError when
the transport is made). The SDK's API key
stays on this machine unless ``send_api_key=True`` (then it travels inside the encapsulation only).

For a relay that requires Privacy Pass tokens (``veil relay --require-token``), pass ``tokens=TokenWallet(issuer_url,
issuer_api_key)`` (:mod:`proxy.client.tokens`): the transport spends one per request, in the outer
``Authorization`` header the relay checks and never forwards, from a pool the wallet fills ahead of need (started when
the transport is made, or at its first request when no event loop runs yet). The transport closes the wallet.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import AsyncIterator, Awaitable, Iterator, Sequence, TypedDict, TypeVar

from typing_extensions import Unpack

import aiohttp

import hop

try:  # openai >= 3 is built on httpx2; older SDKs on httpx. Same transport API.
    import httpx2 as httpx
except ImportError:  # pragma: no cover - exercised only with an older SDK
    import httpx  # type: ignore[no-redef,import-not-found,unused-ignore]

from transparency.client import DEFAULT_LOG_STATE

from ..transport import InnerResponse, OhttpClient, VeilClientError, Verifier, wants_stream
from ..verify import PolicyLike, Transparency, make_verifier
from .tokens import TokenWallet

T = TypeVar("T")
#: The read timeout of the transports' requests to the relay (seconds of silence; OhttpClient's default).
TIMEOUT = 600.0
_HOP = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})


def _response(inner: InnerResponse, client: OhttpClient, stream: httpx.SyncByteStream | httpx.AsyncByteStream | None
              ) -> httpx.Response:
    headers = inner.caller_headers(_HOP, client.keys)
    if stream is None:
        return httpx.Response(inner.status, headers=headers, content=inner.body)
    return httpx.Response(inner.status, headers=headers, stream=stream)


class TransportOptions(TypedDict, total=False):
    """The keyword options of both transports (see :class:`VeilAsyncTransport`)."""

    policy: PolicyLike | None
    allow_simulated: bool
    verifier: Verifier | None
    keys_url: str | None
    attestation_url: str | None
    send_api_key: bool
    tokens: TokenWallet | None
    transparency: Transparency | None
    publisher: str | Sequence[str] | None
    log: str | None
    log_key: str | None
    witnesses: Sequence[str]
    min_witnesses: int
    log_state: str | os.PathLike[str] | None


class VeilAsyncTransport(httpx.AsyncBaseTransport):
    """For ``httpx.AsyncClient`` / ``openai.AsyncOpenAI``."""

    def __init__(
        self,
        relay_url: str,
        *,
        policy: PolicyLike | None = None,
        allow_simulated: bool = False,
        verifier: Verifier | None = None,
        keys_url: str | None = None,
        attestation_url: str | None = None,
        send_api_key: bool = False,
        tokens: TokenWallet | None = None,
        transparency: Transparency | None = None,
        publisher: str | Sequence[str] | None = None,
        log: str | None = None,
        log_key: str | None = None,
        witnesses: Sequence[str] = (),
        min_witnesses: int = 0,
        log_state: str | os.PathLike[str] | None = DEFAULT_LOG_STATE,
    ) -> None:
        self.client = OhttpClient(
            relay_url,
            verifier=_verifier(policy, allow_simulated, verifier,
                               _transparency(transparency, publisher, log, log_key, witnesses, min_witnesses,
                                             log_state)),
            keys_url=keys_url,
            attestation_url=attestation_url,
            timeout=TIMEOUT,
            # The OHTTP POSTs (and every streamed piece) go through hop, as veil proxy's do, with the timeouts the
            # session had (connect 10 s, read TIMEOUT); the wallet spends its tokens on them itself. A Pool binds to
            # no event loop when made: its connections are made on the loop that sends (VeilTransport's own
            # thread), and closed with the client on that loop. A relay URL no request could go to: ValueError here.
            pool=hop.Pool(connect_timeout=10, read_timeout=TIMEOUT),
            tokens=tokens,
        )
        self.send_api_key = send_api_key
        self.tokens = tokens
        self._prefetch: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (or VeilTransport's, started later): the first request starts the prefetch
        self.start_prefetch()

    def start_prefetch(self) -> None:
        """Start filling the token pool in the background (once); a failure is reported by the request that finds
        no token, not here."""
        if self.tokens is not None and self._prefetch is None:
            self._prefetch = asyncio.get_running_loop().create_task(self._fill())

    async def _fill(self) -> None:
        assert self.tokens is not None
        try:
            await self.tokens.prefetch()
        except aiohttp.ClientError:
            pass  # TokenUnavailable: logged by the wallet; the request that needs a token raises it

    async def send(self, request: httpx.Request, body: bytes) -> InnerResponse:
        """Encapsulate one httpx request and send it."""
        headers = [
            (k, v) for k, v in request.headers.items() if self.send_api_key or k.lower() != "authorization"
        ]
        path = request.url.raw_path.decode("ascii")
        self.start_prefetch()
        try:
            return await self.client.request(
                request.method, path, headers, body, chunked=request.method == "POST" and wants_stream(body)
            )
        except VeilClientError as exc:
            raise httpx.TransportError(f"Veil: {exc}") from exc

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = await self.send(request, await request.aread())
        return _response(inner, self.client, None if inner.pieces is None else _AsyncStream(inner.pieces))

    async def aclose(self) -> None:
        await self.client.close()
        if self._prefetch is not None:
            self._prefetch.cancel()
            await asyncio.gather(self._prefetch, return_exceptions=True)
        if self.tokens is not None:
            await self.tokens.close()


def _transparency(transparency: Transparency | None, publisher: str | Sequence[str] | None, log: str | None,
                  log_key: str | None, witnesses: Sequence[str], min_witnesses: int,
                  log_state: str | os.PathLike[str] | None) -> Transparency | None:
    """The ``transparency=`` object, or one built from ``publisher=, log=, log_key=`` (all three, or none)."""
    given = [x is not None for x in (publisher, log, log_key)]
    if not any(given):
        return transparency
    if transparency is not None:
        raise TypeError("VeilTransport: pass transparency=, or publisher= / log= / log_key=, not both")
    if not all(given):
        raise TypeError("VeilTransport: publisher=, log= and log_key= go together")
    assert publisher is not None and log is not None and log_key is not None
    return Transparency([publisher] if isinstance(publisher, str) else list(publisher), log, log_key,
                        list(witnesses), min_witnesses, log_state)


def _verifier(policy: PolicyLike | None, allow_simulated: bool, verifier: Verifier | None,
              transparency: Transparency | None = None) -> Verifier:
    """``veil proxy``'s verifier (policy object or file, the insecure flag, a transparency log), or the caller's own
    instead of it."""
    if verifier is not None:
        if policy is not None or allow_simulated or transparency is not None:
            raise TypeError("VeilTransport: pass a verifier, or a policy / allow_simulated / log, not both")
        return verifier
    return make_verifier(allow_simulated=allow_simulated, policy=policy, transparency=transparency)


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, pieces: AsyncIterator[bytes]) -> None:
        self._pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for p in self._pieces:
                yield p
        except VeilClientError as exc:
            raise httpx.ReadError(f"Veil: {exc}") from exc

    async def aclose(self) -> None:
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None:
            await aclose()


async def _await(aw: Awaitable[T]) -> T:
    return await aw


class VeilTransport(httpx.BaseTransport):
    """For ``httpx.Client`` / ``openai.OpenAI``: runs the async client on a private event-loop thread."""

    def __init__(self, relay_url: str, **options: Unpack[TransportOptions]) -> None:
        """The same options as :class:`VeilAsyncTransport` (which it runs)."""
        # Built first: a bad policy file raises here, before a thread is started that nothing would stop.
        self._async = VeilAsyncTransport(relay_url, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="veil-transport", daemon=True)
        self._thread.start()
        if options.get("tokens") is not None:  # fill the pool now, on the transport's loop, without waiting for it
            self._loop.call_soon_threadsafe(self._async.start_prefetch)

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_await(coro), self._loop).result()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self._run(self._async.send(request, request.read()))
        return _response(inner, self._async.client, None if inner.pieces is None else _SyncStream(self, inner.pieces))

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self._async.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, transport: VeilTransport, pieces: AsyncIterator[bytes]) -> None:
        self._t = transport
        self._pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                yield self._t._run(self._pieces.__anext__())
            except StopAsyncIteration:
                return
            except VeilClientError as exc:
                raise httpx.ReadError(f"Veil: {exc}") from exc

    def close(self) -> None:
        aclose = getattr(self._pieces, "aclose", None)
        if aclose is not None and self._t._loop.is_running():
            self._t._run(aclose())
