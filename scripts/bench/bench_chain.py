#!/usr/bin/env python3
"""What the privacy layer costs: the same chats direct to the engine and through Veil, side by side, in one run.

The script starts every piece itself on loopback (subprocesses on free ports) and measures five paths:

* ``direct``      aiohttp client -> engine (the baseline for the in-process OHTTP paths);
* ``direct-sdk``  official ``openai`` SDK -> engine (the baseline for the whole chain: same client library);
* ``gateway``     ``proxy.transport.OhttpClient`` in this process -> ``veil gateway`` -> engine;
* ``relay``       ``OhttpClient`` in this process -> ``veil relay`` -> ``veil gateway`` -> engine;
* ``chain-raw``   aiohttp client -> ``veil proxy`` -> ``veil relay`` -> ``veil gateway`` -> engine (the same chain with
  a light client: the SDK costs ~2 ms of CPU per request on the same cores, which slows everything else down);
* ``chain``       ``openai`` SDK -> ``veil proxy`` -> ``veil relay`` -> ``veil gateway`` -> engine.

Engines (``--engine``):

* ``echo``: the gateway runs ``--engine echo``. The direct baseline is the same ``EchoEngine`` behind the smallest
  plain aiohttp HTTP server, started by this script in a subprocess (``--_serve-echo``, hidden). It is kept out of
  ``veil gateway`` on purpose: a gateway binary with a plaintext OpenAI endpoint would be a foot-gun inside a TEE.
  Both run with the same ``--echo-token-delay`` (``--token-delay``, default 1 ms: each token leaves separately,
  as from a fast model).
* ``vllm``: the script starts vLLM's OpenAI server itself with exactly the command and environment of
  ``enclave/engines/vllm.py`` (``VllmEngine.command()`` and ``CPU_ENV``), and the gateway runs
  ``--engine upstream --upstream-url`` to that same process, so every path hits the same engine process. Direct
  requests carry a fresh random ``cache_salt`` each, as the gateway adds one to every request it forwards, so the
  engine does the same work on every path.

Per path, interleaved in rounds (the order rotates each round, so drift and noise hit every path alike):

* short non-stream chats: latency at concurrency 1, requests/s at concurrency 16;
* streams: time to first token (first non-empty content delta) and inter-token latency (p50, p99) at
  concurrency 1; tokens/s (usage.completion_tokens / wall time) at concurrency 1, 8 and 64;
* CPU seconds of every process (``/proc/<pid>/stat`` utime + stime, before and after each phase), per request,
  and per streamed chunk (the slope between streams of T and of 4 tokens at concurrency 8);
* RSS of gateway + relay + proxy (``/proc/<pid>/status`` VmRSS), and with ``--memory-run N`` its growth over N
  more requests through the whole chain.

Targets (from the issue) are printed as PASS/MISS lines. A benchmark, not a test: the exit status is 0 unless
something failed (an error response counts as a failure).

Usage::

    scripts/bench/bench_chain.py [--engine echo|vllm] [--quick] [--rounds N] [--memory-run N] [--json PATH]
                           [--plot PATH] [--loop default|asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final, Protocol

from _bench_env import prepare

ROOT = prepare(__file__, 'aiohttp', 'openai')

import aiohttp
import orjson
from _common import (RELAY_UNCAPPED, Target, command_line, cpu_seconds, machine_info as base_machine_info, pct, pss_mb, rss_mb,
                     tree_cpu_seconds)

from tests.harness import Proc, free_port, start_process, start_veil, stop_all

PERF = time.perf_counter
JSON_HEADERS: Final = {"Content-Type": "application/json"}
CHAT_PATH: Final = "/v1/chat/completions"
VEIL_PROCS: Final = ("gateway", "relay", "proxy")
ALL_PROCS: Final = ("client", "engine", *VEIL_PROCS)
SHORT_TOKENS: Final = 4

# Targets (the issue).
TARGET_CPU_PER_REQUEST_MS: Final = 1.0
TARGET_CPU_PER_CHUNK_US: Final = 30.0
TARGET_TOKENS_RATIO: Final = 0.97
TARGET_ADDED_TTFT_MS: Final = 2.0
TARGET_RSS_MB: Final = 150.0
MEMORY_GROWTH_TOLERANCE_MB: Final = 1.0


# ---------------------------------------------------------------------------------------------------------------
# Processes


#: Where the Veil processes' code comes from (``--veil-root``: another checkout, for before/after comparisons).
VEIL_ROOT: Path = ROOT
#: How every process of the benchmark is started: it dies with this script and gets 20 s to stop.
BENCH_PROC: Final[dict[str, Any]] = {"die_with_parent": True, "stop_timeout": 20.0, "interval": 0.2}


def veil(name: str, args: list[str], port: int, env: dict[str, str], cpus: set[int] | None = None) -> Proc:
    if VEIL_ROOT != ROOT:
        env = {**env, "PYTHONPATH": str(VEIL_ROOT)}
    return start_veil(args, port, name=name, timeout=60.0, env=env, cpus=cpus, cwd=VEIL_ROOT, **BENCH_PROC)


# ---------------------------------------------------------------------------------------------------------------
# The direct echo server (hidden mode of this script)


def serve_echo(port: int, token_delay: float) -> None:
    """The smallest plain OpenAI HTTP server around ``EchoEngine``: the echo engine's direct baseline."""
    from aiohttp import web

    from enclave.engines import EchoEngine

    engine = EchoEngine(token_delay=token_delay)

    async def api(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        stream = False
        if request.method == "POST" and b'"stream"' in body:
            obj = orjson.loads(body)
            stream = isinstance(obj, dict) and obj.get("stream") is True
        resp = await engine.call(request.method, request.path, body or None, stream=stream)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in resp.headers}
        if resp.events is None:
            return web.Response(status=resp.status, body=resp.body, headers=headers)
        out = web.StreamResponse(status=resp.status, headers=headers)
        out.enable_chunked_encoding()
        await out.prepare(request)
        async for event in resp.events:
            await out.write(event)
        await out.write_eof()
        return out

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/healthz", healthz)
    app.router.add_route("*", "/v1/{tail:.*}", api)
    # The same event loop as the Veil servers get (veil_cli's choice, from VEIL_EVENT_LOOP), for a fair baseline.
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import veil_cli

        new_loop = getattr(veil_cli, "new_event_loop", None)
        if new_loop is not None:
            loop = new_loop()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


