"""What the benchmarks share besides the process harness (``tests/harness.py``): the machine they ran on, CPU time and
memory of a process from ``/proc``, percentiles, and the PASS/MISS lines of their targets. Standard library only."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
#: Environment for a benchmark's relay: all load comes from 127.0.0.1, so the per-address caps (32 requests in
#: flight, 128 connections) would refuse it. Variables, not options: an older checkout without them ignores them.
RELAY_UNCAPPED: Final = {"VEIL_RELAY_MAX_IN_FLIGHT_PER_ADDRESS": "1000000",
                         "VEIL_RELAY_MAX_CONNECTIONS_PER_ADDRESS": "1000000"}


# ---------------------------------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def openssl_version() -> str:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend

        return str(backend.openssl_version_text())
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def machine_info(*dists: str) -> dict[str, Any]:
    """CPU, cores, Python and platform, and the version of each distribution in ``dists`` (keyed by its name)."""
    return {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(),
        "python": f"{platform.python_implementation()} {platform.python_version()}", "platform": platform.platform(),
        **{d: version_of(d) for d in dists},
    }


def command_line(script: str, args: list[str]) -> str:
    """How the benchmark was started, for its report (``scripts/bench/NAME.py ARGS``)."""
    return " ".join([f"scripts/bench/{os.path.basename(script)}", *args])


# ---------------------------------------------------------------------------------------------------------------
# A process, from /proc


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (vLLM runs its engine core as a child process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children", encoding="ascii") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rsplit(b")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of ``pid`` and every process below it."""
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages (libraries, the interpreter) divided among the processes sharing them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------------------------------------------------------
# Report


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[max(0, math.ceil(q / 100.0 * len(s)) - 1)]


@dataclass
class Target:
    """One of the issue's targets, and whether this run met it."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'MISS'}: {self.name}: {self.detail}"
