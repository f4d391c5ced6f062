"""Replicated gateways behind one relay name (``--gateway gw=URL1,URL2``), as real processes, through the SDK.

Two echo gateways share one OHTTP key (the same ``--key-file`` seed), so either can open any request. The relay
spreads requests over them (least outstanding), checks their ``/healthz``, takes a dead or unhealthy replica out of
rotation, and sends a request that could not connect to the other replica (nothing had been sent yet).
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from proxy.relay.pool import ReplicaPool, split_urls

from .conftest import Proc, free_port, start_veil

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()
        p.log_path.unlink(missing_ok=True)


@pytest.fixture
def shared_key(tmp_path: Path) -> Path:
    path = tmp_path / "ohttp-key.json"
    path.write_text(json.dumps({"key_id": 7, "seed": os.urandom(32).hex()}))
    return path


def gateway(procs: list[Proc], key_file: Path | None, *extra: str) -> Proc:
    port = free_port()
    args = ["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", *extra]
    if key_file is not None:
        args += ["--key-file", str(key_file)]
    health = "/.well-known/ohttp-gateway" if "upstream" in extra else "/healthz"  # an upstream gateway stays 503
    p = start_veil(args, port, health=health)
    procs.append(p)
    return p


def relay(procs: list[Proc], gateways: list[Proc], health_interval: float) -> Proc:
    port = free_port()
    urls = ",".join(g.base + WELL_KNOWN for g in gateways)
    p = start_veil(["relay", "--listen", f"127.0.0.1:{port}", "--gateway", f"gw={urls}",
                    "--health-interval", str(health_interval)], port)
    procs.append(p)
    return p


def proxy(procs: list[Proc], relay_proc: Proc) -> Proc:
    port = free_port()
    p = start_veil(["proxy", "--listen", f"127.0.0.1:{port}", "--relay", relay_proc.base + "/gw",
                    "--insecure-allow-simulated"], port)
    procs.append(p)
    return p


def metric(proc: Proc, name: str, labels: str = "") -> float:
    """Sum of the samples of ``name`` (whose labels contain ``labels``) in ``proc``'s /metrics."""
    with urllib.request.urlopen(proc.base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M):
        if labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def served(g: Proc) -> int:
    return int(metric(g, "veil_gateway_requests_total"))


def chat(client: openai.OpenAI, i: int, stream: bool = False) -> str:
    text = f"request number {i}"
    if stream:
        chunks = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}],
                                                stream=True)
        got = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    else:
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}])
        got = r.choices[0].message.content or ""
    assert got == text
    return got


def sdk(p: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.base + "/v1", api_key="unused", max_retries=0)


def wait_for(cond: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_least_outstanding_selection() -> None:
    pool = ReplicaPool("gw", split_urls(f"http://a{WELL_KNOWN}, http://b{WELL_KNOWN},http://c{WELL_KNOWN}"))
    a, b, c = pool.replicas
    assert [pool.pick() for _ in range(6)] == [a, b, c, a, b, c]  # all idle: in turn
    a.outstanding, b.outstanding, c.outstanding = 2, 0, 1
    assert pool.pick() is b
    b.outstanding = 5
    assert pool.pick() is c
    c.healthy = False
    assert pool.pick() is a and pool.pick({a}) is b  # out of rotation: c is never picked while others are in
    a.healthy = b.healthy = False
    assert pool.pick({a, b}) is c  # all out: try them anyway rather than refuse on a stale guess
    assert pool.pick({a, b, c}) is None
    assert a.healthz_url == "http://a/healthz" and pool.in_order(c)[0] is c


def test_requests_spread_over_both_replicas(procs: list[Proc], shared_key: Path) -> None:
    a, b = gateway(procs, shared_key), gateway(procs, shared_key)
    r = relay(procs, [a, b], health_interval=0.3)
    client = sdk(proxy(procs, r))
    before = served(a) + served(b)
    for i in range(20):
        chat(client, i, stream=i % 2 == 1)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: chat(client, i, stream=i % 3 == 0), range(24)))
    na, nb = served(a), served(b)
    assert na + nb - before == 44
    assert na >= 10 and nb >= 10, (na, nb)  # least outstanding, ties taken in turn: both carry a fair share
    assert metric(r, "veil_relay_replica_up", 'replica="0"') == 1 and metric(r, "veil_relay_replica_up", 'replica="1"') == 1


