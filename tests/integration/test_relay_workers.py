"""``veil relay --workers 2`` as a real process tree on loopback in front of a real gateway (issue 21): both workers
serve, /metrics sums them, a per-address limit holds for the relay as a whole, a killed worker is restarted,
SIGTERM leaves no process, a token spent at one worker is refused at the other, and a worker that cannot start
stops the relay. Nothing here depends on how fast the machine is: each wait has a generous bound."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from proxy import OhttpClient
from proxy.client.tokens import TokenWallet
from proxy.issuer import IssuerConfig
from proxy.issuer import create_app as issuer_app
from proxy.verify import make_verifier

from .conftest import REPO, Proc, free_port

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"


def gateway(veil_process: Callable[..., Proc]) -> Proc:
    gp = free_port()
    return veil_process(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}"], gp)


def relay(veil_process: Callable[..., Proc], gw: Proc, *extra: str, **kw: object) -> Proc:
    rp = free_port()
    return veil_process(["relay", "--workers", "2", "--listen", f"127.0.0.1:{rp}", "--gateway",
                         f"gw={gw.base}{WELL_KNOWN}", *extra], rp, **kw)


def workers(r: Proc) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{r.pid}/task/{r.pid}/children").read_text().split()]
    except OSError:
        return []


async def wait_workers(r: Proc, n: int = 2, bound: float = 60.0) -> list[int]:
    """The workers' pids, once every one listens (the supervisor says so once; /healthz is any one of them)."""
    deadline = time.monotonic() + bound
    while len(pids := workers(r)) != n or f"{n} workers listening" not in r.log():
        assert r.popen.poll() is None, r.log_tail()
        assert time.monotonic() < deadline, f"the relay never had {n} workers: {pids}\n{r.log_tail()}"
        await asyncio.sleep(0.1)
    return pids


