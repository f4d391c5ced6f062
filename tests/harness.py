"""Real processes on loopback, shared by the test suite and the benchmarks (``scripts/bench``).

Pick a free port, start a process with its output in a log file, wait until it answers on a health path (or until a
``ready`` check passes), and stop it again: a signal, a bounded wait, then a kill; a process started in a session of
its own (``group=True``, e.g. vLLM with its engine-core child) is signalled as a whole group.

Standard library and ``veil_cli`` only, so that scripts can import it with nothing but the repository on ``sys.path``
(``scripts/bench/_bench_env.py`` puts it there). ``tests/integration/conftest.py`` re-exports ``free_port``,
``Proc`` and ``start_veil`` under their old names.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil_cli import die_with_parent as _pdeathsig

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "Proc", "free_port", "http_ok", "run_to_exit_watching_health", "start_process", "start_veil", "stop_all",
           "traced_peak"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_ok(url: str, *, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None,
            context: ssl.SSLContext | None = None, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers 200 now (any error, refused connection or other status: False)."""
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def run_to_exit_watching_health(argv: list[str], port: int, *, timeout: float = 60.0,
                                health: str = "/healthz") -> tuple[int | None, str, bool]:
    """Run ``argv`` (a process expected to stop by itself, e.g. a gateway refusing to serve) until it exits or
    ``timeout`` passes, asking ``health`` on ``port`` meanwhile. Returns (exit status or None if it had to be
    killed, its whole output, whether health ever answered 200)."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    healthy = False
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            healthy = http_ok(f"http://127.0.0.1:{port}{health}") or healthy
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=60)[0]
    return proc.returncode if proc.returncode is not None and proc.returncode >= 0 else None, out, healthy


@dataclass
class Proc:
    """A started process, where it listens and where its output goes."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    name: str = ""
    #: Started in a session of its own: ``stop`` signals the whole process group.
    group: bool = False
    stop_signal: int = signal.SIGINT
    #: Seconds ``stop`` waits after ``stop_signal`` before it kills.
    stop_timeout: float = 10.0
    scheme: str = "http"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log().splitlines()[-n:])
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        if self.group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
        else:
            self.popen.send_signal(sig)

    def stop(self) -> None:
        """``stop_signal``, up to ``stop_timeout`` seconds for it to exit, then SIGKILL. The log stays."""
        if self.popen.poll() is None:
            self._signal(self.stop_signal)
            try:
                self.popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(5)


def stop_all(procs: Iterable[Proc], *, remove_logs: bool = False) -> None:
    """Stop every process, the last started first; errors are swallowed so every one gets its turn."""
    for p in reversed(list(procs)):
        with contextlib.suppress(Exception):
            p.stop()
        if remove_logs:
            p.log_path.unlink(missing_ok=True)


def _preexec(die_with_parent: bool, cpus: set[int] | None) -> Callable[[], None] | None:
    if not die_with_parent and not cpus:
        return None

    parent = os.getpid()  # here, before the fork

    def run() -> None:
        if die_with_parent:
            _pdeathsig(parent)
        if cpus:
            os.sched_setaffinity(0, cpus)

    return run


def start_process(
    argv: list[str],
    port: int,
    *,
    name: str = "",
    health: str = "/healthz",
    ready: Callable[[Proc], bool] | None = None,
    timeout: float = 30.0,
    interval: float = 0.1,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    log_path: Path | None = None,
    group: bool = False,
    cpus: set[int] | None = None,
    die_with_parent: bool = False,
    stop_signal: int = signal.SIGINT,
    stop_timeout: float = 10.0,
    scheme: str = "http",
) -> Proc:
    """Start ``argv`` (stdout and stderr into ``log_path``, a fresh temporary file by default) and return once it is
    ready: ``ready(proc)`` is true, by default ``GET base + health`` answering 200, polled every ``interval`` s.

    ``env`` is added to this process's environment (with ``PYTHONUNBUFFERED=1``). ``group`` starts it in a session of
    its own, ``cpus`` pins it to those CPUs, ``die_with_parent`` has it killed when this process dies. Raises
    ``RuntimeError`` with the log when it exits first or is not ready within ``timeout`` s (it is stopped then).
    """
    name = name or " ".join(argv)
    if log_path is None:
        log_fd, log_name = tempfile.mkstemp(prefix="veil-", suffix=".log")
        log_path = Path(log_name)
    else:
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        popen = subprocess.Popen(
            argv, cwd=cwd, stdout=log_fd, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=group, preexec_fn=_preexec(die_with_parent, cpus),
        )
    finally:
        os.close(log_fd)
    proc = Proc(popen, port, log_path, name, group, stop_signal, stop_timeout, scheme)
    check = ready or (lambda p: http_ok(p.base + health))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{name} exited with {popen.returncode}:\n{proc.log()}")
        if check(proc):
            return proc
        time.sleep(interval)
    proc.stop()
    raise RuntimeError(f"{name} not healthy after {timeout:g}s:\n{proc.log()}")


def start_veil(args: list[str], port: int, *, health: str = "/healthz", timeout: float = 30.0,
               env: dict[str, str] | None = None, python: str = sys.executable, **kw: Any) -> Proc:
    """Start ``python -m veil_cli ARGS`` and wait until ``health`` answers 200; ``kw`` as for ``start_process``."""
    kw.setdefault("name", f"veil {' '.join(args)}")
    return start_process([python, "-m", "veil_cli", *args], port, health=health, timeout=timeout, env=env, **kw)


@contextlib.contextmanager
def traced_peak() -> Iterator[Callable[[], int]]:
    """``with traced_peak() as peak: ...; held = peak()``: the most this process's Python allocations rose above their
    level at entry, while inside (read ``peak()`` inside the block). What a test bounds to show that a process holds
    back instead of buffering; bytes a peer got out would measure the kernel's autotuned socket buffers instead.
    Tracing already on (``PYTHONTRACEMALLOC``, ``-X tracemalloc``) is left on, and what it counted before is not
    counted here."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was:
            tracemalloc.stop()
