#!/usr/bin/env python3
"""Issue 21: what the whole chain adds at 1, 4, 16 and 64 concurrent streams, against direct, in one run.

A stand-in engine (``bench_chain.py``'s plain aiohttp server around ``EchoEngine``) streams ``--tokens`` tokens
(default 100) at ``--token-delay`` (default 10 ms) per token, so the engine costs almost nothing. The same client
(aiohttp, or ``--client sdk`` for the ``openai`` SDK) streams chats

* ``direct``: straight to the stand-in engine;
* ``chain``: to ``veil proxy`` -> ``veil relay`` -> ``veil gateway --engine upstream`` -> the same stand-in engine,

and with ``--variant NAME=DIR[@GATEWAY ARGS]`` (repeatable) more chains from other checkouts or with other gateway
options, each its own three processes on the same engine: the A/B of a change in the same run. Padding is the
gateway's default (on).

Per concurrency C, in interleaved rounds (the order of the paths rotates each round): C workers each stream
``max(2, --streams // C)`` chats back to back. Reported per path: TTFT p50 (first non-empty content delta), the
added TTFT p50 against direct, tokens/s (all completion tokens / wall time of the phase) and its ratio to direct;
CPU (utime + stime from ``/proc``) of gateway, relay and proxy per streamed chunk (per content token: the whole
phase's CPU, set-up included, over the tokens it streamed) and per stream; and, for non-streamed chats at
concurrency 16, the CPU per request summed over the three. Then the issue's PASS/MISS lines, and a plot of added
TTFT against concurrency (``--plot``; ``--compare JSON`` draws an earlier run's curve next to it).

``--transport`` adds, per chain, a path with the in-process client (``proxy.transport.OhttpClient``, what
``VeilTransport`` runs, in this process) straight to the chain's relay, and reports the client side of both ways in:
CPU per chunk and per non-streamed request of ``veil proxy`` plus the aiohttp client in front of it, against this
process with the OhttpClient (each minus the plain client's own CPU on ``direct``). Every path also reports this
process's CPU (the ``client`` column).

``--profile DIR`` runs ``py-spy record`` on the three processes of the first chain during an extra 16-stream phase
and writes each one's collapsed stacks plus a summary of the functions holding the most samples (own and total).

Usage::

    scripts/bench/bench_concurrency.py [--rounds N] [--concurrency 1,4,16,64] [--tokens 100] [--token-delay 0.01]
        [--variant NAME=DIR[@ARGS]] [--client raw|sdk] [--transport] [--json PATH] [--plot PATH] [--compare JSON] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from _bench_env import prepare

ROOT = prepare(__file__, 'aiohttp', 'openai')

import bench_chain  # noqa: E402 - after prepare()
from _common import RELAY_UNCAPPED, Target, command_line, cpu_seconds, machine_info, pct  # noqa: E402
from bench_chain import BENCH_PROC, BenchError, OhttpPathClient, RawClient, SdkClient, StreamSample  # noqa: E402

from tests.harness import Proc, free_port, start_process, start_veil, stop_all  # noqa: E402

PERF = time.perf_counter
VEIL_PROCS: Final = ("gateway", "relay", "proxy")

TARGET_TPS_RATIO_16: Final = 0.98
TARGET_ADDED_TTFT_16_MS: Final = 4.0
TARGET_ADDED_TTFT_1_MS: Final = 2.0
TARGET_CPU_PER_CHUNK_US: Final = 25.0
TARGET_CPU_PER_REQUEST_MS: Final = 0.8


@dataclass
class Chain:
    name: str
    root: Path
    gw_args: list[str]
    procs: dict[str, Proc] = field(default_factory=dict)


@dataclass
class PhaseResult:
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    streams: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    #: CPU (utime + stime) of this benchmark process during the phase: the client itself (with ``--transport``,
    #: the in-process OhttpClient's encapsulation and decryption as well)
    client_cpu: float = 0.0

    def merge(self, other: PhaseResult) -> None:
        self.ttft += other.ttft
        self.tokens += other.tokens
        self.streams += other.streams
        self.wall += other.wall
        self.errors += other.errors
        self.client_cpu += other.client_cpu
        for k, v in other.cpu.items():
            self.cpu[k] = self.cpu.get(k, 0.0) + v

    def chunk_us(self, proc: str) -> float:
        """CPU per content token of ``proc`` (or ``client``: this process), in µs."""
        cpu = self.client_cpu if proc == "client" else self.cpu.get(proc, 0.0)
        return cpu / max(self.tokens, 1) * 1e6

    @property
    def tps(self) -> float:
        return self.tokens / self.wall if self.wall else float("nan")


def start_chain(c: Chain, engine_port: int, env: dict[str, str]) -> None:
    def veil(name: str, args: list[str], port: int, extra: dict[str, str]) -> Proc:
        e = {**env, **extra}
        if c.root != ROOT:
            e["PYTHONPATH"] = str(c.root)
        return start_veil(args, port, name=f"{c.name}-{name}", timeout=60.0, env=e, cwd=c.root, **BENCH_PROC)

    gp, rp, pp = free_port(), free_port(), free_port()
    c.procs["gateway"] = veil("gateway", ["gateway", "--engine", "upstream", "--upstream-url",
                                          f"http://127.0.0.1:{engine_port}", "--listen", f"127.0.0.1:{gp}",
                                          "--log-level", "warning", *c.gw_args], gp, {})
    c.procs["relay"] = veil("relay", ["relay", "--listen", f"127.0.0.1:{rp}", "--rate-per-minute", "1000000000",
                                      "--gateway", f"gw=http://127.0.0.1:{gp}/.well-known/ohttp-gateway",
                                      "--log-level", "warning"], rp, RELAY_UNCAPPED)
    c.procs["proxy"] = veil("proxy", ["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                                      "--insecure-allow-simulated", "--log-level", "warning"], pp, {})


def stream_body(tokens: int) -> dict[str, Any]:
    return {"model": "echo", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(tokens))}]}


CHAT_BODY: Final = {"model": "echo", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


async def stream_phase(client: Any, conc: int, per_worker: int, tokens: int, pids: dict[str, int],
                       res: PhaseResult) -> None:
    body = stream_body(tokens)

    async def worker() -> None:
        for _ in range(per_worker):
            try:
                s: StreamSample = await client.stream(body)
            except Exception as e:  # noqa: BLE001 - counted and shown
                res.errors += 1
                print(f"  error: {e!r}"[:300], file=sys.stderr)
                continue
            if s.tokens != tokens:
                res.errors += 1
                print(f"  error: {s.tokens} tokens, expected {tokens}", file=sys.stderr)
            res.ttft.append(s.ttft)
            res.tokens += max(s.tokens, 0)
            res.streams += 1

    await _run_measured(worker, conc, pids, res)


async def _run_measured(worker: Any, conc: int, pids: dict[str, int], res: PhaseResult) -> None:
    """``conc`` copies of ``worker`` at once; their wall time and each process's CPU time go into ``res``."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0, c0 = PERF(), _own_cpu()
    await asyncio.gather(*(worker() for _ in range(conc)))
    res.wall += PERF() - t0
    res.client_cpu += _own_cpu() - c0
    for k, p in pids.items():
        res.cpu[k] = res.cpu.get(k, 0.0) + cpu_seconds(p) - before[k]


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def chat_phase(client: Any, conc: int, count: int, pids: dict[str, int], res: PhaseResult) -> None:
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                await client.chat(CHAT_BODY)
                res.streams += 1
            except Exception as e:  # noqa: BLE001
                res.errors += 1
                print(f"  error: {e!r}"[:300], file=sys.stderr)

    await _run_measured(worker, conc, pids, res)


