"""Gateways on AF_VSOCK (AWS Nitro Enclaves): the gateway's vsock listener, the relay's loopback-TCP-to-vsock bridge.

Most machines (this one included) have no ``vsock_loopback`` transport, so nothing here can connect to a vsock
listener on the same machine. The bridge is therefore driven with an AF_UNIX upstream (its connect function is
injected), a whole relay is run in process with its vsock connector pointed at an AF_UNIX gateway, a real ``veil relay``
is checked against a vsock address with nothing behind it, and only the end-to-end test over real vsock needs (and
probes for) loopback.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import cache
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from aiohttp import web

from enclave.attestation import SimulatedProvider
from enclave.engines import EchoEngine
from enclave.gateway import create_app as create_gateway
from enclave.gateway.vsock import (
    VMADDR_CID_ANY,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
    is_vsock,
    parse_listen,
    vsock_event_loop,
    vsock_socket,
)
from ohttp import GatewayKey, KeyRing
from proxy.client import VeilAsyncTransport, VeilTransport
from proxy.relay import RelayConfig
from proxy.relay import app as relay_app
from proxy.relay import create_app as create_relay
from proxy.relay.state import STATE
from proxy.relay.vsock import Connect, VsockBridge, connect_socket, parse_vsock_url

from .conftest import REPO, Proc, free_port, sdk_chat_and_stream

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
HAS_VSOCK = hasattr(socket, "AF_VSOCK")


@cache
def vsock_loopback() -> bool:
    """Can this machine connect to its own vsock listener (CID 1)? A bounded attempt in a background thread: without
    vsock_loopback the virtio transport sends the connect to the host, where it may simply time out."""
    if not HAS_VSOCK:
        return False
    try:
        listener = vsock_socket(VMADDR_CID_ANY, VMADDR_PORT_ANY)
    except OSError:
        return False
    result: list[bool] = []

    def attempt() -> None:
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect((VMADDR_CID_LOCAL, listener.address[1]))
                result.append(True)
            except OSError:
                result.append(False)

    with listener:
        t = threading.Thread(target=attempt, daemon=True)
        t.start()
        t.join(2.0)
    return result == [True]


@pytest.fixture
def needs_vsock_loopback() -> None:
    if not vsock_loopback():
        pytest.skip("vsock loopback is not available in this kernel (no vsock_loopback transport: a connect to CID 1 "
                    "does not reach a local listener)")


def unix_connector(path: Path) -> Connect:
    async def connect() -> socket.socket:
        return await connect_socket(socket.AF_UNIX, str(path))

    return connect


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[tuple[Path, list[asyncio.StreamWriter]]]:
    """Where a test's AF_UNIX upstream listens, and the upstream's connections (aborted at teardown)."""
    path = tmp_path / "up.sock"
    writers: list[asyncio.StreamWriter] = []
    yield path, writers
    for w in writers:
        w.transport.abort()


async def serve_unix(path: Path, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                     ) -> asyncio.Server:
    return await asyncio.start_unix_server(handler, path=str(path))


@pytest.fixture
async def bridges() -> AsyncIterator[list[VsockBridge]]:
    made: list[VsockBridge] = []
    yield made
    for b in made:
        await b.close()


async def start_bridge(made: list[VsockBridge], connect: Connect, timeout: float = 2.0) -> VsockBridge:
    bridge = VsockBridge(connect, label="test (vsock://7:8081)", connect_timeout=timeout)
    made.append(bridge)
    await bridge.start()
    return bridge


async def read_or_reset(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the connection ends; a reset counts as the end."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


# --- parsing ------------------------------------------------------------------------------------------------------


def test_parse_listen() -> None:
    assert parse_listen("vsock:8081") == (VMADDR_CID_ANY, 8081)
    assert parse_listen("vsock:16:8081") == (16, 8081)
    assert is_vsock("vsock:8081") and not is_vsock("127.0.0.1:8081")
    for bad in ("vsock:", "vsock:x", "vsock:1:2:3", "vsock:0", "vsock:-1", "vsock:4294967295", "vsock:1:", "8081",
                "vsock:4294967296:1"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_parse_vsock_url() -> None:
    t = parse_vsock_url("vsock://16:8081/.well-known/ohttp-gateway")
    assert (t.cid, t.port, t.path) == (16, 8081, WELL_KNOWN)
    assert str(t) == "vsock://16:8081/.well-known/ohttp-gateway"
    assert parse_vsock_url("vsock://3:5").path == ""
    for bad in ("vsock://16/x", "vsock://:8081/x", "vsock://a:1/x", "vsock://1:0/x", "vsock://1:2/x?q=1",
                "vsock://4294967295:1/x", "http://1:2/x"):
        with pytest.raises(ValueError):
            parse_vsock_url(bad)
    with pytest.raises(ValueError, match="CID:PORT"):
        RelayConfig(gateways={"gw": "vsock://nope/.well-known/ohttp-gateway"})
    RelayConfig(gateways={"gw": "vsock://16:8081/.well-known/ohttp-gateway,http://127.0.0.1:1" + WELL_KNOWN})


@pytest.mark.skipif(not HAS_VSOCK, reason="no AF_VSOCK in this Python")
async def test_vsock_listener_is_served_by_aiohttp() -> None:
    """Binding and listening need no loopback: aiohttp's SockSite (what run_app(sock=) uses) accepts the socket."""
    try:
        sock = vsock_socket(VMADDR_CID_ANY, VMADDR_PORT_ANY)
    except OSError as exc:
        pytest.skip(f"no vsock transport here: {exc}")
    with sock:
        assert sock.family == socket.AF_VSOCK and not sock.getblocking()
        cid, port = sock.address
        assert cid == VMADDR_CID_ANY and 0 < port < VMADDR_PORT_ANY
        runner = web.AppRunner(web.Application())
        await runner.setup()
        try:
            site = web.SockSite(runner, sock)
            assert site.name.startswith("http://vsock-cid-any")
            await site.start()
        finally:
            await runner.cleanup()


