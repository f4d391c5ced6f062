"""The browser client in a real Chromium against the real chain on loopback.

``veil gateway`` (echo engine, 30 ms per token) <- a capture server in this process that records every byte the
relay forwards and receives <- ``veil relay --cors-origin *`` <- the page, served by ``veil proxy`` and encrypting
in the browser. The gateway publishes an X-Wing key configuration and an X25519 one (the default); ``chain_x25519``
is the same chain with ``veil gateway --kem x25519``. Chromium is Debian's (``scripts/setup-web --with-chromium``
installs it); Playwright only drives it.
"""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.conftest import REPO, Proc, free_port, start_veil

# Re-exported for the test modules.
__all__ = ["REPO", "Proc", "free_port", "start_veil"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WEB_DIR = REPO / "proxy" / "web"
ARTIFACTS = REPO / "test-artifacts"
WELL_KNOWN = "/.well-known/ohttp-gateway"


# ------------------------------------------------------------------------------------------------------------------
# Small aiohttp servers running in a background thread of the test process


class ThreadServer:
    """Runs an aiohttp application on 127.0.0.1 in its own thread and event loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handler_cancellation=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class Exchange:
    """One request the relay forwarded and the answer it received, byte for byte."""

    method: str
    path: str
    content_type: str
    request: bytes
    response: bytearray = field(default_factory=bytearray)


class CaptureServer(ThreadServer):
    """Stands where the relay thinks the gateway is: records every exchange and forwards it to the real gateway.

    Streams are passed through piece by piece; when the relay hangs up, the upstream connection is closed too,
    so cancellation still reaches the gateway.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._session: aiohttp.ClientSession | None = None
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_cleanup.append(self._close)
        super().__init__(app)

    def snapshot(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        body = await request.read()
        ex = Exchange(request.method, request.path_qs, request.headers.get("Content-Type", ""), body)
        with self._lock:
            self.exchanges.append(ex)
        headers = {k: request.headers[k] for k in ("Content-Type", "Accept", "Incremental") if k in request.headers}
        async with self._session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                         headers=headers, allow_redirects=False) as up:
            out = web.StreamResponse(status=up.status, headers={
                k: up.headers[k] for k in ("Content-Type", "Cache-Control", "Incremental") if k in up.headers})
            out.enable_chunked_encoding()
            await out.prepare(request)
            try:
                async for piece in up.content.iter_any():
                    ex.response += piece
                    await out.write(piece)
                await out.write_eof()
            except (ConnectionResetError, OSError):
                pass  # the relay hung up: leaving this block closes the gateway connection as well
        return out


def static_site(relay: str, *, allow_simulated: bool = True, require_post_quantum: bool | None = None) -> ThreadServer:
    """The page from proxy/web on its own origin, laid out as ``veil proxy`` serves it, with its own config."""
    fields: dict[str, Any] = {"relay": relay, "allow_simulated": allow_simulated}
    if require_post_quantum is not None:
        fields["require_post_quantum"] = require_post_quantum
    config = orjson.dumps(fields)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def web_config(request: web.Request) -> web.Response:
        return web.Response(body=config, content_type="application/json")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/veil-config.json", web_config)
    app.router.add_static("/static/", WEB_DIR)
    return ThreadServer(app).start()


# ------------------------------------------------------------------------------------------------------------------
# The chain


@dataclass
class Chain:
    gateway: Proc
    capture: CaptureServer
    relay: Proc
    proxy: Proc

    @property
    def relay_url(self) -> str:
        return self.relay.base + "/gw"

    @property
    def page_url(self) -> str:
        return self.proxy.base + "/"

    @property
    def page_relay(self) -> str:
        """Where the page served by ``veil proxy`` sends its OHTTP requests (forwarded to the relay)."""
        return self.proxy.base + "/relay"

    def metric(self, pattern: str) -> float:
        """Sum of the gateway's Prometheus samples whose line matches ``pattern``."""
        with urllib.request.urlopen(self.gateway.base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith("#") and re.search(pattern, line):
                total += float(line.rsplit(" ", 1)[1])
        return total


@contextmanager
def start_chain(*gateway_args: str) -> Iterator[Chain]:
    """gateway (echo engine, 30 ms per token; plus ``gateway_args``) <- capture <- relay <- proxy, stopped after."""
    gp, rp, pp = free_port(), free_port(), free_port()
    procs: list[Proc] = []
    capture: CaptureServer | None = None
    try:
        procs.append(start_veil(["gateway", "--engine", "echo", "--echo-token-delay", "0.03",
                                 "--listen", f"127.0.0.1:{gp}", *gateway_args], gp))
        capture = CaptureServer(f"http://127.0.0.1:{gp}").start()  # type: ignore[assignment]
        assert capture is not None
        procs.append(start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--cors-origin", "*",
                                 "--gateway", f"gw={capture.base}{WELL_KNOWN}"], rp))
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                                 "--insecure-allow-simulated"], pp))
        yield Chain(procs[0], capture, procs[1], procs[2])
    finally:
        for p in reversed(procs):
            p.stop()
            p.log_path.unlink(missing_ok=True)
        if capture is not None:
            capture.stop()


@pytest.fixture(scope="package")
def chain() -> Iterator[Chain]:
    """The default gateway: an X-Wing key configuration first, an X25519 one second."""
    with start_chain() as c:
        yield c


@pytest.fixture(scope="package")
def chain_x25519() -> Iterator[Chain]:
    """A gateway that publishes an X25519 key configuration only (``veil gateway --kem x25519``)."""
    with start_chain("--kem", "x25519") as c:
        yield c


# ------------------------------------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), "Chromium is missing: run ./scripts/setup-web --with-chromium (apt-get install chromium)"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class PageLog:
    """What the page did: every request it made and every error it raised."""

    requests: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, PageLog]]:
    context = browser.new_context(viewport={"width": 1280, "height": 820}, locale="en-GB", timezone_id="UTC")
    pg = context.new_page()
    log = PageLog()
    pg.on("request", lambda r: log.requests.append(r))
    pg.on("pageerror", lambda e: log.errors.append(str(e)))
    pg.on("console", lambda m: log.errors.append(m.text) if m.type == "error" else None)
    try:
        yield pg, log
    finally:
        context.close()


def wait_ready(pg: Page, timeout_ms: int = 15000) -> None:
    """Until the page has verified the gateway and listed the models."""
    pg.wait_for_selector("#model:not([disabled])", timeout=timeout_ms)


def send(pg: Page, text: str) -> None:
    pg.fill("#input", text)
    pg.press("#input", "Enter")


def assistant_texts(pg: Page) -> list[str]:
    return pg.eval_on_selector_all(".msg.assistant .content", "els => els.map(e => e.textContent)")  # type: ignore[no-any-return]