def test_killed_replica_requests_go_to_the_other_one(procs: list[Proc], shared_key: Path) -> None:
    a, b = gateway(procs, shared_key), gateway(procs, shared_key)
    # Health checks far apart: the relay learns that b died only from a request that cannot connect to it.
    r = relay(procs, [a, b], health_interval=3600)
    client = sdk(proxy(procs, r))
    for i in range(6):
        chat(client, i)
    assert served(b) > 0
    b.popen.kill()
    b.popen.wait(10)
    before = served(a)
    for i in range(10):
        chat(client, i, stream=i % 2 == 0)  # every one succeeds: refused connections are retried on a
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: chat(client, i, stream=i % 2 == 0), range(16)))
    assert served(a) - before == 26
    assert metric(r, "veil_relay_retries_total") >= 1
    assert metric(r, "veil_relay_replica_up", 'replica="1"') == 0
    assert "replica 1 is out of rotation" in r.log()


def test_killed_replica_is_noticed_by_health_checks_and_comes_back(procs: list[Proc], shared_key: Path) -> None:
    a, b = gateway(procs, shared_key), gateway(procs, shared_key)
    r = relay(procs, [a, b], health_interval=0.2)
    client = sdk(proxy(procs, r))
    chat(client, 0)
    port = b.port
    b.popen.kill()
    b.popen.wait(10)
    wait_for(lambda: metric(r, "veil_relay_replica_up", 'replica="1"') == 0)
    retries = metric(r, "veil_relay_retries_total")
    for i in range(8):
        chat(client, i)
    assert metric(r, "veil_relay_retries_total") == retries  # out of rotation: not even tried
    # The replica comes back on the same address: health checks put it back in rotation.
    back = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", "--key-file", str(shared_key)],
                      port)
    procs.append(back)
    wait_for(lambda: metric(r, "veil_relay_replica_up", 'replica="1"') == 1)
    for i in range(10):
        chat(client, i)
    assert served(back) >= 3


def test_unhealthy_replica_gets_no_requests(procs: list[Proc], shared_key: Path) -> None:
    a = gateway(procs, shared_key)
    # A gateway whose engine is down: it publishes keys, but its /healthz says 503.
    sick = gateway(procs, shared_key, "--engine", "upstream", "--upstream-url", f"http://127.0.0.1:{free_port()}")
    r = relay(procs, [sick, a], health_interval=0.2)
    wait_for(lambda: metric(r, "veil_relay_replica_up", 'replica="0"') == 0)
    client = sdk(proxy(procs, r))
    for i in range(10):
        chat(client, i)
    assert served(sick) == 0 and served(a) == 10
    assert "replica 0 is out of rotation: /healthz answered 503" in r.log()


def test_replicas_with_different_keys_are_reported(procs: list[Proc]) -> None:
    a, b = gateway(procs, None), gateway(procs, None)  # each generates its own key: a misconfigured replica set
    r = relay(procs, [a, b], health_interval=0.3)
    with urllib.request.urlopen(r.base + "/gw", timeout=5) as resp:
        keys = resp.read()
    with urllib.request.urlopen(a.base + WELL_KNOWN, timeout=5) as resp:
        assert keys == resp.read()  # the first healthy replica's keys
    with urllib.request.urlopen(r.base + "/gw/attestation", timeout=5) as resp:
        evidence = resp.read()
    with urllib.request.urlopen(a.base + "/.well-known/veil-attestation", timeout=5) as resp:
        assert evidence == resp.read()  # evidence from the replica whose keys are served
    wait_for(lambda: "publishes a different key configuration" in r.log())


class DroppingReplica:
    """A replica that is healthy but drops every POST after reading it: the request was sent, so it must not be
    retried elsewhere (the gateway may have acted on it)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.posts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WELL_KNOWN}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    buf += piece
                head, _, buf = buf.partition(b"\r\n\r\n")
                if head.startswith(b"GET /healthz"):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    buf += piece
                self.posts += 1
                return  # close without answering

    def close(self) -> None:
        self.sock.close()


def test_a_request_that_was_sent_is_never_retried(procs: list[Proc], shared_key: Path) -> None:
    a = gateway(procs, shared_key)
    drop = DroppingReplica()
    try:
        port = free_port()
        r = start_veil(["relay", "--listen", f"127.0.0.1:{port}", "--gateway",
                        f"gw={drop.url},{a.base + WELL_KNOWN}", "--health-interval", "3600"], port)
        procs.append(r)
        statuses = []
        for _ in range(10):
            req = urllib.request.Request(r.base + "/gw", data=b"\x07" * 64, method="POST",
                                         headers={"Content-Type": "message/ohttp-req"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    statuses.append(resp.status)
            except urllib.error.HTTPError as err:
                statuses.append(err.code)
        # Sequential requests alternate: the dropped ones fail (502), none of them reaches the other replica.
        assert statuses.count(502) == drop.posts >= 3
        assert statuses.count(422) == served(a) == 10 - drop.posts  # an unknown key id: a's own answer
        assert metric(r, "veil_relay_retries_total") == 0
    finally:
        drop.close()