@pytest.mark.skipif(not HAS_VSOCK, reason="no AF_VSOCK in this Python")
def test_uvloop_cannot_carry_vsock_connections_so_the_gateway_uses_asyncio() -> None:
    """Why ``vsock_event_loop()``: uvloop sets TCP_NODELAY on every non-AF_UNIX stream socket it adopts (so on each
    accepted connection too), and vsock answers ENOPROTOOPT. If a uvloop release stops doing that, this fails."""
    uvloop = pytest.importorskip("uvloop")

    async def adopt() -> None:
        with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as s:
            await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=s)

    with pytest.raises(OSError) as info:
        uvloop.run(adopt())
    assert info.value.errno == errno.ENOPROTOOPT
    loop = vsock_event_loop()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()


# --- the bridge, with an AF_UNIX upstream -------------------------------------------------------------------------


async def test_bridge_copies_both_ways_and_passes_half_closes(upstream: tuple[Path, list[asyncio.StreamWriter]],
                                                              bridges: list[VsockBridge]) -> None:
    path, writers = upstream

    async def reverse_after_eof(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        data = await r.read()  # only ends if the client's half-close went through
        w.write(b"%d:" % len(data) + data[::-1])
        await w.drain()
        w.write_eof()

    server = await serve_unix(path, reverse_after_eof)
    async with server:
        bridge = await start_bridge(bridges, unix_connector(path))
        payload = os.urandom(3 * 1024 * 1024 + 17)
        async with asyncio.timeout(20):
            r, w = await asyncio.open_connection("127.0.0.1", bridge.port)
            w.write(payload)
            await w.drain()
            w.write_eof()
            answer = await r.read()  # only ends if the upstream's half-close went through
            w.close()
        assert answer == b"%d:" % len(payload) + payload[::-1]


async def test_bridge_keeps_the_other_direction_open_after_upstream_eof(
    upstream: tuple[Path, list[asyncio.StreamWriter]], bridges: list[VsockBridge]
) -> None:
    path, writers = upstream
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def greet_then_listen(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        w.write(b"hello")
        w.write_eof()
        got.set_result(await r.read())

    server = await serve_unix(path, greet_then_listen)
    async with server:
        bridge = await start_bridge(bridges, unix_connector(path))
        async with asyncio.timeout(10):
            r, w = await asyncio.open_connection("127.0.0.1", bridge.port)
            assert await r.read() == b"hello"
            w.write(b"still here")
            w.write_eof()
            assert await got == b"still here"
            w.close()


async def test_refused_upstream_closes_the_client_at_once(tmp_path: Path, bridges: list[VsockBridge],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "veil.relay")
    bridge = await start_bridge(bridges, unix_connector(tmp_path / "nobody.sock"), timeout=30)
    for _ in range(2):
        t0 = time.monotonic()
        async with asyncio.timeout(5):
            r, w = await asyncio.open_connection("127.0.0.1", bridge.port)
            w.write(b"POST / HTTP/1.1\r\n\r\n")
            assert await read_or_reset(r) == b""
            w.close()
        assert time.monotonic() - t0 < 2
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not one per connection"
    assert "cannot connect to gateway test (vsock://7:8081)" in warnings[0].getMessage()


async def test_upstream_connect_timeout_closes_the_client(bridges: list[VsockBridge]) -> None:
    async def never() -> socket.socket:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    bridge = await start_bridge(bridges, never, timeout=0.2)
    t0 = time.monotonic()
    async with asyncio.timeout(5):
        r, w = await asyncio.open_connection("127.0.0.1", bridge.port)
        assert await read_or_reset(r) == b""
        w.close()
    assert time.monotonic() - t0 < 2


async def test_upstream_reset_resets_the_client(upstream: tuple[Path, list[asyncio.StreamWriter]],
                                                bridges: list[VsockBridge]) -> None:
    path, _ = upstream

    async def partial_then_reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"partial")
        await w.drain()
        await asyncio.sleep(0.1)
        w.transport.abort()

    server = await serve_unix(path, partial_then_reset)
    async with server:
        bridge = await start_bridge(bridges, unix_connector(path))
        async with asyncio.timeout(5):
            r, w = await asyncio.open_connection("127.0.0.1", bridge.port)
            assert await r.readexactly(7) == b"partial"
            assert await read_or_reset(r) == b""
            w.close()
            while bridge._tasks:  # the bridged connection is torn down, not left half open
                await asyncio.sleep(0.01)


async def test_close_cuts_open_connections(upstream: tuple[Path, list[asyncio.StreamWriter]],
                                           bridges: list[VsockBridge]) -> None:
    path, writers = upstream
    upstream_ended = asyncio.Event()

    async def echo_lines(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)
        try:
            while line := await r.readline():
                w.write(line)
                await w.drain()
        except ConnectionResetError:
            pass
        upstream_ended.set()

    server = await serve_unix(path, echo_lines)
    async with server:
        bridge = await start_bridge(bridges, unix_connector(path))
        async with asyncio.timeout(5):
            r, w = await asyncio.open_connection("127.0.0.1", bridge.port)
            w.write(b"ping\n")
            assert await r.readline() == b"ping\n"
            await bridge.close()
            assert await read_or_reset(r) == b""
            await upstream_ended.wait()
            w.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", bridge.port)


async def test_connect_socket_waits_for_an_in_progress_connect_and_reports_refusal() -> None:
    # TCP on loopback answers a non-blocking connect with EINPROGRESS, as vsock does: the path the vsock connect takes.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        sock = await connect_socket(socket.AF_INET, ("127.0.0.1", port))
        with sock:
            assert sock.getpeername() == ("127.0.0.1", port) and not sock.getblocking()
    with pytest.raises(ConnectionRefusedError):
        await connect_socket(socket.AF_INET, ("127.0.0.1", port))


def test_bridge_on_uvloop(tmp_path: Path) -> None:
    """The relay runs on uvloop by default; the bridge must not rely on what uvloop cannot do with vsock sockets."""
    uvloop = pytest.importorskip("uvloop")
    path = tmp_path / "up.sock"

    async def scenario() -> bytes:
        async def upper(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write((await r.read()).upper())
            w.write_eof()
            await w.drain()
            w.close()

        async with await serve_unix(path, upper):
            bridge = VsockBridge(unix_connector(path), label="uvloop", connect_timeout=2)
            await bridge.start()
            try:
                async with asyncio.timeout(10):
                    r, w = await asyncio.open_connection("127.0.0.1", bridge.port)
                    w.write(b"over uvloop")
                    w.write_eof()
                    answer = await r.read()
                    w.close()
            finally:
                await bridge.close()
        return answer

    assert uvloop.run(scenario()) == b"OVER UVLOOP"


# --- a whole relay, in process, whose vsock gateway is an AF_UNIX one ----------------------------------------------


async def test_relay_serves_a_vsock_gateway_through_the_bridge(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gw.sock"
    gateway = web.AppRunner(create_gateway(engine=EchoEngine(), keyring=KeyRing([GatewayKey.generate(0)]),
                                           provider=SimulatedProvider()), access_log=None)
    await gateway.setup()
    await web.UnixSite(gateway, str(path)).start()
    dialled: list[tuple[int, int]] = []

    def connector(cid: int, port: int) -> Connect:
        dialled.append((cid, port))
        return unix_connector(path)

    monkeypatch.setattr(relay_app, "vsock_connector", connector)
    url = f"vsock://16:8081{WELL_KNOWN}"
    app = create_relay(RelayConfig(gateways={"gw": url}))
    relay = web.AppRunner(app, access_log=None)
    await relay.setup()
    port = free_port()
    await web.TCPSite(relay, "127.0.0.1", port).start()
    replica = app[STATE].pools["gw"].replicas[0]
    try:
        assert dialled == [(16, 8081)]
        assert replica.url.startswith("http://127.0.0.1:") and replica.url.endswith(WELL_KNOWN)
        transport = VeilAsyncTransport(f"http://127.0.0.1:{port}/gw", allow_simulated=True)
        await sdk_chat_and_stream(transport, "via vsock", "a b c")
    finally:
        await relay.cleanup()
        await gateway.cleanup()
    assert app[STATE].bridges == [] and replica.url == url  # bridges closed, the configured URL back


# --- a real veil relay process ------------------------------------------------------------------------------------


def test_relay_process_answers_502_quickly_when_nothing_listens_on_the_vsock_port(
    veil_process: Callable[..., Proc],
) -> None:
    # CID 1 (local) on a random port: with vsock loopback the connect is refused, without it the connect times out
    # (--connect-timeout 1), and without vsock at all the socket cannot be made; 502 in every case.
    vport = 40000 + int.from_bytes(os.urandom(2), "big") % 20000
    port = free_port()
    proc = veil_process(["relay", "--listen", f"127.0.0.1:{port}", "--connect-timeout", "1",
                         "--gateway", f"gw=vsock://{VMADDR_CID_LOCAL}:{vport}{WELL_KNOWN}"], port)
    for method, data in (("POST", b"\x00" * 64), ("GET", None)):
        req = urllib.request.Request(proc.base + "/gw", data=data, method=method,
                                     headers={"Content-Type": "message/ohttp-req"} if data else {})
        t0 = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert time.monotonic() - t0 < 5
        assert info.value.code == 502
        body = json.loads(info.value.read())
        assert body["title"] == "bad gateway" and "unreachable" in body["detail"]
    assert f"cannot connect to gateway gw (vsock://{VMADDR_CID_LOCAL}:{vport}{WELL_KNOWN})" in proc.log()


# --- real vsock end to end (needs vsock_loopback) -----------------------------------------------------------------

GATEWAY_ON_VSOCK = """
from aiohttp import web
from enclave.attestation import SimulatedProvider
from enclave.engines import EchoEngine
from enclave.gateway import create_app
from enclave.gateway.vsock import VMADDR_CID_ANY, VMADDR_PORT_ANY, vsock_event_loop, vsock_socket
from ohttp import GatewayKey, KeyRing
from veil_cli import install_event_loop

install_event_loop()  # as `veil gateway` runs: uvloop's policy, overridden for vsock by vsock_event_loop()
sock = vsock_socket(VMADDR_CID_ANY, VMADDR_PORT_ANY)
app = create_app(engine=EchoEngine(), keyring=KeyRing([GatewayKey.generate(0)]), provider=SimulatedProvider())
print(sock.address[1], flush=True)
web.run_app(app, sock=sock, loop=vsock_event_loop(), access_log=None, print=None)
"""


@pytest.fixture
def vsock_gateway(needs_vsock_loopback: None) -> Iterator[int]:
    """A gateway served as ``veil gateway --listen vsock:PORT`` serves it (``web.run_app(sock=vsock_socket(...),
    loop=vsock_event_loop())``), in its own process; yields its vsock port."""
    popen = subprocess.Popen([sys.executable, "-c", GATEWAY_ON_VSOCK], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert popen.stdout is not None
        line = popen.stdout.readline().strip()
        assert line.isdigit(), f"gateway on vsock did not start: {line!r}"
        yield int(line)
    finally:
        popen.terminate()
        popen.wait(10)


def test_relay_to_a_gateway_on_real_vsock(vsock_gateway: int, veil_process: Callable[..., Proc]) -> None:
    port = free_port()
    relay = veil_process(["relay", "--listen", f"127.0.0.1:{port}",
                          "--gateway", f"gw=vsock://{VMADDR_CID_LOCAL}:{vsock_gateway}{WELL_KNOWN}"], port)
    deadline = time.monotonic() + 20
    while True:  # the gateway's keys through the relay, once the gateway answers
        try:
            with urllib.request.urlopen(relay.base + "/gw", timeout=5) as r:
                assert r.headers["Content-Type"] == "application/ohttp-keys"
                break
        except urllib.error.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    transport = VeilTransport(relay.base + "/gw", allow_simulated=True)
    client = openai.OpenAI(base_url="http://veil.invalid/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(transport=transport))
    try:
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "real vsock"}])
        assert r.choices[0].message.content == "real vsock"
    finally:
        client.close()
        transport.close()
