#!/usr/bin/env python3
"""``veil relay`` against nginx as a plain reverse proxy: requests/s and added latency, same upstream, same run.

Set-up, all on loopback, started by this script (free ports, a temporary directory):

* the upstream: a fast fixed-answer HTTP server standing in for a gateway. ``--upstream nginx`` (default): a
  separate nginx (1 worker) that answers every POST with ``200 message/ohttp-res`` and a fixed body of the size of
  a real sealed chat response; ``--upstream aiohttp``: a small aiohttp server (this script, hidden mode) doing the
  same. The relay never looks inside the bytes, so their content does not matter, only their size;
* the relay: ``veil relay --gateway gw=<upstream>`` with ``--rate-per-minute`` raised (every request comes from
  127.0.0.1) and one ``--loop`` each (``VEIL_EVENT_LOOP``; default: both asyncio and uvloop when installed);
* nginx as the reverse proxy under comparison, with its own ``nginx.conf`` written by this script:
  ``worker_processes N`` for each ``veil relay --workers N`` measured (``--workers``, default 1 and 2: same CPU
  allowance), keep-alive to the upstream (the
  relay pools its connections too), ``proxy_buffering off`` and ``proxy_request_buffering off`` (the relay streams
  both ways), and only the content type forwarded (``proxy_pass_request_headers off``: the relay rebuilds every
  request from scratch), only ``/gw`` allowed, no access log (the relay keeps none);
* the load: ``wrk`` (Debian package ``wrk``, C, one thread; installed with apt-get when missing and possible),
  POST of a real-size ``message/ohttp-req`` body (the encapsulation of a short chat request), 64 connections;
  also 1 connection, for the latency added without queueing.

Every target is measured in the same rounds, interleaved (the order rotates), ``--duration`` seconds each; rates
are the median over rounds, latencies the median of the per-round percentiles. "Added latency" is a target's
latency minus the latency straight to the upstream at the same concurrency. CPU per request of the relay and of
the nginx worker comes from ``/proc/<pid>/stat``.

Target (the issue): relay requests/s >= 0.5x nginx's at 64 connections, for 1 and 2 workers each; and how each
scales from 1 to 2 workers (printed as the ratio of their requests/s).

``--floor`` adds what serving the relay's POST path off aiohttp could reach at best: a raw asyncio protocol that
parses requests with llhttp (``httptools``) and forwards them through ``hop.Pool`` as the relay does, and does none of
the relay's checks (allow list, media type, sizes, deadlines, rate and per-address limits, tokens, CORS, metrics,
the write watchdog), no streaming (one whole answer per request) and no ordering of pipelined requests (wrk does not
pipeline). It is not a relay: it is a reference point for a relay on a raw protocol (one design, a task per request;
a leaner one could do better).

Usage::

    scripts/bench/bench_relay.py [--quick] [--duration S] [--rounds N] [--loops asyncio,uvloop] [--workers 1,2]
                                 [--floor] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from _bench_env import prepare

ROOT = prepare(__file__, 'aiohttp')

from _common import RELAY_UNCAPPED, command_line, machine_info, tree_cpu_seconds, version_of

from tests.harness import Proc, free_port, http_ok, start_process, start_veil, stop_all

TARGET_RATIO: Final = 0.5


# ---------------------------------------------------------------------------------------------------------------
# Payloads


def payloads() -> tuple[bytes, bytes]:
    """A real encapsulated short chat request, and a sealed response of the size the echo engine's answer has."""
    import ohttp
    from ohttp import bhttp

    key = ohttp.GatewayKey.generate(1)
    body = b'{"model":"echo","messages":[{"role":"user","content":"What is the capital of France?"}]}'
    inner = bhttp.encode_request(bhttp.Request(
        method=b"POST", scheme=b"https", authority=b"", path=b"/v1/chat/completions",
        headers=((b"accept", b"application/json"), (b"content-type", b"application/json"),
                 (b"date", b"Thu, 26 Nov 2026 08:00:00 GMT")), content=body))
    req, _ = ohttp.ClientRequest(key.config).encapsulate(inner)
    _, ctx = ohttp.Gateway(ohttp.KeyRing([key])).decapsulate(req)
    answer = (b'{"id":"chatcmpl-echo00000001","created":1764144000,"model":"echo","system_fingerprint":"veil-echo",'
              b'"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"What is the '
              b'capital of France?"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":6,'
              b'"completion_tokens":6,"total_tokens":12}}')
    resp = ctx.encapsulate(bhttp.encode_response(bhttp.Response(
        status=200, headers=((b"content-type", b"application/json"),), content=answer)))
    return req, resp