# ---------------------------------------------------------------------------------------------------------------
# Profile


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """The functions with the most samples in a py-spy collapsed-stack file: own (leaf) and total (anywhere)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    n = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        n += k
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 2)[-1] + ")" if " (" in f else f
                  for f in stack.split(";")]
        if frames:
            own[frames[-1]] += k
        for f in set(frames):
            total[f] += k
    out = [f"{path.name}: {n} samples", "  own:"]
    out += [f"    {100 * v / max(n, 1):5.1f}%  {f}" for f, v in own.most_common(top)]
    out += ["  total:"]
    out += [f"    {100 * v / max(n, 1):5.1f}%  {f}" for f, v in total.most_common(top)]
    return "\n".join(out)


async def profile_phase(client: Any, chain: Chain, tokens: int, seconds: float, outdir: Path, kind: str = "stream") -> str:
    outdir.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return "py-spy not installed (pip install -e '.[bench]'): no profile"
    recs = []
    for name in VEIL_PROCS:
        out = outdir / f"{name}.collapsed"
        recs.append((out, subprocess.Popen([spy, "record", "--pid", str(chain.procs[name].pid), "--format", "raw",
                                            "--rate", "250", "--duration", str(int(seconds)), "--nonblocking",
                                            "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    await asyncio.sleep(1.0)
    res = PhaseResult()
    end = PERF() + seconds - 1.5
    while PERF() < end:
        if kind == "chat":
            await chat_phase(client, 16, 200, {}, res)
        else:
            await stream_phase(client, 16, 1, tokens, {}, res)
    for _, p in recs:
        await asyncio.to_thread(p.wait, 30)
    return "\n\n".join(summarize_collapsed(out) for out, _ in recs if out.exists())


# ---------------------------------------------------------------------------------------------------------------
# Report


def f(x: float, nd: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{nd}f}"


def write_plot(path: Path, rows: dict[str, dict[int, dict[str, float]]], compare: list[Path], title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, per_c in rows.items():
        cs = sorted(per_c)
        ax.plot(cs, [per_c[c]["added_ttft_ms"] for c in cs], marker="o", label=name)
    for cpath in compare:
        old = json.loads(cpath.read_text())
        for name, per_c in old["rows"].items():
            cs = sorted(int(c) for c in per_c)
            ax.plot(cs, [per_c[str(c)]["added_ttft_ms"] for c in cs], marker="x", linestyle="--",
                    label=f"{name} ({old.get('label') or cpath.stem})")
    ax.axhline(TARGET_ADDED_TTFT_16_MS, color="grey", linestyle=":", linewidth=1, label="target at 16 streams (4 ms)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("added TTFT p50 vs direct (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


async def bench(args: argparse.Namespace, engine: Proc, chains: list[Chain]) -> int:
    make = (lambda base: SdkClient(base)) if args.client == "sdk" else (lambda base: RawClient(base))
    paths: list[tuple[str, Any, dict[str, int]]] = [("direct", make(engine.base), {})]
    for c in chains:
        paths.append((c.name, make(c.procs["proxy"].base), {k: c.procs[k].pid for k in VEIL_PROCS}))
    if args.transport:  # the in-process client (OhttpClient, what VeilTransport runs) straight to each relay
        for c in chains:
            paths.append((f"{c.name}/transport", OhttpPathClient(c.procs["relay"].base + "/gw"),
                          {k: c.procs[k].pid for k in VEIL_PROCS if k != "proxy"}))
    concs = [int(x) for x in args.concurrency.split(",")]
    res: dict[str, dict[int, PhaseResult]] = {p[0]: {c: PhaseResult() for c in concs} for p in paths}
    per_round: dict[str, dict[int, list[PhaseResult]]] = {p[0]: {c: [] for c in concs} for p in paths}
    chat_res: dict[str, PhaseResult] = {p[0]: PhaseResult() for p in paths}
    profile_text = ""
    failures = 0
    try:
        print("warming up ...", file=sys.stderr, flush=True)
        for _, client, _ in paths:
            for _ in range(10):
                await client.chat(CHAT_BODY)
            await client.stream(stream_body(4))
        for rnd in range(args.rounds):
            order = paths[rnd % len(paths):] + paths[: rnd % len(paths)]
            for conc in concs:
                per_worker = max(2, args.streams // conc)
                for name, client, pids in order:
                    print(f"round {rnd + 1}/{args.rounds} c={conc:<3d} x{per_worker:<2d} {name} ...", file=sys.stderr,
                          flush=True)
                    one = PhaseResult()
                    await stream_phase(client, conc, per_worker, args.tokens, pids, one)
                    res[name][conc].merge(one)
                    per_round[name][conc].append(one)
            for name, client, pids in order:
                await chat_phase(client, 16, args.chats, pids, chat_res[name])
        if args.profile:
            print(f"profiling {chains[0].name} at 16 {args.profile_kind}s ...", file=sys.stderr, flush=True)
            profile_text = await profile_phase(paths[1][1], chains[0], args.tokens, args.profile_seconds, args.profile,
                                               args.profile_kind)
    finally:
        for _, client, _ in paths:
            await client.close()
    failures = sum(r.errors for pr in res.values() for r in pr.values()) + sum(r.errors for r in chat_res.values())

    # ---- tables
    d = res["direct"]
    rows: dict[str, dict[int, dict[str, float]]] = {}
    print("\n### Streams: whole chain vs direct\n")
    print("| path | concurrent streams | streams | TTFT p50 (ms) | added TTFT p50 (ms) | tokens/s | tokens/s, path / direct |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, _, _ in paths:
        rows[name] = {}
        for conc in concs:
            r = res[name][conc]
            t50 = pct(r.ttft, 50) * 1e3
            added = t50 - pct(d[conc].ttft, 50) * 1e3
            tr = r.tps / d[conc].tps if d[conc].tps else float("nan")
            if name != "direct":
                rows[name][conc] = {"added_ttft_ms": added, "tps_ratio": tr, "ttft_p50_ms": t50,
                                    "ttft_p90_ms": pct(r.ttft, 90) * 1e3}
            print(f"| {name} | {conc} | {r.streams} | {f(t50)} | {'' if name == 'direct' else f'{added:+.1f}'} | "
                  f"{f(r.tps, 0)} | {'' if name == 'direct' else f(tr, 3)} |")
    rows = {k: v for k, v in rows.items() if v}

    print("\n### CPU per streamed chunk (µs; the whole phase's utime+stime / content tokens, set-up included)\n")
    print("The client column is this benchmark process (the aiohttp client; on a `/transport` path also the "
          "in-process OhttpClient).\n")
    print("| path | concurrent streams | " + " | ".join(VEIL_PROCS) + " | sum | CPU per stream, sum (ms) | client |")
    print("|---|--:|" + "--:|" * (len(VEIL_PROCS) + 3))
    for name, _, _ in paths:
        for conc in concs:
            r = res[name][conc]
            client_us = r.client_cpu / max(r.tokens, 1) * 1e6
            if name == "direct":
                print(f"| direct | {conc} |" + " |" * (len(VEIL_PROCS) + 2) + f" {f(client_us)} |")
                continue
            per = {k: r.cpu.get(k, 0.0) / max(r.tokens, 1) * 1e6 for k in VEIL_PROCS}
            rows[name][conc].update({f"cpu_chunk_us_{k}": v for k, v in per.items()})
            rows[name][conc]["cpu_chunk_us_client"] = client_us
            print(f"| {name} | {conc} | " + " | ".join(f(per[k]) if k in r.cpu else "" for k in VEIL_PROCS)
                  + f" | {f(sum(per.values()))} | {f(sum(r.cpu.values()) / max(r.streams, 1) * 1e3, 2)} | "
                  f"{f(client_us)} |")

    rounds_json = {name: {str(conc): [{k: r.chunk_us(k) for k in (*VEIL_PROCS, "client") if k == "client" or k in pids}
                                      for r in per_round[name][conc]] for conc in concs} for name, _, pids in paths}
    if args.rounds > 1:
        print("\n### CPU per streamed chunk per round (µs): median [min-max] over the rounds\n")
        print("| path | concurrent streams | " + " | ".join(VEIL_PROCS) + " | sum | client |")
        print("|---|--:|" + "--:|" * (len(VEIL_PROCS) + 2))
        for name, _, pids in paths:
            procs = [k for k in VEIL_PROCS if k in pids]
            for conc in concs:
                rs = per_round[name][conc]
                cells = []
                for k in VEIL_PROCS:
                    vals = [r.chunk_us(k) for r in rs]
                    cells.append(f"{f(statistics.median(vals))} [{f(min(vals), 0)}-{f(max(vals), 0)}]"
                                 if k in procs else "")
                sums = [sum(r.chunk_us(k) for k in procs) for r in rs]
                cl = [r.chunk_us("client") for r in rs]
                print(f"| {name} | {conc} | " + " | ".join(cells)
                      + (f" | {f(statistics.median(sums))} [{f(min(sums), 0)}-{f(max(sums), 0)}]" if procs else " | ")
                      + f" | {f(statistics.median(cl))} [{f(min(cl), 0)}-{f(max(cl), 0)}] |")

    print("\n### Non-streamed chats at concurrency 16\n")
    print("| path | requests | requests/s | ratio to direct | CPU per request (ms): " + " | ".join(VEIL_PROCS)
          + " | sum | client (ms) |")
    print("|---|--:|--:|--:|" + "--:|" * (len(VEIL_PROCS) + 2))
    dr = chat_res["direct"]
    chat_cpu: dict[str, float] = {}
    client_ms: dict[str, float] = {}
    for name, _, _ in paths:
        r = chat_res[name]
        rps = r.streams / r.wall if r.wall else float("nan")
        per = {k: r.cpu.get(k, 0.0) / max(r.streams, 1) * 1e3 for k in VEIL_PROCS}
        chat_cpu[name] = sum(per.values())
        client_ms[name] = r.client_cpu / max(r.streams, 1) * 1e3
        chat_cells = " | ".join(f(per[k], 3) if name != "direct" and k in r.cpu else "" for k in VEIL_PROCS)
        print(f"| {name} | {r.streams} | {f(rps, 0)} | {f(rps / (dr.streams / dr.wall), 3)} | {chat_cells} | "
              f"{f(chat_cpu[name], 3) if name != 'direct' else ''} | {f(client_ms[name], 3)} |")
    if args.transport:
        print("\n### Client path: veil proxy vs the in-process transport (client side only: the proxy process plus "
              "this process's aiohttp client, against this process with OhttpClient; minus direct's client)\n")
        print("| chain | concurrent streams | CPU per chunk, veil proxy path (µs) | in-process transport (µs) "
              "| transport / proxy |")
        print("|---|--:|--:|--:|--:|")
        for c in chains:
            tname = f"{c.name}/transport"
            for conc in concs:
                base = res["direct"][conc].client_cpu / max(res["direct"][conc].tokens, 1) * 1e6
                px = rows[c.name][conc]["cpu_chunk_us_proxy"] + rows[c.name][conc]["cpu_chunk_us_client"] - base
                tr = rows[tname][conc]["cpu_chunk_us_client"] - base
                print(f"| {c.name} | {conc} | {f(px)} | {f(tr)} | {f(tr / px, 2) if px > 0 else 'n/a'} |")
            proxy_ms = chat_res[c.name].cpu.get("proxy", 0.0) / max(chat_res[c.name].streams, 1) * 1e3
            px_r = proxy_ms + client_ms[c.name] - client_ms["direct"]
            tr_r = client_ms[tname] - client_ms["direct"]
            print(f"| {c.name} | non-streamed chat (ms per request) | {f(px_r, 3)} | {f(tr_r, 3)} | "
                  f"{f(tr_r / px_r, 2) if px_r > 0 else 'n/a'} |")

    print()
    for c in chains:
        targets = []
        r16, r1 = rows[c.name].get(16), rows[c.name].get(1)
        if r16:
            targets.append(Target(f"[{c.name}] 16 streams: tokens/s >= {TARGET_TPS_RATIO_16} of direct",
                                  r16["tps_ratio"] >= TARGET_TPS_RATIO_16, f(r16["tps_ratio"], 3)))
            targets.append(Target(f"[{c.name}] 16 streams: added TTFT p50 <= {TARGET_ADDED_TTFT_16_MS} ms",
                                  r16["added_ttft_ms"] <= TARGET_ADDED_TTFT_16_MS, f"{r16['added_ttft_ms']:+.1f} ms"))
        if r1:
            targets.append(Target(f"[{c.name}] 1 stream: added TTFT p50 <= {TARGET_ADDED_TTFT_1_MS} ms",
                                  r1["added_ttft_ms"] <= TARGET_ADDED_TTFT_1_MS, f"{r1['added_ttft_ms']:+.1f} ms"))
        if r16:
            for k in VEIL_PROCS:
                v = r16[f"cpu_chunk_us_{k}"]
                targets.append(Target(f"[{c.name}] {k}: CPU per streamed chunk <= {TARGET_CPU_PER_CHUNK_US} µs (16 streams)",
                                      v <= TARGET_CPU_PER_CHUNK_US, f"{v:.1f} µs"))
        targets.append(Target(f"[{c.name}] CPU per non-streamed request, three processes summed <= "
                              f"{TARGET_CPU_PER_REQUEST_MS} ms", chat_cpu[c.name] <= TARGET_CPU_PER_REQUEST_MS,
                              f"{chat_cpu[c.name]:.3f} ms"))
        sat = [conc for conc in concs if rows[c.name][conc]["tps_ratio"] < 0.9]
        targets.append(Target(f"[{c.name}] saturation (tokens/s ratio < 0.9)", True,
                              f"first at {sat[0]} streams" if sat else f"not reached up to {concs[-1]} streams"))
        for t in targets:
            print(t.line())
    if profile_text:
        print(f"\n### py-spy profile of {chains[0].name} at 16 concurrent {args.profile_kind}s ({args.profile_seconds:.0f} s)\n")
        print("```\n" + profile_text + "\n```")
    if failures:
        print(f"\nFAILED requests: {failures}")
    if args.json:
        args.json.write_text(json.dumps({"label": args.label, "rows": rows, "chat_cpu_ms": chat_cpu,
                                         "chunk_us_per_round": rounds_json}, indent=1))
    if args.plot:
        title = (f"added TTFT p50 vs direct, {args.tokens} tokens at {args.token_delay * 1e3:.0f} ms/token "
                 f"({datetime.now(timezone.utc):%Y-%m-%d}, shared 2-core VM)")
        msg = write_plot(Path(args.plot), rows, args.compare, title)
        print(msg or f"plot: {args.plot}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--token-delay", type=float, default=0.01)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, default=16, help="streams per path per round at the lowest concurrency")
    p.add_argument("--chats", type=int, default=200, help="non-streamed chats per path per round")
    p.add_argument("--client", choices=("raw", "sdk"), default="raw")
    p.add_argument("--transport", action="store_true",
                   help="also a path per chain with the in-process client (proxy.transport.OhttpClient, what "
                        "VeilTransport runs) straight to its relay, and the client side of both compared")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=DIR[@GATEWAY ARGS]")
    p.add_argument("--gateway-args", default="", help="extra gateway arguments for the default chain")
    p.add_argument("--no-default", action="store_true", help="only the --variant chains")
    p.add_argument("--json", type=Path)
    p.add_argument("--label", default="")
    p.add_argument("--plot", default=str(ROOT / "docs" / "bench_concurrency.png"))
    p.add_argument("--compare", type=Path, action="append", default=[])
    p.add_argument("--profile", type=Path)
    p.add_argument("--profile-seconds", type=float, default=12.0)
    p.add_argument("--profile-kind", choices=("stream", "chat"), default="stream",
                   help="what load runs while profiling: 16 streams, or non-streamed chats at concurrency 16")
    args = p.parse_args(argv)
    chains = [] if args.no_default else [Chain("chain", ROOT, shlex.split(args.gateway_args))]
    for v in args.variant:
        name, _, rest = v.partition("=")
        root, _, gw = rest.partition("@")
        chains.append(Chain(name, Path(root).resolve() if root else ROOT, shlex.split(gw)))
    info = machine_info("aiohttp", "uvloop")
    print(f"# {command_line(__file__, sys.argv[1:] if argv is None else argv)}")
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; " + "; ".join(f"{k} {v}" for k, v in info.items())
          + f"; loadavg at start {os.getloadavg()[0]:.2f}")
    env: dict[str, str] = {}
    procs: list[Proc] = []
    try:
        port = free_port()
        engine = start_process([sys.executable, bench_chain.__file__, "--_serve-echo", str(port), "--token-delay",
                                str(args.token_delay)], port, name="engine", timeout=60.0, env=env, **BENCH_PROC)
        procs.append(engine)
        for c in chains:
            try:
                start_chain(c, port, env)
            finally:
                procs += list(c.procs.values())
        rc = asyncio.run(bench(args, engine, chains))
        print(f"# loadavg at end {os.getloadavg()[0]:.2f}")
        return rc
    finally:
        stop_all(procs, remove_logs=True)


if __name__ == "__main__":
    sys.exit(main())