async def metrics(r: Proc, session: aiohttp.ClientSession) -> dict[str, float]:
    async with session.get(r.base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def per_worker(m: dict[str, float]) -> list[float]:
    return [m.get(f'veil_relay_worker_connections_total{{worker="{i}"}}', 0.0) for i in range(2)]


async def post(r: Proc, body: bytes = b"\x00" * 50, headers: dict[str, str] | None = None) -> int:
    """One POST on a connection of its own (so the kernel picks a worker for it afresh)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s, s.post(
            r.base + "/gw", data=body, headers={"Content-Type": "message/ohttp-req", **(headers or {})}) as resp:
        await resp.read()
        return resp.status


def client(r: Proc) -> OhttpClient:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    return OhttpClient(r.base + "/gw", verifier=make_verifier(allow_simulated=True), session=session)


async def close(c: OhttpClient) -> None:
    session = c._session
    await c.close()
    if session is not None:
        await session.close()


async def test_both_workers_serve_and_metrics_are_summed(veil_process: Callable[..., Proc]) -> None:
    r = relay(veil_process, gateway(veil_process), "--rate-per-minute", "100000")
    pids = await wait_workers(r)
    assert r.pid not in pids and len(set(pids)) == 2
    c = client(r)
    async with aiohttp.ClientSession() as scrape:  # one kept-alive connection for the scrapes
        try:
            await c.refresh_keys()
            before = per_worker(await metrics(r, scrape))
            ok = 0
            deadline = time.monotonic() + 60
            while ok < 10 or min(a - b for a, b in zip(per_worker(await metrics(r, scrape)), before)) < 2:
                assert time.monotonic() < deadline, "requests never reached both workers"
                resp = await c.request("GET", "/v1/models")
                assert resp.status == 200
                ok += 1
            # Requests on both workers (each on a connection of its own), and one sum over both on /metrics. Each
            # worker writes its request counts to the shared files at most FLUSH_SECONDS late (the worker serving
            # the scrape: first): the sums reach the exact numbers, and never pass them.
            deadline = time.monotonic() + 30
            while True:
                m = await metrics(r, scrape)
                done = (m.get('veil_relay_requests_total{outcome="ok"}', 0), m.get("veil_relay_upstream_seconds_count", 0))
                assert all(n <= ok for n in done)
                if done == (ok, ok):
                    break
                assert time.monotonic() < deadline, f"the sums stayed at {done} of {ok}"
                await asyncio.sleep(0.2)
            assert all(n > 0 for n in per_worker(m))
            assert m["veil_relay_in_flight"] == 0
        finally:
            await close(c)


async def test_rate_limit_holds_across_workers(veil_process: Callable[..., Proc]) -> None:
    r = relay(veil_process, gateway(veil_process), "--rate-per-minute", "5")
    await wait_workers(r)
    if time.monotonic() % 60 > 40:  # the rate window is a fixed minute: do not straddle its end
        await asyncio.sleep(61 - time.monotonic() % 60)
    statuses = [await post(r) for _ in range(12)]
    async with aiohttp.ClientSession() as s:
        spread = per_worker(await metrics(r, s))
    assert all(n > 0 for n in spread), spread  # 12 connections, both workers took some (all on one: p = 1/2048)
    # Five for 127.0.0.1 in this minute, however the connections were spread: not five per worker.
    assert statuses[:5] == [422] * 5 and statuses[5:] == [429] * 7, statuses


async def test_killed_worker_is_restarted_and_sigterm_leaves_no_process(veil_process: Callable[..., Proc]) -> None:
    r = relay(veil_process, gateway(veil_process), "--rate-per-minute", "100000", stop_signal=signal.SIGTERM)
    first = await wait_workers(r)
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (pids := workers(r)) == first or len(pids) != 2:
        assert r.popen.poll() is None, r.log_tail()
        assert time.monotonic() < deadline, f"the killed worker was not replaced:\n{r.log_tail()}"
        await asyncio.sleep(0.1)
    assert first[0] not in pids and first[1] in pids
    env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0") if item)
    shared_dir = Path(env[b"PROMETHEUS_MULTIPROC_DIR"].decode()).parent  # the supervisor's metrics and limits
    assert shared_dir.is_dir()
    assert "relay worker 0 exited with status -9" in r.log()
    # Connections keep being served by the one left, then by both.
    assert all(s == 422 for s in [await post(r) for _ in range(10)])
    r.stop()
    assert r.popen.returncode == 0, r.log_tail()
    deadline = time.monotonic() + 30
    while alive := [p for p in pids if Path(f"/proc/{p}").exists()
                    and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[-1][:3]]:
        assert time.monotonic() < deadline, f"workers left behind: {alive}"
        await asyncio.sleep(0.1)
    assert not shared_dir.exists()


async def test_token_spent_at_one_worker_is_refused_at_the_other(veil_process: Callable[..., Proc], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_ISSUER_API_KEYS", "sk-workers")
    issuer = TestServer(issuer_app(IssuerConfig(state_path=str(tmp_path / "issuer.sqlite"), tokens_per_key=0)))
    await issuer.start_server()
    issuer_url = str(issuer.make_url("")).rstrip("/")
    r = relay(veil_process, gateway(veil_process), "--rate-per-minute", "100000", "--require-token", issuer_url,
              "--spent-store", str(tmp_path / "spent.sqlite"))
    wallet = TokenWallet(issuer_url, "sk-workers", batch=1)
    try:
        await wait_workers(r)
        held = await wallet.take()
        auth = {"Authorization": held.header}
        assert await post(r, headers=auth) == 422  # spent; the gateway refused the junk bytes
        async with aiohttp.ClientSession() as s:
            before = per_worker(await metrics(r, s))
            tries = 0
            deadline = time.monotonic() + 60
            # Again on fresh connections until both workers have refused it at least once.
            while tries < 4 or min(a - b for a, b in zip(per_worker(await metrics(r, s)), before)) < 1:
                assert time.monotonic() < deadline, "the replays never reached both workers"
                assert await post(r, headers=auth) == 403
                tries += 1
            m = await metrics(r, s)
        assert m["veil_relay_token_double_spends_total"] == tries
        assert m["veil_relay_tokens_redeemed_total"] == 1
    finally:
        await wallet.close()
        await issuer.close()


def test_a_worker_that_cannot_start_stops_the_relay(tmp_path: Path) -> None:
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "veil_cli", "relay", "--workers", "2", "--listen", f"127.0.0.1:{port}", "--gateway",
         "gw=http://127.0.0.1:9/.well-known/ohttp-gateway", "--require-token", "http://127.0.0.1:9",
         "--spent-store", str(tmp_path / "no" / "such" / "dir" / "spent.sqlite")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "--spent-store" in out.stderr and "before it was ready" in out.stderr, out.stderr


_ORPHAN = """
import os, sys, time
from veil_cli import die_with_parent
out, orphan = int(sys.argv[1]), sys.argv[2] == "orphan"
parent = os.getpid()
child = os.fork()
if child == 0:
    if orphan:  # the supervisor dies between the fork and prctl: wait until this process has been handed on
        deadline = time.monotonic() + 60
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.01)
    die_with_parent(parent)
    os.write(out, b"serving")  # what a worker would go on to do
    os._exit(0)
