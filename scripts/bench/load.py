#!/usr/bin/env python3
"""Load test of the whole chain on loopback with the echo engine (bounded in time and count; loopback only).

    .venv/bin/python scripts/bench/load.py                         200 streams for 60 s through proxy -> relay -> gateway
    .venv/bin/python scripts/bench/load.py --seconds 20 --rotate   rotate the gateway's keys a quarter of the way in
    .venv/bin/python scripts/bench/load.py --via relay             the OHTTP client in-process, straight to the relay

Each worker sends streamed chat requests back to back; a request counts as good only if its stream ends with
``data: [DONE]`` and carries every word it asked for. Prints throughput, latency percentiles (time to first event,
whole stream), failures, RSS of each Veil process before and after, and whether any prompt reached a log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench_env import prepare

REPO = prepare(__file__, "aiohttp", "orjson")

from _common import RELAY_UNCAPPED, rss_mb

from tests.harness import Proc, free_port, start_veil, stop_all

CANARY = "load-canary-8842"


def start(args: list[str], port: int, log: Path) -> Proc:
    env = RELAY_UNCAPPED if args[0] == "relay" else None  # every stream comes from 127.0.0.1
    return start_veil(args, port, name=args[0], log_path=log, stop_timeout=30.0, die_with_parent=True, env=env)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace) -> int:
    import aiohttp
    import orjson

    from proxy import OhttpClient
    from proxy.verify import make_verifier

    tmp = Path(tempfile.mkdtemp(prefix="veil-load-"))
    gp, rp, pp = free_port(), free_port(), free_port()
    procs = {
        "gateway": start(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}", "--echo-token-delay",
                          str(args.token_delay), "--rotation-grace", "5"], gp, tmp / "gateway.log"),
        "relay": start(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway",
                        f"gw=http://127.0.0.1:{gp}/.well-known/ohttp-gateway", "--rate-per-minute", "100000000",
                        "--max-concurrent", "4096"], rp, tmp / "relay.log"),
    }
    if args.via == "proxy":
        procs["proxy"] = start(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                                "--insecure-allow-simulated"], pp, tmp / "proxy.log")
    rss_before = {n: rss_mb(p.pid) for n, p in procs.items()}
    ttft: list[float] = []
    total: list[float] = []
    stats: dict[str, Any] = {"ok": 0, "failed": 0, "errors": []}
    words = " ".join(f"{CANARY}-{i}" for i in range(args.words))
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]}
    deadline = time.monotonic() + args.seconds
    client = OhttpClient(f"http://127.0.0.1:{rp}/gw", verifier=make_verifier(allow_simulated=True))
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120),
                                    connector=aiohttp.TCPConnector(limit=0))

    async def one() -> None:
        t0 = time.perf_counter()
        first = None
        data = bytearray()
        if args.via == "proxy":
            async with session.post(f"http://127.0.0.1:{pp}/v1/chat/completions", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
                async for piece in r.content.iter_any():
                    first = first or time.perf_counter()
                    data += piece
        else:
            inner = await client.request("POST", "/v1/chat/completions", [("content-type", "application/json")],
                                         orjson.dumps(body), chunked=True)
            assert inner.pieces is not None
            async for piece in inner.pieces:
                first = first or time.perf_counter()
                data += piece
        end = time.perf_counter()
        if not data.endswith(b"data: [DONE]\n\n") or f"{CANARY}-{args.words - 1}".encode() not in data:
            raise RuntimeError("stream cut short")
        ttft.append((first or end) - t0)
        total.append(end - t0)

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                await one()
                stats["ok"] += 1
            except Exception as exc:
                stats["failed"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(repr(exc)[:200])

    async def rotate() -> None:
        if args.rotate:
            await asyncio.sleep(args.seconds / 4)
            procs["gateway"].popen.send_signal(signal.SIGUSR1)
            print("[load] rotated the gateway's keys", flush=True)

    print(f"[load] {args.concurrency} streams of {args.words} words for {args.seconds:.0f} s via {args.via}",
          flush=True)
    t_start = time.monotonic()
    await asyncio.gather(rotate(), *(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - t_start
    await session.close()
    await client.close()
    rss_after = {n: rss_mb(p.pid) for n, p in procs.items()}
    stop_all(procs.values())
    leaked = [n for n in procs if CANARY in (tmp / f"{n}.log").read_text(errors="replace")]
    n = stats["ok"]
    print(f"""
| metric | value |
| --- | --- |
| machine | {os.cpu_count()} cores, Python {sys.version.split()[0]} |
| path | {'SDK-style SSE client -> veil proxy -> veil relay -> veil gateway (echo)' if args.via == 'proxy' else 'OhttpClient -> veil relay -> veil gateway (echo)'} |
| concurrency, duration | {args.concurrency} streams, {elapsed:.1f} s{' (keys rotated at 25%)' if args.rotate else ''} |
| streams completed / failed | {n} / {stats['failed']} |
| throughput | {n / elapsed:.1f} streams/s, {n * (args.words + 4) / elapsed:.0f} SSE events/s |
| time to first event p50 / p99 | {pct(ttft, .5) * 1000:.1f} ms / {pct(ttft, .99) * 1000:.1f} ms |
| whole stream p50 / p99 | {pct(total, .5) * 1000:.1f} ms / {pct(total, .99) * 1000:.1f} ms (engine: {args.words} x {args.token_delay * 1000:.0f} ms) |
| RSS before -> after (MB) | {', '.join(f'{k} {rss_before[k]:.0f} -> {rss_after[k]:.0f}' for k in procs)} |
| prompt text in any log | {'YES: ' + ', '.join(leaked) if leaked else 'no'} |
""")
    if stats["errors"]:
        print("first errors:", *stats["errors"], sep="\n  ")
    if total:
        print(f"mean stream {statistics.mean(total) * 1000:.1f} ms")
    return 1 if stats["failed"] or leaked else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--token-delay", type=float, default=0.01)
    p.add_argument("--via", choices=("proxy", "relay"), default="proxy")
    p.add_argument("--rotate", action="store_true")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