def printable(n: int) -> str:
    """``n`` bytes of base64-alphabet filler (nginx's ``return`` takes text; the relay never looks inside)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return "".join(alphabet[b % 64] for b in os.urandom(n))


# ---------------------------------------------------------------------------------------------------------------
# Processes


def start(name: str, argv: list[str], port: int, tmp: Path, *, ready_path: str = "", **kw: Any) -> Proc:
    """``start_process`` with the log in ``tmp``; ``ready_path``: ready when a POST there answers 200 (nginx)."""
    if ready_path:
        kw["ready"] = lambda p: http_ok(p.base + ready_path, method="POST", data=b"x", timeout=2.0,
                                        headers={"Content-Type": "message/ohttp-req"})
    return start_process(argv, port, name=name, log_path=tmp / f"{name}.log", die_with_parent=True, stop_timeout=15.0,
                         **kw)


def wait_all_workers(relay: Proc, n: int, bound: float = 60.0) -> None:
    """``veil relay --workers n``: until its supervisor says every worker listens (/healthz is any one of them)."""
    deadline = time.monotonic() + bound
    while n > 1 and "workers listening" not in relay.log():
        if time.monotonic() > deadline or relay.popen.poll() is not None:
            raise RuntimeError(f"{relay.name}: not every worker started:\n{relay.log_tail()}")
        time.sleep(0.1)


def nginx_worker(master: int) -> int:
    """The single worker of an nginx master (``worker_processes 1``)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    return master


NGINX_COMMON = """
{user}worker_processes {workers};
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/{name}-body;
    proxy_temp_path {tmp}/{name}-proxy;
    fastcgi_temp_path {tmp}/{name}-fastcgi;
    uwsgi_temp_path {tmp}/{name}-uwsgi;
    scgi_temp_path {tmp}/{name}-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{body}
}}
"""

NGINX_UPSTREAM = """
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type message/ohttp-res;
            return 200 "{answer}";
        }}
    }}
"""

NGINX_PROXY = """
    upstream gateway {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 4m;
        location = /gw {{
            proxy_pass http://gateway/.well-known/ohttp-gateway;
            proxy_http_version 1.1;
            proxy_pass_request_headers off;
            proxy_set_header Content-Type $content_type;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
        location / {{
            return 403;
        }}
    }}
"""


def start_nginx(name: str, body: str, port: int, ready: str, tmp: Path, workers: int = 1) -> tuple[Proc, int]:
    """nginx with ``body`` as its http block's servers, ready when a POST to ``ready`` answers 200; and its worker."""
    conf = tmp / f"{name}.conf"
    # As root, nginx would switch its worker to "nobody", which cannot enter the private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_COMMON.format(user=user, tmp=tmp, name=name, body=body, workers=workers))
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = start(name, [nginx, "-p", str(tmp), "-c", str(conf)], port, tmp, ready_path=ready, stop_signal=signal.SIGTERM)
    return proc, nginx_worker(proc.pid)


