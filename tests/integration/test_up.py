"""``veil up`` (the README's main job) as a real process with the echo engine: it starts the chain, answers a
chat line, and stops everything, leaving no process behind, both on end of input and on Ctrl-C (SIGINT) while
the chat waits for input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def start_up() -> subprocess.Popen[str]:
    args = ["--engine", "echo", "--gateway-port", str(free_port()), "--relay-port", str(free_port()),
            "--proxy-port", str(free_port()), "--startup-timeout", "60"]
    return subprocess.Popen([sys.executable, "-m", "veil_cli", "up", *args], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} not seen; output:\n{''.join(seen)}")


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_chat_answers_and_end_of_input_stops_everything() -> None:
    proc = start_up()
    try:
        read_until(proc, "Hello")  # the SDK snippet: everything is up
        kids = children_of(proc.pid)
        assert len(kids) == 3  # gateway, relay, proxy
        assert proc.stdin is not None
        proc.stdin.write("the capital of France\n")
        proc.stdin.flush()
        assert "veil> the capital of France" in read_until(proc, "veil> ")
        proc.stdin.close()
        assert "veil up: stopped." in read_until(proc, "veil up: stopped.")
        assert proc.wait(timeout=15) == 0
        assert not [k for k in kids if os.path.exists(f"/proc/{k}")]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_while_waiting_for_input_exits_promptly() -> None:
    proc = start_up()
    try:
        read_until(proc, "Hello")
        kids = children_of(proc.pid)
        time.sleep(0.5)  # the chat is now blocked reading stdin (which stays open)
        proc.send_signal(signal.SIGINT)
        read_until(proc, "veil up: stopped.", timeout=30)
        # Before the fix the process then waited in input() until the next Enter.
        assert proc.wait(timeout=10) == 0
        assert not [k for k in kids if os.path.exists(f"/proc/{k}")]
    finally:
        if proc.poll() is None:
            proc.kill()
