"""The in-process httpx transports (proxy/client/httpx_transport.py) against a loopback stand-in relay that speaks
real OHTTP: their OHTTP ``POST`` requests (and streamed answers) go through the client's :class:`hop.Pool`, not
the aiohttp session (which only fetches keys and evidence), on the loop that uses it (``VeilTransport``'s own
thread); Privacy Pass tokens are spent and retried through the pool; a 422 still refreshes the keys; the pool is
closed with the transport."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx2 as httpx
import pytest
from aiohttp import web

import hop
import ohttp
from ohttp import ChunkedGatewayRequest, Gateway, bhttp
from proxy.client.httpx_transport import TIMEOUT, VeilAsyncTransport, VeilTransport

from .test_open_stream import EVENTS, KEY, RING

CHALLENGE = 'PrivateToken challenge="AAAA", token-key="BBBB"'


@dataclass
class Seen:
    """One request the stand-in relay received."""

    method: str
    port: int  # the client's side of the connection: one value per connection
    user_agent: str
    authorization: str


@dataclass
class Relay:
    url: str
    seen: list[Seen] = field(default_factory=list)
    refuse_token: str | None = None  # a 401 with a PrivateToken challenge for this Authorization value
    reject_key_once: bool = False  # the first POST is answered 422 (unknown key id)

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]


def _record(relay: Relay, request: web.Request) -> None:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    relay.seen.append(Seen(request.method, peer[1] if peer else 0, request.headers.get("User-Agent", ""),
                           request.headers.get("Authorization", "")))


def _app(relay: Relay) -> web.Application:
    async def keys(request: web.Request) -> web.Response:
        _record(relay, request)
        return web.Response(body=ohttp.encode_list([KEY.config]), content_type=ohttp.MEDIA_TYPE_KEYS)

    async def attestation(request: web.Request) -> web.Response:
        _record(relay, request)
        return web.Response(body=b"{}", content_type="application/json")

    async def post(request: web.Request) -> web.StreamResponse:
        _record(relay, request)
        body = await request.read()
        if relay.refuse_token is not None and request.headers.get("Authorization") == relay.refuse_token:
            return web.Response(status=401, text="token refused", headers={"WWW-Authenticate": CHALLENGE})
        if relay.reject_key_once:
            relay.reject_key_once = False
            return web.Response(status=422, text="unknown ohttp-key id")
        if request.content_type == ohttp.MEDIA_TYPE_REQUEST:
            inner, gresp = Gateway(RING).decapsulate(body)
            req = bhttp.decode_request(inner)
            content = json.dumps({"path": req.path.decode(), "echo": json.loads(req.content)}).encode()
            answer = bhttp.encode_response(bhttp.Response(status=200, headers=((b"content-type", b"application/json"),),
                                                          content=content))
            return web.Response(body=gresp.encapsulate(answer), content_type=ohttp.MEDIA_TYPE_RESPONSE)
        greq = ChunkedGatewayRequest(RING)
        greq.receive_data(body)
        greq.receive_data(b"")
        while greq.next_event() is not ohttp.NEED_DATA:
            pass
        enc = greq.response()
        out = web.StreamResponse(headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_RESPONSE})
        out.enable_chunked_encoding()
        await out.prepare(request)
        await out.write(enc.encode_chunk(bhttp.encode_response_head(200, [("content-type", "text/event-stream")])))
        for e in EVENTS:
            await out.write(enc.encode_chunk(bhttp.encode_chunk(e)))
        await out.write(enc.encode_chunk(bhttp.encode_end(), final=True))
        await out.write_eof()
        return out

    app = web.Application()
    app.router.add_get("/gw", keys)
    app.router.add_get("/gw/attestation", attestation)
    app.router.add_post("/gw", post)
    return app


@pytest.fixture
def relay() -> Iterator[Relay]:
    """The stand-in relay on its own thread and loop (the sync transport blocks the test's thread)."""
    loop = asyncio.new_event_loop()
    runner_box: list[web.AppRunner] = []
    ready = threading.Event()
    relay = Relay("")

    async def start() -> None:
        runner = web.AppRunner(_app(relay))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runner_box.append(runner)
        port = runner.addresses[0][1]
        relay.url = f"http://127.0.0.1:{port}/gw"
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    assert ready.is_set()
    try:
        yield relay
    finally:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def verifier(bundle: bytes, keys: bytes) -> tuple[object, bool]:
    return None, True


CHAT = "/v1/chat/completions"
STREAMED = b"".join(EVENTS)


def _pool(transport: VeilAsyncTransport) -> hop.Pool:
    pool = transport.client._pool
    assert pool is not None, "the transport's OhttpClient has no hop.Pool: its POSTs go through aiohttp"
    return pool


def _through_the_pool(relay: Relay, posts: int) -> None:
    """``posts`` OHTTP POSTs arrived, none from aiohttp (whose session says so in its User-Agent; hop sends none),
    all on one kept-alive connection."""
    seen = relay.posts()
    assert len(seen) == posts
    assert all("aiohttp" not in s.user_agent for s in seen), [s.user_agent for s in seen]
    assert len({s.port for s in seen}) == 1


async def test_async_transport_posts_and_streams_through_its_pool(relay: Relay) -> None:
    transport = VeilAsyncTransport(relay.url, verifier=verifier)
    pool = _pool(transport)
    async with httpx.AsyncClient(transport=transport, base_url="http://veil.invalid") as client:
        for n in range(2):
            r = await client.post(CHAT, json={"n": n})
            assert r.status_code == 200 and r.json() == {"path": CHAT, "echo": {"n": n}}
            assert r.headers["x-veil-attestation"] == "simulated"
            async with client.stream("POST", CHAT, json={"stream": True}) as s:
                assert s.status_code == 200 and s.headers["content-type"] == "text/event-stream"
                assert b"".join([p async for p in s.aiter_bytes()]) == STREAMED
        _through_the_pool(relay, 4)
        assert [s.method for s in relay.seen if s.method == "GET"] == ["GET", "GET"]  # keys, evidence: the session
        assert len(pool._all) == 1 and sum(len(v) for v in pool._idle.values()) == 1  # kept for the next request
    assert not pool._all  # closed with the transport


def test_sync_transport_uses_its_pool_on_its_own_loop(relay: Relay) -> None:
    transport = VeilTransport(relay.url, verifier=verifier)
    pool = _pool(transport._async)
    with httpx.Client(transport=transport, base_url="http://veil.invalid") as client:
        for n in range(2):
            r = client.post(CHAT, json={"n": n})
            assert r.status_code == 200 and r.json()["echo"] == {"n": n}
            with client.stream("POST", CHAT, json={"stream": True}) as s:
                assert s.status_code == 200
                assert b"".join(s.iter_bytes()) == STREAMED
        _through_the_pool(relay, 4)
        assert [c.loop for c in pool._all] == [transport._loop]  # made on the transport's thread, not the caller's
    assert not pool._all
    assert not transport._thread.is_alive()


def test_a_stream_left_early_drops_its_connection(relay: Relay) -> None:
    transport = VeilTransport(relay.url, verifier=verifier)
    pool = _pool(transport._async)
    with httpx.Client(transport=transport, base_url="http://veil.invalid") as client:
        with client.stream("POST", CHAT, json={"stream": True}) as s:
            next(s.iter_raw())
        assert not pool._all  # not handed back half read
        assert client.post(CHAT, json={"n": 1}).json()["echo"] == {"n": 1}
    assert len({s.port for s in relay.posts()}) == 2


def test_the_pool_has_the_sessions_timeouts() -> None:
    transport = VeilAsyncTransport("http://relay.invalid/gw", verifier=verifier)
    pool = _pool(transport)
    assert (pool.connect_timeout, pool.read_timeout) == (10, TIMEOUT)
    assert transport.client._timeout == TIMEOUT == 600


def test_a_relay_url_no_request_could_go_to_is_refused_when_made() -> None:
    # the threads there were before, not their count: one an earlier test left may end meanwhile, and a count that
    # dropped by one would hide a loop thread started here and left running
    before = set(threading.enumerate())
    for make in (VeilTransport, VeilAsyncTransport):
        with pytest.raises(ValueError, match="bad relay URL"):
            make("http://relay.example/g w", verifier=verifier)
    assert set(threading.enumerate()) - before == set()  # no loop thread left running


async def test_a_422_refreshes_the_keys_and_retries_through_the_pool(relay: Relay) -> None:
    relay.reject_key_once = True
    transport = VeilAsyncTransport(relay.url, verifier=verifier)
    async with httpx.AsyncClient(transport=transport, base_url="http://veil.invalid") as client:
        r = await client.post(CHAT, json={"n": 7})
        assert r.json()["echo"] == {"n": 7}
    assert [s.method for s in relay.seen] == ["GET", "GET", "POST", "GET", "GET", "POST"]
    assert all("aiohttp" not in s.user_agent for s in relay.posts())


async def test_an_unreachable_relay_is_a_transport_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    transport = VeilAsyncTransport(f"http://127.0.0.1:{port}/gw", verifier=verifier)
    from proxy.transport import KeyState

    transport.client.keys = KeyState(keys_body=b"k", config=KEY.config, simulated=True)  # no key fetch
    async with httpx.AsyncClient(transport=transport, base_url="http://veil.invalid") as client:
        with pytest.raises(httpx.TransportError, match="Veil: relay unreachable: ConnectFailed"):
            await client.post(CHAT, json={})


# -- Privacy Pass tokens: spent by the client on the pool's requests, not by a session middleware ----------------


@dataclass(frozen=True)
class Held:
    key_id: bytes
    header: str


class Wallet:
    """A TokenWallet's interface as the transport uses it (no ``middleware()``: a session must not spend)."""

    def __init__(self) -> None:
        self.taken = 0
        self.learned: list[str] = []
        self.dropped: list[bytes] = []
        self.closed = False

    async def prefetch(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True

    async def take(self) -> Held:
        self.taken += 1
        return Held(b"k%d" % self.taken, f"PrivateToken token=T{self.taken}")

    def learn(self, www_authenticate: str) -> bool:
        self.learned.append(www_authenticate)
        return "PrivateToken" in www_authenticate

    def drop_key(self, key_id: bytes) -> None:
        self.dropped.append(key_id)


@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_tokens_are_spent_and_retried_through_the_pool(relay: Relay, sync: bool) -> None:
    relay.refuse_token = "PrivateToken token=T1"  # the first token is refused: the client retries with another
    wallet = Wallet()
    if sync:
        def run() -> None:
            transport = VeilTransport(relay.url, verifier=verifier, tokens=wallet)  # type: ignore[arg-type]
            with httpx.Client(transport=transport, base_url="http://veil.invalid") as client:
                assert client.post(CHAT, json={"n": 1}).json()["echo"] == {"n": 1}
                with client.stream("POST", CHAT, json={"stream": True}) as s:
                    assert b"".join(s.iter_bytes()) == STREAMED

        await asyncio.to_thread(run)
    else:
        transport = VeilAsyncTransport(relay.url, verifier=verifier, tokens=wallet)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://veil.invalid") as client:
            assert (await client.post(CHAT, json={"n": 1})).json()["echo"] == {"n": 1}
            async with client.stream("POST", CHAT, json={"stream": True}) as s:
                assert b"".join([p async for p in s.aiter_bytes()]) == STREAMED
    posts = relay.posts()
    assert [s.authorization for s in posts] == [f"PrivateToken token=T{i}" for i in (1, 2, 3)]
    assert all("aiohttp" not in s.user_agent for s in posts)
    assert wallet.taken == 3 and wallet.learned == [CHALLENGE] and wallet.dropped == [b"k1"]
    assert all(s.authorization == "" for s in relay.seen if s.method == "GET")  # key fetches spend none
    assert wallet.closed
