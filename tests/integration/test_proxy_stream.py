"""``veil proxy``'s streamed answers (proxy/client/app.py ``_pipe``, proxy/transport.py ``ChunkedStream``): what it
does when the relay cuts a stream short, and when the SDK does not read.

A real gateway (echo engine) and a real ``veil proxy``, with a stand-in relay between them, in a thread of this
process: it forwards the OHTTP bytes unchanged, counts what it could send to the proxy, and can cut a stream.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from .conftest import Proc, free_port, start_veil, stop_all

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"


class StandInRelay:
    """``/gw`` (keys), ``/gw/attestation`` and ``POST /gw`` to one gateway. ``cut_after``: the connection to the
    proxy is closed once that many answer bytes have been sent. ``sent``: answer bytes the proxy has taken (a
    write waits while aiohttp's buffer is full, and the socket's send buffer is kept small: what is counted is
    about what the proxy read)."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.cut_after: int | None = None
        self.sent = 0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gw", self._get)
        app.router.add_get("/gw/attestation", self._get)
        app.router.add_post("/gw", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self._runner.setup())
        self.loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _get(self, request: web.Request) -> web.Response:
        path = WELL_KNOWN if request.path == "/gw" else "/.well-known/veil-attestation"
        async with aiohttp.ClientSession() as s, s.get(self.gateway + path) as r:
            return web.Response(status=r.status, body=await r.read(),
                                headers={"Content-Type": r.headers["Content-Type"]})

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        assert request.transport is not None
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        async with aiohttp.ClientSession() as s, s.post(self.gateway + WELL_KNOWN, data=body, headers={
                "Content-Type": request.headers["Content-Type"]}) as r:
            resp = web.StreamResponse(status=r.status, headers={"Content-Type": r.headers["Content-Type"]})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            async for piece in r.content.iter_any():
                if self.cut_after is not None and self.sent + len(piece) > self.cut_after:
                    await resp.write(piece[: self.cut_after - self.sent])
                    request.transport.close()
                    return resp
                await resp.write(piece)  # waits while the socket's buffer is full
                self.sent += len(piece)
            await resp.write_eof()
            return resp


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[Proc, StandInRelay]]:
    gp, pp = free_port(), free_port()
    procs: list[Proc] = []
    relay: StandInRelay | None = None
    try:
        procs.append(start_veil(["gateway", "--listen", f"127.0.0.1:{gp}", "--engine", "echo",
                                 "--max-request-bytes", str(8 * 1024 * 1024)], gp))
        relay = StandInRelay(f"http://127.0.0.1:{gp}")
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{relay.port}/gw",
                                 "--insecure-allow-simulated"], pp))
        yield procs[1], relay
    finally:
        stop_all(procs, remove_logs=True)
        if relay is not None:
            relay.stop()


def test_a_stream_the_relay_cuts_short_reaches_the_sdk_as_an_error(proxied: tuple[Proc, StandInRelay]) -> None:
    proxy, relay = proxied
    client = openai.OpenAI(base_url=proxy.base + "/v1", api_key="x", max_retries=0)
    words = [f"w{i}" for i in range(300)]
    relay.cut_after = None
    whole = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": " ".join(words)}], stream=True) if c.choices)
    assert whole == " ".join(words)
    relay.sent, relay.cut_after = 0, 4000  # well past the head, well short of the end
    got: list[str] = []
    with pytest.raises(Exception) as err:
        for c in client.chat.completions.create(model="echo", stream=True,
                                                messages=[{"role": "user", "content": " ".join(words)}]):
            if c.choices:
                got.append(c.choices[0].delta.content or "")
    assert got and "".join(got) != whole  # it had started, and did not pass for complete
    assert isinstance(err.value, openai.APIError) and "stream" in str(err.value)
    # below the SDK: the error event, then the connection closes without HTTP's last chunk (truncation, not an end)
    relay.sent = 0
    body = orjson.dumps({"model": "echo", "stream": True, "messages": [{"role": "user", "content": " ".join(words)}]})
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (proxy.port, len(body), body))
        raw = b""
        while piece := sock.recv(65536):
            raw += piece
    assert raw.startswith(b"HTTP/1.1 200") and b"veil_stream_broken" in raw and not raw.endswith(b"0\r\n\r\n")
    relay.cut_after = None
    assert client.models.list().data[0].id == "echo"  # and the proxy goes on serving


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _stream(proxy: Proc, words: int) -> bytes:
    body = orjson.dumps({"model": "echo", "stream": True, "messages": [{"role": "user", "content": "x " * words}]})
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (proxy.port, len(body), body))


def _read_to_end(sock: socket.socket, deadline: float) -> bytes:
    raw = bytearray()
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    while not raw.endswith(b"\r\n0\r\n\r\n") and time.monotonic() < deadline:
        piece = sock.recv(1 << 20)
        if not piece:
            break
        raw += piece
    return bytes(raw)


def test_a_client_that_does_not_read_does_not_make_the_proxy_buffer(proxied: tuple[Proc, StandInRelay]) -> None:
    """The SDK side stops reading: the proxy stops reading the relay instead of holding the answer (about 27 MB).

    What is measured is the proxy process's resident memory, not the bytes the relay got rid of: the kernel's socket
    buffers between relay, proxy and client autotune up to net.ipv4.tcp_rmem/tcp_wmem's maximum (32 MiB + 4 MiB on
    some machines), so how much the relay sends before it stalls says little about what the proxy keeps. A proxy
    that did not stop reading would hold what the client leaves unread, all of it in its own heap."""
    proxy, relay = proxied
    relay.sent, relay.cut_after = 0, None
    pid = proxy.popen.pid
    with socket.create_connection(("127.0.0.1", proxy.port)) as warm:  # first-use allocations out of the way
        warm.sendall(_stream(proxy, 20_000))
        assert b"[DONE]" in _read_to_end(warm, time.monotonic() + 60)
    before = _rss_bytes(pid)
    relay.sent = 0
    with socket.socket() as sock:
        # A bounded receive buffer, set before connecting and above loopback's MSS (64 KiB): set after connecting, or
        # below one MSS, the window it advertises never opens to a full segment once filled, and the sender falls
        # back to zero-window probes backing off up to 120 s (the kernel's silly-window avoidance, not the proxy)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(_stream(proxy, 100_000))
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        # wait until the relay's sending stalls (or it has sent the whole answer)
        last, still_since, peak = -1, time.monotonic(), before
        while time.monotonic() - still_since < 2:
            if relay.sent != last:
                last, still_since = relay.sent, time.monotonic()
            peak = max(peak, _rss_bytes(pid))
            time.sleep(0.1)
        # a proxy that went on reading would hold what the client left unread (about 22 MB, measured with the
        # pause turned off); one that pauses grows by its allocator's noise (about 1 MB here)
        assert peak - before < 6 * 1024 * 1024, (relay.sent, peak - before)
        # now read: the stream goes on, and ends as a whole answer
        rest = _read_to_end(sock, time.monotonic() + 120)
    assert rest.endswith(b"\r\n0\r\n\r\n") and b"data: [DONE]" in rest
    assert relay.sent > 16 * 1024 * 1024  # the proxy took the rest of the answer once the client read it
