"""Hostile input, faults, load and key rotation against real processes: nothing crashes, nothing is lost silently,
nothing leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp
import openai
import orjson
import pytest

import ohttp
from ohttp import bhttp
from proxy import OhttpClient
from proxy.verify import make_verifier

from .conftest import Proc, free_port, running_chain

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
CANARY = "purple-elephant-canary-5513"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_exchange(port: int, payload: bytes, *, read: bool = True, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        if not read:
            return b""
        chunks = []
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except TimeoutError:
            pass
        return b"".join(chunks)


def healthy(proc: Proc) -> bool:
    import urllib.request

    with urllib.request.urlopen(proc.base + "/healthz", timeout=5) as r:
        return r.status == 200


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[Proc, Proc, Proc]]:
    with running_chain(["--engine", "echo", "--echo-token-delay", "0.01", "--max-request-bytes", "100000"],
                       ["--client-timeout", "2", "--rate-per-minute", "100000"]) as c:
        yield c.gateway, c.relay, c.proxy


# -- hostile HTTP against the gateway and the relay ----------------------------------------------------------------


@pytest.mark.parametrize("target", [0, 1], ids=["gateway", "relay"])
def test_malformed_http_gets_4xx_and_the_server_stays_up(chain: tuple[Proc, Proc, Proc], target: int) -> None:
    proc = chain[target]
    path = WELL_KNOWN if target == 0 else "/gw"
    before = rss_kb(proc.popen.pid)
    cases = [
        b"GARBAGE\r\n\r\n",
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS ClientHello on a plain port
    ]
    for payload in cases * 20:
        reply = raw_exchange(proc.port, payload)
        assert reply == b"" or reply[:10] in (b"HTTP/1.1 4", b"HTTP/1.0 4"), reply[:80]
    assert healthy(proc)
    assert rss_kb(proc.popen.pid) < before + 20_000  # no growth beyond allocator noise


@pytest.mark.parametrize("target", [0, 1], ids=["gateway", "relay"])
async def test_wrong_methods_and_media_types(chain: tuple[Proc, Proc, Proc], target: int) -> None:
    proc = chain[target]
    path = WELL_KNOWN if target == 0 else "/gw"
    async with aiohttp.ClientSession() as s:
        for method in ("PUT", "DELETE", "PATCH"):
            async with s.request(method, proc.base + path, data=b"x") as r:
                assert r.status == 405
        async with s.post(proc.base + path, data=b"x", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 415


async def test_body_shorter_than_its_content_length_is_not_processed(chain: tuple[Proc, Proc, Proc]) -> None:
    gw, relay, _ = chain
    for proc, path in ((gw, WELL_KNOWN), (relay, "/gw")):
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-req\r\n"
                "Content-Length: 5000\r\n\r\n").encode()
        raw_exchange(proc.port, head + b"\x00" * 100, read=False)  # then hang up
        assert healthy(proc)


async def test_relay_cuts_off_slow_drip_bodies(chain: tuple[Proc, Proc, Proc]) -> None:
    relay = chain[1]
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as s:
        s.sendall(b"POST /gw HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-req\r\nContent-Length: 1000\r\n\r\n")
        s.sendall(b"\x00")
        reply = s.recv(4096)  # the relay stops waiting after --client-timeout (2 s)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:60]
    assert time.monotonic() - t0 < 5
    assert healthy(relay)


async def test_disconnect_mid_request_and_mid_stream(chain: tuple[Proc, Proc, Proc]) -> None:
    gw, relay, proxy = chain
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.base + WELL_KNOWN) as r:
            config = ohttp.decode_list(await r.read())[0]
    for _ in range(10):
        creq = ohttp.ChunkedClientRequest(config)
        inner = bhttp.encode_request(bhttp.Request(
            method="POST", path="/v1/chat/completions",
            headers=[("content-type", "application/json"), ("date", formatdate(usegmt=True))],
            content=orjson.dumps({"model": "echo", "stream": True,
                                  "messages": [{"role": "user", "content": "x " * 300}]})))
        wire = creq.encode_chunk(inner, final=True)
        # Mid-request: half the body, then hang up (through the relay, which streams chunked requests).
        raw_exchange(relay.port, b"POST /gw HTTP/1.1\r\nHost: x\r\nContent-Type: message/ohttp-chunked-req\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(wire) // 2:x}\r\n".encode()
                     + wire[: len(wire) // 2] + b"\r\n", read=False)
        # Mid-stream: read the first bytes of the answer, then hang up.
        async with aiohttp.ClientSession() as s:
            r = await s.post(relay.base + "/gw", data=wire, headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_REQUEST})
            await r.content.read(100)
            r.close()
    for p in chain:
        assert healthy(p)


async def test_truncated_and_reordered_chunks_are_rejected(chain: tuple[Proc, Proc, Proc]) -> None:
    gw = chain[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.base + WELL_KNOWN) as r:
            config = ohttp.decode_list(await r.read())[0]
        inner = bhttp.encode_request(bhttp.Request(method="GET", path="/v1/models"))
        creq = ohttp.ChunkedClientRequest(config)
        first = creq.encode_chunk(inner[:5])
        second = creq.encode_chunk(inner[5:])
        final = creq.encode_chunk(b"", final=True)
        hdr = 7 + 32
        reordered = first[:hdr] + second + first[hdr:] + final
        for body, expected in ((first + second, 400), (reordered, 400)):
            async with s.post(gw.base + WELL_KNOWN, data=body,
                              headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_REQUEST}) as r:
                assert r.status == expected, await r.text()


# -- faults --------------------------------------------------------------------------------------------------------


def test_gateway_killed_relay_answers_502_at_once_and_proxy_reports_it(veil_process: Callable[..., Proc]) -> None:
    gp, rp, pp = free_port(), free_port(), free_port()
    gw = veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}"], gp)
    relay = veil_process(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw=http://127.0.0.1:{gp}{WELL_KNOWN}"], rp)
    proxy = veil_process(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                          "--insecure-allow-simulated"], pp)
    client = openai.OpenAI(base_url=proxy.base + "/v1", api_key="x", max_retries=0)
    assert client.models.list().data[0].id == "echo"
    gw.popen.kill()
    gw.popen.wait()
    t0 = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        client.models.list()
    assert time.monotonic() - t0 < 2
    assert err.value.status_code == 502
    assert "relay or gateway answered HTTP 502" in str(err.value)
    # Relay restarted (and the gateway back): the next request recovers without restarting the proxy.
    gw2 = veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}"], gp)
    relay.stop()
    veil_process(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw=http://127.0.0.1:{gp}{WELL_KNOWN}"], rp)
    assert gw2.popen.poll() is None
    # The new gateway has new keys: the proxy gets 422, refreshes once, and succeeds.
    assert client.models.list().data[0].id == "echo"


def test_graceful_shutdown_lets_streams_finish(veil_process: Callable[..., Proc]) -> None:
    gp = free_port()
    gw = veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}", "--echo-token-delay", "0.05"], gp)

    async def run() -> tuple[str, bool]:
        base = gw.base + "/.well-known/"
        c = OhttpClient(base + "ohttp-gateway", keys_url=base + "ohttp-gateway",
                        attestation_url=base + "veil-attestation", verifier=make_verifier(allow_simulated=True))
        try:
            words = " ".join(f"w{i}" for i in range(40))  # 2 s of streaming
            r = await c.request("POST", "/v1/chat/completions", [("content-type", "application/json")],
                                orjson.dumps({"model": "echo", "stream": True,
                                              "messages": [{"role": "user", "content": words}]}), chunked=True)
            assert r.pieces is not None
            gw.popen.send_signal(signal.SIGTERM)  # mid-stream
            await asyncio.sleep(0.3)
            refused = False
            try:
                await c.request("GET", "/v1/models")
            except Exception:
                refused = True
            text = b"".join([p async for p in r.pieces])
            return text.decode(), refused
        finally:
            await c.close()

    text, refused = asyncio.run(run())
    assert "w39" in text and text.endswith("data: [DONE]\n\n")
    assert refused, "a new request was accepted during shutdown"
    assert gw.popen.wait(10) == 0


# -- load, rotation and leaks --------------------------------------------------------------------------------------


async def _stream_once(c: OhttpClient, n_words: int) -> bool:
    words = " ".join(f"{CANARY}-{i}" for i in range(n_words))
    r = await c.request("POST", "/v1/chat/completions", [("content-type", "application/json")],
                        orjson.dumps({"model": "echo", "stream": True,
                                      "messages": [{"role": "user", "content": words}]}), chunked=True)
    assert r.status == 200 and r.pieces is not None
    body = b"".join([p async for p in r.pieces])
    return body.endswith(b"data: [DONE]\n\n") and f"{CANARY}-{n_words - 1}".encode() in body


def test_load_with_key_rotation_loses_nothing_and_logs_nothing(veil_process: Callable[..., Proc]) -> None:
    """200 concurrent streams through relay + gateway for a bounded time while keys rotate (scripts/bench/load.py runs
    the 60 s version)."""
    gp, rp = free_port(), free_port()
    gw = veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}", "--echo-token-delay", "0.01",
                       "--rotation-grace", "2"], gp)
    relay = veil_process(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw=http://127.0.0.1:{gp}{WELL_KNOWN}",
                          "--rate-per-minute", "1000000", "--max-connections-per-address", "1000",
                          "--max-in-flight-per-address", "1000"], rp)
    duration, concurrency = 8.0, 200
    stats: dict[str, Any] = {"ok": 0, "failed": 0, "refreshes": 0}

    async def run() -> None:
        c = OhttpClient(relay.base + "/gw", verifier=make_verifier(allow_simulated=True))
        await c.refresh_keys()
        original_refresh = c.refresh_keys

        fetched: set[int] = set()

        async def counting_refresh(*, stale: bytes | None = None) -> Any:
            out = await original_refresh(stale=stale)
            fetched.add(id(out))  # waiters served by another task's refresh get the same KeyState object
            stats["refreshes"] = len(fetched)
            return out

        c.refresh_keys = counting_refresh  # type: ignore[method-assign]
        deadline = time.monotonic() + duration

        async def worker() -> None:
            while time.monotonic() < deadline:
                try:
                    if await _stream_once(c, 10):
                        stats["ok"] += 1
                    else:
                        stats["failed"] += 1
                except Exception as exc:  # any failure counts
                    stats["failed"] += 1
                    stats.setdefault("errors", []).append(repr(exc)[:200])

        async def rotate() -> None:
            await asyncio.sleep(duration / 4)
            gw.popen.send_signal(signal.SIGUSR1)  # new key published; the old one retires after 2 s

        await asyncio.gather(rotate(), *(worker() for _ in range(concurrency)))
        await c.close()

    asyncio.run(run())
    assert stats["failed"] == 0, stats.get("errors", [])[:3]
    assert stats["ok"] > concurrency
    # Requests holding the retired key get 422 and recover through one refresh (the relay drops its cached keys on
    # the 422); concurrent requests that hit the 422 together share that single fetch and verification.
    assert stats["refreshes"] == 1, stats
    for p in (gw, relay):
        p.stop()
        log = p.log()
        assert CANARY not in log
        assert "127.0.0.1:" not in log.replace(f"127.0.0.1:{p.port}", "").replace(f"127.0.0.1:{gp}", "")