if not orphan:
    os.waitpid(child, 0)
os._exit(0)
"""


@pytest.mark.parametrize("orphan", [False, True])
def test_a_child_whose_parent_died_before_prctl_leaves_at_once(orphan: bool) -> None:
    """PR_SET_PDEATHSIG only covers a parent that dies after it is set: a worker whose supervisor died between the
    fork and the prctl would serve on, unsupervised, on the SO_REUSEPORT port. die_with_parent(expected parent)
    checks getppid() after the prctl and exits; a child whose parent is still there goes on."""
    r, w = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-c", _ORPHAN, str(w), "orphan" if orphan else "supervised"],
                              cwd=REPO, pass_fds=(w,), timeout=60)
        assert proc.returncode == 0
        os.close(w)
        w = -1
        out = b""
        while piece := os.read(r, 64):  # until the child's end closes too: it has exited
            out += piece
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert out == (b"" if orphan else b"serving")


async def test_a_killed_supervisors_shared_dir_is_removed_by_the_next_one(veil_process: Callable[..., Proc]) -> None:
    """A supervisor killed with SIGKILL cannot remove its /dev/shm/veil-relay-* directory (0700; the configuration
    is in it): the next supervisor to start removes it, and leaves alone the directory of a supervisor that still
    runs (here one this test holds) and its own."""
    from proxy.relay.workers import make_shared_dir, shared_root

    gw = gateway(veil_process)
    first = relay(veil_process, gw, "--rate-per-minute", "100000")
    pids = await wait_workers(first)
    env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0") if item)
    stale = Path(env[b"PROMETHEUS_MULTIPROC_DIR"].decode()).parent
    assert stale.parent == Path(shared_root()) and (stale / "worker.json").is_file()
    live, lock_fd = make_shared_dir(shared_root())  # a running supervisor's (this process holds its lock)
    try:
        os.kill(first.pid, signal.SIGKILL)
        first.popen.wait(30)
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{p}").exists() and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[-1][:3]
                  for p in pids):  # the workers get SIGTERM from PR_SET_PDEATHSIG
            assert time.monotonic() < deadline, "the workers outlived their supervisor"
            await asyncio.sleep(0.1)
        assert stale.is_dir()  # left behind
        second = relay(veil_process, gw, "--rate-per-minute", "100000")
        pids = await wait_workers(second)
        env = dict(item.split(b"=", 1) for item in Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
                   if item)
        own = Path(env[b"PROMETHEUS_MULTIPROC_DIR"].decode()).parent
        assert not stale.exists()
        assert live.is_dir() and own.is_dir() and own.name.startswith(f"veil-relay-{second.pid}-")
    finally:
        shutil.rmtree(live, ignore_errors=True)
        os.close(lock_fd)