def serve_upstream(port: int, answer: bytes) -> None:
    """Hidden mode: the aiohttp stand-in gateway (``--upstream aiohttp``)."""
    from aiohttp import web

    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="message/ohttp-res", headers={"Cache-Control": "no-store"})

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", post)
    app.router.add_get("/{tail:.*}", get)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_floor(port: int, upstream: str) -> None:
    """Hidden mode (``--floor``): the POST path alone, on a raw asyncio protocol and llhttp, forwarded through
    ``hop.Pool``; no checks, no streaming, no pipelining (a benchmark's floor, never a relay)."""
    import asyncio

    import httptools

    import hop

    origin, target = hop.target_of(upstream)
    forward_headers = (("Content-Type", "message/ohttp-req"),)

    class Floor(asyncio.Protocol):
        def __init__(self, pool: hop.Pool) -> None:
            self.pool = pool
            self.transport: asyncio.Transport | None = None
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                assert self.transport is not None
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            body, self.body = b"".join(self.body), []
            asyncio.ensure_future(self.answer(body))

        async def answer(self, body: bytes) -> None:
            assert self.transport is not None
            try:
                resp = await self.pool.request(origin, "POST", target, forward_headers, body)
                data = await resp.read(1 << 20)
                resp.release()
            except hop.HopError:
                self.transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            ctype = resp.headers.get("content-type", "application/octet-stream").encode("latin-1")
            self.transport.write(b"HTTP/1.1 %d OK\r\nContent-Type: %s\r\nCache-Control: no-store\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (resp.status, ctype, len(data), data))

    async def run() -> None:
        pool = hop.Pool(connect_timeout=5.0, read_timeout=30.0)
        server = await asyncio.get_running_loop().create_server(lambda: Floor(pool), "127.0.0.1", port)
        await server.serve_forever()

    try:  # the relay's default loop where installed
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get ...", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        # Where the package starts its own nginx service, it is left alone: this script runs its own instances.
        return
    raise SystemExit(f"bench_relay: needs {' '.join(missing)} (Debian: apt-get install {' '.join(missing)})")


# ---------------------------------------------------------------------------------------------------------------
# Load (wrk)

WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "message/ohttp-req"
wrk.body = "{body}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,'
    .. '"p50":%d,"p90":%d,"p99":%d,"mean":%f}}\\n', summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean))