# ---------------------------------------------------------------------------------------------------------------
# Clients: one per kind of path, all with the same two calls


@dataclass
class StreamSample:
    ttft: float  # seconds to the first non-empty content delta
    gaps: list[float]  # seconds between consecutive content deltas
    tokens: int  # usage.completion_tokens
    total: float


class BenchError(Exception):
    pass


class Client(Protocol):
    async def chat(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def stream(self, body: dict[str, Any]) -> StreamSample: ...

    async def close(self) -> None: ...


class SseTimer:
    """Parses SSE bytes as they arrive; records when each content delta arrived and the usage."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.buf = b""
        self.times: list[float] = []
        self.tokens = -1
        self.done = False

    def feed(self, piece: bytes, now: float) -> None:
        self.buf += piece
        while (i := self.buf.find(b"\n\n")) >= 0:
            event, self.buf = self.buf[:i], self.buf[i + 2:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.done = True
                    continue
                obj = orjson.loads(data)
                if "error" in obj:
                    raise BenchError(f"stream error event: {obj['error']}")
                for ch in obj.get("choices") or ():
                    if (ch.get("delta") or {}).get("content"):
                        self.times.append(now)
                if obj.get("usage"):
                    self.tokens = int(obj["usage"]["completion_tokens"])

    def sample(self, end: float) -> StreamSample:
        if not self.done or not self.times:
            raise BenchError("stream ended without [DONE] or without content")
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return StreamSample(self.times[0] - self.t0, gaps, self.tokens, end - self.t0)


class RawClient:
    """aiohttp straight to an OpenAI server."""

    def __init__(self, base: str) -> None:
        self.url = base + CHAT_PATH
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.url, data=orjson.dumps(body), headers=JSON_HEADERS) as r:
            data = await r.read()
            if r.status != 200:
                raise BenchError(f"HTTP {r.status}: {data[:200]!r}")
        out: dict[str, Any] = orjson.loads(data)
        return out

    async def stream(self, body: dict[str, Any]) -> StreamSample:
        t0 = PERF()
        timer = SseTimer(t0)
        async with self.session.post(self.url, data=orjson.dumps(body), headers=JSON_HEADERS) as r:
            if r.status != 200:
                raise BenchError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
            async for piece in r.content.iter_any():
                timer.feed(piece, PERF())
        return timer.sample(PERF())

    async def close(self) -> None:
        await self.session.close()


class OhttpPathClient:
    """``proxy.transport.OhttpClient`` in this process, to a gateway directly or through the relay."""

    def __init__(self, url: str, keys_url: str | None = None, attestation_url: str | None = None) -> None:
        from proxy.transport import OhttpClient
        from proxy.verify import make_verifier

        try:  # as VeilTransport builds it: the OHTTP requests on a hop.Pool (checkouts from before hop/: aiohttp)
            import hop

            pool: Any = hop.Pool(connect_timeout=10, read_timeout=600)
        except ImportError:
            pool = None
        extra = {"pool": pool} if pool is not None else {}
        self.client = OhttpClient(url, verifier=make_verifier(allow_simulated=True), keys_url=keys_url,
                                  attestation_url=attestation_url, **extra)

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        inner = await self.client.request("POST", CHAT_PATH, [("content-type", "application/json")], orjson.dumps(body))
        if inner.status != 200:
            raise BenchError(f"inner HTTP {inner.status}: {inner.body[:200]!r}")
        out: dict[str, Any] = orjson.loads(inner.body)
        return out

    async def stream(self, body: dict[str, Any]) -> StreamSample:
        t0 = PERF()
        timer = SseTimer(t0)
        inner = await self.client.request("POST", CHAT_PATH, [("content-type", "application/json")], orjson.dumps(body),
                                          chunked=True)
        if inner.status != 200 or inner.pieces is None:
            raise BenchError(f"inner HTTP {inner.status}")
        async for piece in inner.pieces:
            timer.feed(piece, PERF())
        return timer.sample(PERF())

    async def close(self) -> None:
        await self.client.close()


class SdkClient:
    """The official ``openai`` SDK (``AsyncOpenAI``)."""

    def __init__(self, base: str) -> None:
        import openai

        self.client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-bench-unused", max_retries=0)

    @staticmethod
    def _split(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        known = {"model", "messages", "max_tokens", "temperature", "stream", "stream_options"}
        return {k: v for k, v in body.items() if k in known}, {k: v for k, v in body.items() if k not in known}

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        kw, extra = self._split(body)
        r = await self.client.chat.completions.create(**kw, extra_body=extra or None)
        return {"choices": [{"message": {"content": r.choices[0].message.content}}],
                "usage": {"completion_tokens": r.usage.completion_tokens if r.usage else -1}}

    async def stream(self, body: dict[str, Any]) -> StreamSample:
        kw, extra = self._split(body)
        t0 = PERF()
        times: list[float] = []
        tokens = -1
        stream = await self.client.chat.completions.create(**kw, extra_body=extra or None)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(PERF())
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        end = PERF()
        if not times:
            raise BenchError("stream without content")
        return StreamSample(times[0] - t0, [b - a for a, b in zip(times, times[1:])], tokens, end - t0)

    async def close(self) -> None:
        await self.client.close()


# ---------------------------------------------------------------------------------------------------------------
# Workload


@dataclass(frozen=True)
class Workload:
    engine: str
    model: str
    chat_tokens: int
    stream_tokens: int
    direct_salt: bool

    def chat_body(self, direct: bool) -> dict[str, Any]:
        if self.engine == "echo":
            return {"model": self.model, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        body: dict[str, Any] = {
            "model": self.model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": self.chat_tokens, "temperature": 0.0, "ignore_eos": True,
        }
        if direct and self.direct_salt:
            body["cache_salt"] = os.urandom(18).hex()
        return body

    def stream_body(self, tokens: int, direct: bool) -> dict[str, Any]:
        base: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        if self.engine == "echo":
            text = " ".join(f"w{i}" for i in range(tokens))
            return {**base, "messages": [{"role": "user", "content": text}]}
        body = {**base, "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
                "max_tokens": tokens, "temperature": 0.0, "ignore_eos": True}
        if direct and self.direct_salt:
            body["cache_salt"] = os.urandom(18).hex()
        return body

    def check_chat(self, out: dict[str, Any]) -> None:
        content = out["choices"][0]["message"]["content"]
        if self.engine == "echo" and content != "What is the capital of France?":
            raise BenchError(f"unexpected echo: {content!r}")
        if self.engine == "vllm" and out["usage"]["completion_tokens"] != self.chat_tokens:
            raise BenchError(f"unexpected token count {out['usage']}")


@dataclass(frozen=True)
class Phase:
    key: str
    kind: str  # "chat" or "stream"
    concurrency: int
    count: int
    tokens: int = 0


def phases_for(engine: str, quick: bool, stream_tokens: int) -> list[Phase]:
    if engine == "echo":
        n = {"chat1": 300, "chat16": 3000, "s1": 40, "s8": 240, "s64": 640} if not quick else \
            {"chat1": 80, "chat16": 600, "s1": 12, "s8": 48, "s64": 128}
    else:
        n = {"chat1": 8, "chat16": 32, "s1": 6, "s8": 16, "s64": 64} if not quick else \
            {"chat1": 3, "chat16": 16, "s1": 3, "s8": 8, "s64": 64}
    return [
        Phase("chat-c1", "chat", 1, n["chat1"]),
        Phase("chat-c16", "chat", 16, n["chat16"]),
        Phase("stream-c1", "stream", 1, n["s1"], stream_tokens),
        Phase("stream-c8", "stream", 8, n["s8"], stream_tokens),
        Phase("stream-short-c8", "stream", 8, n["s8"], SHORT_TOKENS),
        Phase("stream-c64", "stream", 64, n["s64"], stream_tokens),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Measurement


@dataclass
class PhaseResult:
    count: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    cpu: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in ALL_PROCS})
    errors: int = 0
    round_rates: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.count / self.wall if self.wall else float("nan")

    @property
    def tps(self) -> float:
        return self.tokens / self.wall if self.wall else float("nan")

    def cpu_per(self, proc: str) -> float:
        return self.cpu[proc] / self.count if self.count else float("nan")

    def to_json(self) -> dict[str, Any]:
        ms = 1000.0
        return {
            "count": self.count, "wall_s": self.wall, "errors": self.errors, "requests_per_s": self.rps,
            "tokens": self.tokens, "tokens_per_s": self.tps, "round_rates": self.round_rates,
            "latency_ms": {"p50": pct(self.latencies, 50) * ms, "p99": pct(self.latencies, 99) * ms},
            "ttft_ms": {"p50": pct(self.ttfts, 50) * ms, "p99": pct(self.ttfts, 99) * ms},
            "itl_ms": {"p50": pct(self.gaps, 50) * ms, "p99": pct(self.gaps, 99) * ms},
            "cpu_s": self.cpu,
            "cpu_us_per_request": {p: self.cpu_per(p) * 1e6 for p in ALL_PROCS},
        }


@dataclass
class PathSpec:
    key: str
    label: str
    baseline: str | None
    client: Client
    direct: bool
    on_path: tuple[str, ...]


async def run_phase(path: PathSpec, phase: Phase, work: Workload, pids: dict[str, int], res: PhaseResult) -> None:
    done = 0
    latencies: list[float] = []
    samples: list[StreamSample] = []
    errors: list[str] = []

    async def one() -> None:
        if phase.kind == "chat":
            t0 = PERF()
            out = await path.client.chat(work.chat_body(path.direct))
            latencies.append(PERF() - t0)
            work.check_chat(out)
        else:
            s = await path.client.stream(work.stream_body(phase.tokens, path.direct))
            if s.tokens != phase.tokens:
                raise BenchError(f"stream of {s.tokens} tokens, wanted {phase.tokens}")
            samples.append(s)
            latencies.append(s.total)

    async def worker() -> None:
        nonlocal done
        while done < phase.count:
            done += 1
            try:
                await one()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}")

    before = {name: tree_cpu_seconds(pid) if name == "engine" else cpu_seconds(pid) for name, pid in pids.items()}
    t0 = PERF()
    await asyncio.gather(*(worker() for _ in range(phase.concurrency)))
    wall = PERF() - t0
    after = {name: tree_cpu_seconds(pid) if name == "engine" else cpu_seconds(pid) for name, pid in pids.items()}
    for name in pids:
        res.cpu[name] += after[name] - before[name]
    res.count += phase.count
    res.wall += wall
    res.latencies += latencies
    res.errors += len(errors)
    tokens = sum(s.tokens for s in samples)
    res.tokens += tokens
    for s in samples:
        res.ttfts.append(s.ttft)
        res.gaps += s.gaps
    res.round_rates.append((tokens if phase.kind == "stream" else phase.count) / wall)
    if not path.direct:
        GATEWAY_REQUESTS.append((time.monotonic(), phase.count))
    if errors:
        print(f"  ! {path.key} {phase.key}: {len(errors)} errors, first: {errors[0]}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Machine and report


def machine_info() -> dict[str, Any]:
    return {
        **base_machine_info("aiohttp", "uvloop", "openai", "orjson"),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "loadavg_start": os.getloadavg(),
    }


def f1(x: float) -> str:
    if math.isnan(x):
        return "–"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def ratio(x: float, base: float) -> str:
    if math.isnan(x) or math.isnan(base) or base == 0:
        return "–"
    return f"{x / base:.2f}x"


Results = dict[str, dict[str, PhaseResult]]


def throughput_table(paths: list[PathSpec], r: Results) -> str:
    lines = ["| path | vs | chat req/s (c=16) | ratio | tok/s c=1 | ratio | tok/s c=8 | ratio | tok/s c=64 | ratio |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for p in paths:
        b = r[p.baseline] if p.baseline else None
        cells = [p.label, p.baseline or "(baseline)"]
        x = r[p.key]["chat-c16"].rps
        cells += [f1(x), ratio(x, b["chat-c16"].rps) if b else "1.00x"]
        for ph in ("stream-c1", "stream-c8", "stream-c64"):
            x = r[p.key][ph].tps
            cells += [f1(x), ratio(x, b[ph].tps) if b else "1.00x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latency_table(paths: list[PathSpec], r: Results) -> str:
    ms = 1000.0
    lines = ["| path | vs | chat p50 ms | chat p99 ms | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms "
             "| ITL p50 ms | ITL p99 ms |", "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for p in paths:
        c, s = r[p.key]["chat-c1"], r[p.key]["stream-c1"]
        added = "–"
        if p.baseline:
            added = f1((pct(s.ttfts, 50) - pct(r[p.baseline]["stream-c1"].ttfts, 50)) * ms)
        lines.append(
            f"| {p.label} | {p.baseline or '(baseline)'} | {f1(pct(c.latencies, 50) * ms)} | {f1(pct(c.latencies, 99) * ms)} "
            f"| {f1(pct(s.ttfts, 50) * ms)} | {f1(pct(s.ttfts, 99) * ms)} | {added} "
            f"| {f1(pct(s.gaps, 50) * ms)} | {f1(pct(s.gaps, 99) * ms)} |"
        )
    return "\n".join(lines)


def chunk_slope(r: Results, path: str, proc: str, tokens: int) -> float:
    """CPU per streamed chunk: (CPU per stream of T tokens - per stream of 4 tokens) / (T - 4)."""
    long_, short = r[path]["stream-c8"], r[path]["stream-short-c8"]
    return (long_.cpu_per(proc) - short.cpu_per(proc)) / (tokens - SHORT_TOKENS)


def cpu_table(paths: list[PathSpec], r: Results, tokens: int) -> str:
    lines = ["| path | what | client | engine | gateway | relay | proxy | Veil (gw+relay+proxy) |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    for p in paths:
        res = r[p.key]["chat-c16"]
        vals = [res.cpu_per(x) * 1e6 for x in ALL_PROCS]
        lines.append(f"| {p.label} | µs CPU per non-stream request (c=16) | "
                     + " | ".join(f1(v) for v in vals) + f" | {f1(sum(vals[2:]))} |")
    for p in paths:
        vals = [chunk_slope(r, p.key, x, tokens) * 1e6 for x in ALL_PROCS]
        lines.append(f"| {p.label} | µs CPU per streamed chunk (slope, c=8) | "
                     + " | ".join(f1(v) for v in vals) + f" | {f1(sum(vals[2:]))} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Memory


#: (monotonic time, requests) of every batch of requests that reached the gateway: the replay cache's contents.
GATEWAY_REQUESTS: list[tuple[float, int]] = []
#: How long the gateway remembers a request (``ReplayCache``: twice the default 60 s replay window).
REPLAY_RETENTION_S: Final = 120.0


def replay_cache_mb(entries: int) -> float:
    """The memory (tracemalloc) of the gateway's replay cache holding ``entries`` requests, table resizes included."""
    import tracemalloc

    from enclave.gateway.replay import ReplayCache

    cache = ReplayCache(60.0)
    tracemalloc.start()
    snap0 = tracemalloc.get_traced_memory()[0]
    for _ in range(entries):
        # each request's enc made here and dropped, as the gateway drops it: what the cache keeps of it is counted
        # (X-Wing's 1,120 bytes, the default KEM's; the cache keeps a 16-byte digest)
        cache.seen(os.urandom(1120), now=0.0)
    used = tracemalloc.get_traced_memory()[0] - snap0
    tracemalloc.stop()
    return used / 2**20


async def memory_run(
    n: int, client: Client, work: Workload, pids: dict[str, int], samples_out: list[dict[str, float]]
) -> int:
    """``n`` requests through the whole chain at concurrency 16 (every 10th a 16-token stream); RSS sampled."""
    step = max(1, n // 10)
    done = 0
    errors = 0

    def sample() -> None:
        row = {"requests": float(done)}
        row.update({name: rss_mb(pids[name]) for name in VEIL_PROCS})
        samples_out.append(row)

    sample()

    async def worker() -> None:
        nonlocal done, errors
        while done < n:
            done += 1
            i = done
            try:
                if i % 10 == 0:
                    await client.stream(work.stream_body(16, False))
                else:
                    work.check_chat(await client.chat(work.chat_body(False)))
            except Exception:  # noqa: BLE001 - counted
                errors += 1
            if i % step == 0:
                sample()
                GATEWAY_REQUESTS.append((time.monotonic(), step))

    await asyncio.gather(*(worker() for _ in range(16)))
    sample()
    return errors


# ---------------------------------------------------------------------------------------------------------------
# Plot


def write_plot(path: Path, paths: list[PathSpec], r: Results, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'); no plot written"
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = [
        ("non-stream chat latency (c=1)", "chat-c1", "latencies"),
        ("time to first token (stream, c=1)", "stream-c1", "ttfts"),
        ("inter-token latency (stream, c=1)", "stream-c1", "gaps"),
    ]
    styles = {"direct": "-", "direct-sdk": "--", "gateway": "-", "relay": "-", "chain-raw": ":", "chain": "-"}
    for ax, (name, phase, attr) in zip(axes, panels):
        for p in paths:
            vals = sorted(v * 1000.0 for v in getattr(r[p.key][phase], attr) if v > 0)
            if not vals:
                continue
            ys = [(i + 1) / len(vals) for i in range(len(vals))]
            ax.step(vals, ys, where="post", linestyle=styles.get(p.key, "-"), label=p.label, linewidth=1.6)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms (log scale)")
        ax.set_ylabel("fraction of requests ≤ x")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylim(0, 1.01)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Main


@dataclass
class Setup:
    procs: list[Proc] = field(default_factory=list)
    engine_base: str = ""
    model: str = ""

    def by_name(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def stop(self) -> None:
        stop_all(self.procs, remove_logs=True)


def start_all(args: argparse.Namespace, env: dict[str, str]) -> Setup:
    setup = Setup()
    engine_cpus: set[int] | None = None
    veil_cpus: set[int] | None = None
    if getattr(args, "pin_engine", False):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin-engine needs at least 2 CPUs")
        engine_cpus, veil_cpus = {cpus[-1]}, set(cpus[:-1])
        os.sched_setaffinity(0, veil_cpus)  # this process (the clients) too
    try:
        if args.engine == "echo":
            port = free_port()
            setup.procs.append(start_process(
                [sys.executable, __file__, "--_serve-echo", str(port), "--token-delay", str(args.token_delay)], port,
                name="engine", timeout=60.0, env=env, **BENCH_PROC))
            setup.model = "echo"
            gw_engine = ["--engine", "echo", "--echo-token-delay", str(args.token_delay)]
        else:
            from enclave.cli import DEFAULT_MODEL_DIR, REPO
            from enclave.engines.vllm import CPU_ENV, VllmEngine

            port = free_port()
            eng = VllmEngine(python=args.engine_python or str(REPO / ".venv-engine" / "bin" / "python"),
                             model=args.model or DEFAULT_MODEL_DIR, served_model_name="SmolLM2-135M-Instruct", port=port)
            print("starting vLLM (the same command and environment as enclave/engines/vllm.py) ...", file=sys.stderr,
                  flush=True)
            engine_env = dict(CPU_ENV)
            if engine_cpus:
                # vLLM binds its compute threads itself ("auto"); keep it on the engine's CPU.
                engine_env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, sorted(engine_cpus)))
            setup.procs.append(start_process(eng.command(), port, name="engine", health="/health", timeout=900.0,
                                             env=engine_env, group=True, cpus=engine_cpus,
                                             stop_signal=signal.SIGTERM, **BENCH_PROC))
            setup.model = "SmolLM2-135M-Instruct"
            gw_engine = ["--engine", "upstream", "--upstream-url", f"http://127.0.0.1:{port}"]
        setup.engine_base = setup.by_name("engine").base
        gp, rp, pp = free_port(), free_port(), free_port()
        setup.procs.append(veil("gateway", ["gateway", *gw_engine, "--listen", f"127.0.0.1:{gp}", "--log-level", "warning"],
                                gp, env, veil_cpus))
        # --rate-per-minute and the per-address caps: every benchmark request comes from 127.0.0.1; the defaults
        # (600/min, 32 in flight, 128 connections per address) would 429 them. Through the environment, so an older
        # checkout (--veil-root) without those options still starts.
        setup.procs.append(veil("relay", ["relay", "--listen", f"127.0.0.1:{rp}", "--rate-per-minute", "1000000000",
                                          "--gateway", f"gw=http://127.0.0.1:{gp}/.well-known/ohttp-gateway",
                                          "--log-level", "warning"], rp, env | RELAY_UNCAPPED, veil_cpus))
        setup.procs.append(veil("proxy", ["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                                          "--insecure-allow-simulated", "--log-level", "warning"], pp, env, veil_cpus))
    except BaseException:
        setup.stop()
        raise
    return setup


async def bench(args: argparse.Namespace, setup: Setup, info: dict[str, Any]) -> int:
    gw, relay, proxy = setup.by_name("gateway"), setup.by_name("relay"), setup.by_name("proxy")
    work = Workload(args.engine, setup.model, chat_tokens=8, stream_tokens=args.stream_tokens,
                    direct_salt=args.engine == "vllm")
    well_known = gw.base + "/.well-known/ohttp-gateway"
    paths = [
        PathSpec("direct", "direct", None, RawClient(setup.engine_base), True, ("engine",)),
        PathSpec("direct-sdk", "direct (SDK)", None, SdkClient(setup.engine_base), True, ("engine",)),
        PathSpec("gateway", "gateway", "direct",
                 OhttpPathClient(well_known, keys_url=well_known,
                                 attestation_url=gw.base + "/.well-known/veil-attestation"), False, ("gateway",)),
        PathSpec("relay", "relay + gateway", "direct", OhttpPathClient(relay.base + "/gw"), False, ("relay", "gateway")),
        PathSpec("chain-raw", "proxy + relay + gateway (aiohttp)", "direct", RawClient(proxy.base), False,
                 ("proxy", "relay", "gateway")),
        PathSpec("chain", "proxy + relay + gateway (SDK)", "direct-sdk", SdkClient(proxy.base), False,
                 ("proxy", "relay", "gateway")),
    ]
    pids = {p.name: p.pid for p in setup.procs}
    pids["client"] = os.getpid()
    phases = phases_for(args.engine, args.quick, args.stream_tokens)
    results: Results = {p.key: {ph.key: PhaseResult() for ph in phases} for p in paths}
    failures = 0
    try:
        print("warming up ...", file=sys.stderr, flush=True)
        for p in paths:
            for _ in range(3 if args.engine == "vllm" else 20):
                work.check_chat(await p.client.chat(work.chat_body(p.direct)))
            await p.client.stream(work.stream_body(SHORT_TOKENS, p.direct))
        rss_start = {name: rss_mb(pids[name]) for name in VEIL_PROCS}
        for rnd in range(args.rounds):
            for ph in phases:
                order = paths[rnd % len(paths):] + paths[: rnd % len(paths)]
                for p in order:
                    print(f"round {rnd + 1}/{args.rounds} {ph.key:16s} {p.key:10s} ...", file=sys.stderr, flush=True)
                    await run_phase(p, ph, work, pids, results[p.key][ph.key])
        failures += sum(r.errors for pr in results.values() for r in pr.values())
        rss_end = {name: rss_mb(pids[name]) for name in VEIL_PROCS}
        pss_end = {name: pss_mb(pids[name]) for name in VEIL_PROCS}
        mem_samples: list[dict[str, float]] = []
        mem_errors = 0
        if args.memory_run:
            print(f"memory run: {args.memory_run} requests through the whole chain ...", file=sys.stderr, flush=True)
            mem_errors = await memory_run(args.memory_run, paths[-1].client, work, pids, mem_samples)
            failures += mem_errors
    finally:
        for p in paths:
            await p.client.close()
    info["loadavg_end"] = os.getloadavg()

    # ---- report
    print()
    print(throughput_table(paths, results))
    print()
    print(latency_table(paths, results))
    print()
    print(cpu_table(paths, results, args.stream_tokens))
    print()
    print(f"RSS after warm-up (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in rss_start.items())
          + f"; after the phases: " + ", ".join(f"{k} {v:.1f}" for k, v in rss_end.items())
          + f"; sum {sum(rss_end.values()):.1f}")
    print(f"PSS after the phases (MB; shared library and interpreter pages divided among the processes): "
          + ", ".join(f"{k} {v:.1f}" for k, v in pss_end.items()) + f"; sum {sum(pss_end.values()):.1f}")
    targets: list[Target] = []
    ms = 1000.0
    if args.engine == "echo":
        direct_srv = results["direct"]["chat-c16"].cpu_per("engine") * ms
        for key, how in (("chain", "openai SDK"), ("chain-raw", "aiohttp client")):
            res = results[key]["chat-c16"]
            veil_req = sum(res.cpu_per(x) for x in VEIL_PROCS) * ms
            targets.append(Target(
                f"Veil CPU per non-stream request (proxy + relay + gateway, echo engine included; {how} at c=16, "
                f"{res.rps:.0f} req/s) under {TARGET_CPU_PER_REQUEST_MS:g} ms", veil_req < TARGET_CPU_PER_REQUEST_MS,
                f"{veil_req:.3f} ms (" + ", ".join(f"{x} {res.cpu_per(x) * ms:.3f}" for x in VEIL_PROCS)
                + f"); net of the direct echo server's {direct_srv:.3f} ms: {veil_req - direct_srv:.3f} ms"))
        gw_chunk = chunk_slope(results, "chain", "gateway", args.stream_tokens) * 1e6
        direct_chunk = chunk_slope(results, "direct", "engine", args.stream_tokens) * 1e6
        targets.append(Target(
            f"gateway CPU per streamed chunk under {TARGET_CPU_PER_CHUNK_US:g} µs", gw_chunk < TARGET_CPU_PER_CHUNK_US,
            f"{gw_chunk:.1f} µs (echo engine included; the direct echo server spends {direct_chunk:.1f} µs per chunk, "
            f"net {gw_chunk - direct_chunk:.1f} µs)"))
    else:
        for phk in ("stream-c1", "stream-c8"):
            x, b = results["chain"][phk].tps, results["direct-sdk"][phk].tps
            b2 = results["direct"][phk].tps
            targets.append(Target(
                f"tokens/s through the whole chain >= {TARGET_TOKENS_RATIO:.0%} of direct at c={phk.split('c')[-1]}",
                x >= TARGET_TOKENS_RATIO * b,
                f"{x:.1f} vs {b:.1f} tok/s (direct, same SDK) = {x / b:.3f}; vs direct aiohttp {b2:.1f} = {x / b2:.3f}"))
        added = (pct(results["chain"]["stream-c1"].ttfts, 50) - pct(results["direct-sdk"]["stream-c1"].ttfts, 50)) * ms
        direct_ttft = pct(results["direct"]["stream-c1"].ttfts, 50)
        added_gw = (pct(results["gateway"]["stream-c1"].ttfts, 50) - direct_ttft) * ms
        added_raw = (pct(results["chain-raw"]["stream-c1"].ttfts, 50) - direct_ttft) * ms
        targets.append(Target(
            f"added TTFT p50 (whole chain vs direct, same SDK) <= {TARGET_ADDED_TTFT_MS:g} ms",
            added <= TARGET_ADDED_TTFT_MS, f"{added:+.2f} ms (with an aiohttp client instead: whole chain "
            f"{added_raw:+.2f} ms, gateway alone {added_gw:+.2f} ms)"))
    rss_sum = sum(rss_end.values())
    targets.append(Target(f"RSS of gateway + relay + proxy under {TARGET_RSS_MB:g} MB (sum of VmRSS)",
                          rss_sum < TARGET_RSS_MB,
                          f"{rss_sum:.1f} MB (" + ", ".join(f"{k} {v:.1f}" for k, v in rss_end.items())
                          + f"); counting shared pages once (PSS): {sum(pss_end.values()):.1f} MB"))
    mem_json: dict[str, Any] = {}
    if args.memory_run and len(mem_samples) >= 3:
        first, last = mem_samples[1], mem_samples[-1]  # from the 10% mark: the first tenth warms pools and caches
        growth = {x: last[x] - first[x] for x in VEIL_PROCS}
        # By design the gateway remembers every request for 120 s (replay protection): an upper bound of what that
        # may add is the whole cache for the requests of the last 120 s, measured with the gateway's own class.
        now = time.monotonic()
        remembered = sum(n for t, n in GATEWAY_REQUESTS if t >= now - REPLAY_RETENTION_S)
        bound = replay_cache_mb(remembered)
        per_entry = bound * 2**20 / max(1, remembered)
        total_growth = sum(growth.values())
        print()
        print(f"Memory run: {args.memory_run} requests through the whole chain (c=16, every 10th a stream), "
              f"{mem_errors} errors; RSS MB:")
        print()
        print("| requests | gateway | relay | proxy | sum |")
        print("|--:|--:|--:|--:|--:|")
        for s in mem_samples:
            print(f"| {s['requests']:.0f} | {s['gateway']:.1f} | {s['relay']:.1f} | {s['proxy']:.1f} "
                  f"| {sum(s[x] for x in VEIL_PROCS):.1f} |")
        targets.append(Target(
            f"no RSS growth over the {args.memory_run}-request run (relay and proxy: none beyond "
            f"{MEMORY_GROWTH_TOLERANCE_MB:g} MB allocator slack; gateway: none beyond its replay cache, which by "
            f"design remembers every request for {REPLAY_RETENTION_S:g} s)",
            growth["relay"] <= MEMORY_GROWTH_TOLERANCE_MB and growth["proxy"] <= MEMORY_GROWTH_TOLERANCE_MB
            and growth["gateway"] <= bound + MEMORY_GROWTH_TOLERANCE_MB,
            f"{total_growth:+.2f} MB from request {first['requests']:.0f} to {last['requests']:.0f} ("
            + ", ".join(f"{k} {v:+.2f}" for k, v in growth.items()) + f"); the replay cache of the {remembered} "
            f"requests of the last {REPLAY_RETENTION_S:g} s takes {bound:.2f} MB ({per_entry:.0f} B each)"))
        mem_json = {"samples": mem_samples, "growth_mb": growth, "replay_bytes_per_entry": per_entry,
                    "replay_bound_mb": bound, "replay_entries": remembered, "errors": mem_errors}
        targets.append(Target("memory run without errors", mem_errors == 0, f"{mem_errors} errors"))
    print()
    for t in targets:
        print(t.line())
    if failures:
        print(f"ERRORS: {failures} requests failed (see stderr)")

    if args.plot:
        title = (f"Veil, {args.engine} engine: direct vs through Veil, c=1 "
                 f"({info['cpu']}, {info['usable_cores']} cores, {info['date']})")
        note = write_plot(Path(args.plot), paths, results, title)
        print(f"\nplot: {note or args.plot}")
    if args.json is not None:
        doc = {
            "machine": info, "engine": args.engine, "mode": "quick" if args.quick else "full", "rounds": args.rounds,
            "event_loop": os.environ.get("VEIL_EVENT_LOOP", "default"), "token_delay_s": args.token_delay,
            "stream_tokens": args.stream_tokens,
            "phases": [vars(ph) for ph in phases],
            "paths": [{"key": p.key, "label": p.label, "baseline": p.baseline} for p in paths],
            "results": {pk: {phk: r.to_json() for phk, r in pr.items()} for pk, pr in results.items()},
            "cpu_us_per_chunk": {p.key: {x: chunk_slope(results, p.key, x, args.stream_tokens) * 1e6 for x in ALL_PROCS}
                                 for p in paths},
            "rss_mb": {"after_warmup": rss_start, "after_phases": rss_end}, "pss_mb_after_phases": pss_end,
            "pin_engine": bool(args.pin_engine), "veil_root": str(VEIL_ROOT),
            "memory_run": mem_json,
            "targets": [{"name": t.name, "pass": t.passed, "detail": t.detail} for t in targets],
            "failures": failures,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--engine", choices=("echo", "vllm"), default="echo")
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run, noisier numbers)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per phase (default 2; quick 1)")
    parser.add_argument("--stream-tokens", type=int, default=None, help="tokens per stream (echo 64, vLLM 32)")
    parser.add_argument("--token-delay", type=float, default=0.001,
                        help="echo engine: seconds between streamed tokens (default 0.001)")
    parser.add_argument("--memory-run", type=int, default=None, metavar="N",
                        help="N more requests through the whole chain, RSS sampled (default 10000; quick 1000; 0 off)")
    parser.add_argument("--loop", choices=("default", "asyncio", "uvloop"), default="default",
                        help="event loop of the Veil servers and the echo server (VEIL_EVENT_LOOP); default: "
                             "veil's own choice")
    parser.add_argument("--pin-engine", action="store_true",
                        help="vLLM: run the engine on the last CPU and Veil and the clients on the others (as if the "
                             "engine computed on its own device); default: everything shares every CPU")
    parser.add_argument("--veil-root", type=Path, default=ROOT,
                        help="run gateway, relay and proxy from this checkout (before/after comparisons)")
    parser.add_argument("--engine-python", help="vLLM's Python (default .venv-engine/bin/python)")
    parser.add_argument("--model", help="vLLM model directory (default: the one scripts/setup-engine makes)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON to PATH")
    parser.add_argument("--plot", metavar="PATH", default=str(ROOT / "docs" / "bench_chain.png"),
                        help="latency CDF plot (PNG; default docs/bench_chain.png; '' for none)")
    parser.add_argument("--_serve-echo", dest="serve_echo", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo is not None:
        serve_echo(args.serve_echo, args.token_delay)
        return 0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.stream_tokens is None:
        args.stream_tokens = 64 if args.engine == "echo" else 32
    if args.stream_tokens <= SHORT_TOKENS:
        parser.error(f"--stream-tokens must be more than {SHORT_TOKENS}")
    if args.memory_run is None:
        args.memory_run = 1000 if args.quick else 10000
    global VEIL_ROOT
    VEIL_ROOT = args.veil_root.resolve()

    env: dict[str, str] = {}
    if args.loop != "default":
        env["VEIL_EVENT_LOOP"] = args.loop
        os.environ["VEIL_EVENT_LOOP"] = args.loop
    info = machine_info()
    print(f"# Veil chain benchmark ({args.engine} engine)")
    print()
    print(f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), {info['memory_gib']} GiB; "
          f"{info['python']}; aiohttp {info['aiohttp']}; uvloop {info['uvloop']}; openai {info['openai']}; "
          f"{info['platform']}; {info['date']}; load average at start {info['loadavg_start'][0]:.2f}")
    print(f"Mode: {'quick' if args.quick else 'full'}, {args.rounds} interleaved round(s); Veil event loop: "
          f"{os.environ.get('VEIL_EVENT_LOOP', 'default')}; streams of {args.stream_tokens} tokens"
          + (f", echo token delay {args.token_delay * 1000:g} ms" if args.engine == "echo" else "")
          + ("; engine pinned to the last CPU, Veil and clients to the others" if args.pin_engine else "")
          + (f"; Veil code from {VEIL_ROOT}" if VEIL_ROOT != ROOT else "")
          + "; command: " + command_line(__file__, argv if argv is not None else sys.argv[1:]),
          flush=True)
    t0 = time.perf_counter()
    setup = start_all(args, env)
    try:
        code = asyncio.run(bench(args, setup, info))
    finally:
        setup.stop()
    print(f"\n({time.perf_counter() - t0:.0f} s; load average at end {info.get('loadavg_end', (0.0,))[0]:.2f})")
    return code


if __name__ == "__main__":
    sys.exit(main())
