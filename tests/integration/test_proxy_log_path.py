"""``veil proxy --publisher --log --log-key``: the chat page learns the same keys from ``veil-config.json`` and reads
the log's static tlog-tiles files through the proxy's same-origin ``/log`` path (for its consistency proofs), and
nothing else of the log's server: only ``checkpoint``, ``tile/L/N[.p/W]`` and ``tile/entries/N[.p/W]`` in their one
canonical spelling, GET only, answers bounded by the path's size. Real processes on loopback (``veil log serve``)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.client.passthrough import LogPassthrough, log_path_limit
from tests.harness import Proc, free_port, start_veil
from tlog import generate_signer
from transparency.log import Log


def call(url: str, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Log, str]]:
    d: Path = tmp_path_factory.mktemp("log")
    log = Log.init(d / "log", "log.veil.example/test")
    log.append([b"entry one", b"entry two"])
    (d / "log" / "public" / "secret.txt").write_text("not a tile")
    lp, pp = free_port(), free_port()
    procs: list[Proc] = []
    try:
        procs.append(start_veil(["log", "serve", "--dir", str(d / "log"), "--port", str(lp)], lp,
                                health="/checkpoint"))
        publisher = generate_signer("releases.veil.example").verifier.vkey()
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", "http://127.0.0.1:9/gw",
                                 "--publisher", publisher, "--log", f"http://127.0.0.1:{lp}", "--log-key", log.vkey,
                                 "--log-state", str(d / "state.json"), "--insecure-allow-simulated"], pp,
                                health="/veil-config.json"))
        yield procs[1], log, publisher
    finally:
        for p in reversed(procs):
            p.stop()
            p.log_path.unlink(missing_ok=True)
        log.close()


def test_the_page_config_carries_the_keys_and_the_log_path(served: tuple[Proc, Log, str]) -> None:
    proxy, log, publisher = served
    status, body = call(proxy.base + "/veil-config.json")
    assert status == 200
    t = json.loads(body)["transparency"]
    assert t["publishers"] == [publisher] and t["log_key"] == log.vkey
    assert t["witnesses"] == [] and t["min_witnesses"] == 0
    assert t["log"] == "/log" and t["log_upstream"].startswith("http://127.0.0.1:")


def test_the_log_path_serves_checkpoint_tiles_and_entry_bundles(served: tuple[Proc, Log, str]) -> None:
    proxy, log, _ = served
    for path in ("checkpoint", "tile/0/000.p/2", "tile/entries/000.p/2"):
        status, body = call(f"{proxy.base}/log/{path}")
        assert status == 200, path
        assert body == (log.public / path).read_bytes(), path


@pytest.mark.parametrize("path", ["secret.txt", "tile/0/0", "tile/0/x000/000.p/2", "tile/00/000.p/2",
                                  "tile/0/000.p/02", "tile/0/000.p/256", "tile/entries/../checkpoint",
                                  "tile/64/000", "tile/0/000.p/2/", "log.key"])
def test_nothing_but_canonical_static_paths(served: tuple[Proc, Log, str], path: str) -> None:
    proxy, _, _ = served
    assert call(f"{proxy.base}/log/{path}")[0] == 404


def test_get_only(served: tuple[Proc, Log, str]) -> None:
    proxy, _, _ = served
    assert call(f"{proxy.base}/log/checkpoint", "POST")[0] == 405
    assert call(f"{proxy.base}/log/checkpoint", "HEAD")[0] == 405


def test_a_missing_tile_is_a_404(served: tuple[Proc, Log, str]) -> None:
    proxy, _, _ = served
    assert call(f"{proxy.base}/log/tile/0/001")[0] == 404


def test_path_limits() -> None:
    assert log_path_limit("checkpoint") == 16 * 1024
    assert log_path_limit("tile/0/000") == 256 * 32
    assert log_path_limit("tile/1/x001/234.p/7") == 7 * 32
    assert log_path_limit("tile/entries/000.p/3") == 3 * (2 + 65535)
    assert log_path_limit("tile/0/000.p/0") is None
    assert log_path_limit("checkpoint/") is None


def test_without_a_log_there_is_no_log_path() -> None:
    port = free_port()
    p = start_veil(["proxy", "--listen", f"127.0.0.1:{port}", "--relay", "http://127.0.0.1:9/gw"], port,
                   health="/veil-config.json")
    try:
        status, body = call(p.base + "/veil-config.json")
        assert status == 200 and "transparency" not in json.loads(body)
        assert call(p.base + "/log/checkpoint")[0] == 404
    finally:
        p.stop()
        p.log_path.unlink(missing_ok=True)


# --- the /log path against a log server that answers in pieces, lies about its length, or redirects --------------

async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _through_proxy(upstream: web.Application, path: str) -> tuple[int, bytes]:
    """GET /log/<path> on an in-process LogPassthrough whose log is ``upstream`` (also on loopback)."""
    up_runner, up_url = await _serve(upstream)
    lp = LogPassthrough(up_url)
    app = web.Application()
    lp.add_routes(app)
    runner, url = await _serve(app)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{url}/log/{path}", allow_redirects=False) as r:
            return r.status, await r.read()
    finally:
        await runner.cleanup()
        await up_runner.cleanup()


TILE = bytes(range(256)) * 32  # a full hash tile: 8192 bytes


async def test_a_tile_written_in_delayed_pieces_comes_back_whole() -> None:
    async def pieces(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(TILE), 3000):
            await resp.write(TILE[i:i + 3000])
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    upstream = web.Application()
    upstream.router.add_get("/tile/0/000", pieces)
    status, body = await _through_proxy(upstream, "tile/0/000")
    assert status == 200 and body == TILE


async def test_an_oversized_answer_in_pieces_is_refused() -> None:
    async def too_much(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(3):
            await resp.write(TILE)
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    upstream = web.Application()
    upstream.router.add_get("/tile/0/000", too_much)
    status, body = await _through_proxy(upstream, "tile/0/000")
    assert status == 502 and b"exceeds 8192 bytes" in body


async def test_an_answer_shorter_than_its_content_length_is_refused() -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(TILE))})
        await resp.prepare(request)
        await resp.write(TILE[:3000])
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return resp

    upstream = web.Application()
    upstream.router.add_get("/tile/0/000", short)
    status, _ = await _through_proxy(upstream, "tile/0/000")
    assert status == 502


async def test_a_redirect_is_not_followed() -> None:
    fetched: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.Response(body=TILE)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    upstream = web.Application()
    upstream.router.add_get("/tile/0/000", redirect)
    upstream.router.add_get("/elsewhere", elsewhere)
    status, _ = await _through_proxy(upstream, "tile/0/000")
    assert status == 502 and fetched == []