end
"""


def lua_string(data: bytes) -> str:
    return "".join(f"\\{b:03d}" for b in data)


@dataclass
class Run:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us_per_request: float


def wrk(url: str, connections: int, duration: float, script: Path, cpu_pid: int | None) -> Run:
    before = tree_cpu_seconds(cpu_pid) if cpu_pid else 0.0
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    after = tree_cpu_seconds(cpu_pid) if cpu_pid else 0.0
    m = re.search(r"WRKJSON (\{.*\})", out)
    if m is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    d = json.loads(m.group(1))
    secs = d["duration_us"] / 1e6
    return Run(
        rps=d["requests"] / secs, p50_ms=d["p50"] / 1000, p90_ms=d["p90"] / 1000, p99_ms=d["p99"] / 1000,
        requests=d["requests"], errors=d["socket_errors"] + d["non2xx"],
        cpu_us_per_request=(after - before) / d["requests"] * 1e6 if cpu_pid and d["requests"] else float("nan"),
    )


# ---------------------------------------------------------------------------------------------------------------
# Report


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "unknown"
    text = (r.stdout + r.stderr).strip().splitlines()
    return text[0] if text else "unknown"


@dataclass
class Series:
    key: str
    label: str
    workers: int = 1
    runs: dict[int, list[Run]] = field(default_factory=dict)

    def med(self, c: int, attr: str) -> float:
        vals = [getattr(r, attr) for r in self.runs.get(c, [])]
        vals = [v for v in vals if not math.isnan(v)]
        return statistics.median(vals) if vals else float("nan")

    def errors(self) -> int:
        return sum(r.errors for rs in self.runs.values() for r in rs)


def f(x: float, nd: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs (3 s, 1 round)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement (default 8; quick 3)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 1)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--upstream", choices=("nginx", "aiohttp"), default="nginx")
    parser.add_argument("--loops", default=None,
                        help="relay event loops to measure, comma-separated (default: asyncio,uvloop if installed)")
    parser.add_argument("--workers", default="1,2",
                        help="veil relay --workers (and nginx worker_processes) counts to measure, comma-separated")
    parser.add_argument("--veil-root", type=Path, default=ROOT,
                        help="run the relay from this checkout (before/after comparisons)")
    parser.add_argument("--baseline-root", type=Path, default=None,
                        help="also run the relay from this checkout (e.g. a git worktree of an older commit) in the "
                             "same interleaved rounds: series *-base, and the ratio to it per round")
    parser.add_argument("--floor", action="store_true",
                        help="also measure the floor: the POST path alone on a raw asyncio protocol and hop/, with none "
                             "of the relay's checks (what moving the relay off aiohttp's server could reach at best)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON to PATH")
    parser.add_argument("--_serve-floor", dest="serve_floor", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_floor-upstream", dest="floor_upstream", help=argparse.SUPPRESS)
    parser.add_argument("--_serve-upstream", dest="serve_upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--_answer", dest="answer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream, bytes.fromhex(args.answer))
        return 0
    if args.serve_floor is not None:
        serve_floor(args.serve_floor, args.floor_upstream)
        return 0
    duration = args.duration or (3.0 if args.quick else 8.0)
    rounds = args.rounds or (1 if args.quick else 3)
    if args.loops is None:
        loops = ["asyncio", "uvloop"] if version_of("uvloop") != "not installed" else ["asyncio"]
    else:
        loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    if args.floor and 1 not in counts:
        parser.error("--floor is one process: it is compared with nginx's 1 worker, so --workers must include 1")
    ensure_tools()

    req, resp = payloads()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info: dict[str, Any] = {
        **machine_info("aiohttp", "uvloop"), "nginx": tool_version(["nginx", "-v"]), "wrk": tool_version(["wrk", "-v"]),
        "date": date, "loadavg_start": os.getloadavg(),
    }
    veil_root = args.veil_root.resolve()
    relay_env = {"PYTHONPATH": str(veil_root)} if veil_root != ROOT else {}
    print("# veil relay vs nginx")
    print()
    print(f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable); {info['python']}; "
          f"aiohttp {info['aiohttp']}; uvloop {info['uvloop']}; {info['nginx']}; {info['wrk']}; {info['platform']}; "
          f"{date}; load average at start {info['loadavg_start'][0]:.2f}")
    print(f"Load: wrk, 1 thread, POST {len(req)} B message/ohttp-req, answer {len(resp)} B message/ohttp-res; "
          f"{args.connections} and 1 connections, {duration:g} s each, {rounds} interleaved round(s); upstream: "
          f"{args.upstream}; nginx worker_processes N next to veil relay --workers N for N in {counts}"
          + (f"; relay code from {veil_root}" if veil_root != ROOT else "") + "; command: "
          + command_line(__file__, argv if argv is not None else sys.argv[1:]), flush=True)

    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmpdir:
        tmp = Path(tmpdir)
        script = tmp / "post.lua"
        script.write_text(WRK_LUA.format(body=lua_string(req)))
        try:
            up_port = free_port()
            if args.upstream == "nginx":
                up, _ = start_nginx("nginx-upstream", NGINX_UPSTREAM.format(port=up_port, answer=printable(len(resp))),
                                    up_port, "/", tmp)
            else:
                up = start("upstream", [sys.executable, __file__, "--_serve-upstream", str(up_port), "--_answer",
                                        resp.hex()], up_port, tmp, health="/")
            procs.append(up)
            targets: list[tuple[Series, str, int | None]] = [
                (Series("direct", "direct to the upstream (no proxy)"),
                 f"http://127.0.0.1:{up_port}/.well-known/ohttp-gateway", None)]
            for n in counts:
                ng_port = free_port()
                ng, _ = start_nginx(f"nginx-proxy-{n}", NGINX_PROXY.format(port=ng_port, upstream=up_port), ng_port,
                                    "/gw", tmp, workers=n)
                procs.append(ng)
                targets.append((Series(f"nginx-w{n}", f"nginx reverse proxy ({n} worker{'s' if n > 1 else ''})",
                                       workers=n), f"http://127.0.0.1:{ng_port}/gw", ng.pid))
            roots = [(veil_root, relay_env, "", "")]
            if args.baseline_root is not None:
                base_root = args.baseline_root.resolve()
                roots.append((base_root, {"PYTHONPATH": str(base_root)}, "-base", f", baseline {base_root}"))
            for n in counts:
                for loop in loops:
                    for root, env, suffix, note in roots:
                        port = free_port()
                        name = f"relay-{loop}-w{n}{suffix}"
                        relay = start_veil(["relay", "--listen", f"127.0.0.1:{port}", "--rate-per-minute",
                                            "1000000000", "--workers", str(n), "--log-level", "warning", "--gateway",
                                            f"gw=http://127.0.0.1:{up_port}/.well-known/ohttp-gateway"],
                                           port, name=name, env=env | RELAY_UNCAPPED | {"VEIL_EVENT_LOOP": loop},
                                           cwd=root, log_path=tmp / f"{name}.log", die_with_parent=True,
                                           stop_timeout=15.0)
                        procs.append(relay)
                        wait_all_workers(relay, n)
                        targets.append((Series(name, f"veil relay ({loop}, {n} worker{'s' if n > 1 else ''}{note})",
                                               workers=n), f"http://127.0.0.1:{port}/gw", relay.pid))
            if args.floor:
                port = free_port()
                floor = start("floor", [sys.executable, __file__, "--_serve-floor", str(port), "--_floor-upstream",
                                        f"http://127.0.0.1:{up_port}/.well-known/ohttp-gateway"], port, tmp,
                              env={"PYTHONPATH": str(veil_root)},
                              ready=lambda p: http_ok(p.base + "/gw", method="POST", data=b"x", timeout=2.0,
                                                      headers={"Content-Type": "message/ohttp-req"}))
                procs.append(floor)
                floor_loop = "uvloop" if version_of("uvloop") != "not installed" else "asyncio"  # as serve_floor picks
                targets.append((Series("floor", f"floor: POST path alone, raw protocol + hop/, {floor_loop}, no checks "
                                                "(not a relay)"),
                                f"http://127.0.0.1:{port}/gw", floor.pid))
            # warm-up
            for s, url, pid in targets:
                wrk(url, args.connections, 1, script, pid)
            for rnd in range(rounds):
                k = rnd % len(targets)
                for s, url, pid in targets[k:] + targets[:k]:
                    for c in (args.connections, 1):
                        print(f"round {rnd + 1}/{rounds} {s.key:14s} c={c} ...", file=sys.stderr, flush=True)
                        s.runs.setdefault(c, []).append(wrk(url, c, duration, script, pid))
        finally:
            stop_all(procs)
    info["loadavg_end"] = os.getloadavg()

    series = [s for s, _, _ in targets]
    direct = series[0]
    nginx = {s.workers: s for s in series if s.key.startswith("nginx")}
    c = args.connections
    print()
    print(f"| target | req/s c={c} | vs nginx, same workers | p50 ms c={c} | p99 ms c={c} | added p50 ms c={c} "
          f"| added p99 ms c={c} | p50 ms c=1 | p99 ms c=1 | added p50 ms c=1 | added p99 ms c=1 "
          f"| CPU µs/request (c={c}, all processes) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for s in series:
        vs = f"{s.med(c, 'rps') / nginx[s.workers].med(c, 'rps'):.2f}x" if s is not direct else "–"
        added = [s.med(cc, a) - direct.med(cc, a) for cc in (c, 1) for a in ("p50_ms", "p99_ms")]
        print(f"| {s.label} | {s.med(c, 'rps'):.0f} | {vs} | {f(s.med(c, 'p50_ms'))} | {f(s.med(c, 'p99_ms'))} "
              f"| {f(added[0]) if s is not direct else '–'} | {f(added[1]) if s is not direct else '–'} "
              f"| {f(s.med(1, 'p50_ms'), 3)} | {f(s.med(1, 'p99_ms'), 3)} "
              f"| {f(added[2], 3) if s is not direct else '–'} | {f(added[3], 3) if s is not direct else '–'} "
              f"| {f(s.med(c, 'cpu_us_per_request'), 1)} |")
    print()
    print("Per round, req/s at c=" + str(c) + ": " + "; ".join(
        f"{s.key} " + ", ".join(f"{r.rps:.0f}" for r in s.runs[c]) for s in series))
    print()
    if len(counts) > 1:
        lo, hi = min(counts), max(counts)
        for key in ["nginx", *(f"relay-{loop}" for loop in loops)]:
            a = next(s for s in series if s.key in (f"{key}-w{lo}",))
            b = next(s for s in series if s.key in (f"{key}-w{hi}",))
            print(f"Scaling {key}: {hi} workers / {lo} = {b.med(c, 'rps') / a.med(c, 'rps'):.2f}x "
                  f"(per round: " + ", ".join(f"{y.rps / x.rps:.2f}" for x, y in zip(a.runs[c], b.runs[c])) + ")")
        print()
    if args.baseline_root is not None:
        for s in series:
            base = next((b for b in series if b.key == s.key + "-base"), None)
            if base is None:
                continue
            print(f"{s.key} / {base.key}: req/s {s.med(c, 'rps') / base.med(c, 'rps'):.3f}x (per round: "
                  + ", ".join(f"{x.rps / y.rps:.3f}" for x, y in zip(s.runs[c], base.runs[c]))
                  + f"); CPU µs/request {s.med(c, 'cpu_us_per_request'):.1f} vs {base.med(c, 'cpu_us_per_request'):.1f}"
                  + " (per round: " + ", ".join(f"{x.cpu_us_per_request:.1f}/{y.cpu_us_per_request:.1f}"
                                                for x, y in zip(s.runs[c], base.runs[c])) + ")")
        print()
    lines = []
    for s in series:
        if not s.key.startswith("relay"):
            continue
        base = nginx[s.workers]
        ratio = s.med(c, "rps") / base.med(c, "rps")
        lines.append((ratio >= TARGET_RATIO,
                      f"{s.label} throughput >= {TARGET_RATIO}x nginx ({s.workers} worker(s)) at {c} connections: "
                      f"{s.med(c, 'rps'):.0f} vs {base.med(c, 'rps'):.0f} req/s = {ratio:.2f}x"))
    floor_s = next((s for s in series if s.key == "floor"), None)
    if floor_s is not None:
        relay1 = [s for s in series if s.key.startswith("relay") and s.workers == 1 and not s.key.endswith("-base")]
        print(f"Floor (no checks, not a relay): {floor_s.med(c, 'rps') / nginx[1].med(c, 'rps'):.2f}x nginx (1 worker), "
              f"{floor_s.med(c, 'cpu_us_per_request'):.1f} µs of CPU per request against nginx's "
              f"{nginx[1].med(c, 'cpu_us_per_request'):.1f}; " + "; ".join(
                  f"{s.key} {s.med(c, 'rps') / floor_s.med(c, 'rps'):.2f}x the floor's req/s at "
                  f"{s.med(c, 'cpu_us_per_request'):.1f} µs" for s in relay1))
        print()
    errors = sum(s.errors() for s in series)
    for ok, text in lines:
        print(f"{'PASS' if ok else 'MISS'}: {text}")
    if errors:
        print(f"ERRORS: {errors} failed requests (socket errors or non-2xx)")
    print(f"\n(load average at end {info['loadavg_end'][0]:.2f})")
    if args.json is not None:
        doc = {
            "machine": info, "duration_s": duration, "rounds": rounds, "connections": c, "upstream": args.upstream,
            "request_bytes": len(req), "response_bytes": len(resp),
            "series": {s.key: {"label": s.label, "runs": {str(k): [vars(r) for r in v] for k, v in s.runs.items()}}
                       for s in series},
            "targets": [{"pass": ok, "detail": t} for ok, t in lines], "errors": errors,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
