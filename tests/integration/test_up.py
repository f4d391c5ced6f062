"""``veil up`` (the README's main job) as a real process with the echo engine: in a terminal it starts the chain,
answers a chat line, and stops everything, leaving no process behind, both on end of input and on Ctrl-C (SIGINT)
while the chat waits for input; without a terminal (``< /dev/null``, nohup, a container) it serves the OpenAI SDK
until SIGTERM."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai

from .conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def start_up(stdin: int = subprocess.PIPE, *extra: str, proxy_port: int = 0) -> subprocess.Popen[str]:
    args = ["--engine", "echo", "--gateway-port", str(free_port()), "--relay-port", str(free_port()),
            "--proxy-port", str(proxy_port or free_port()), "--startup-timeout", "60", *extra]
    return subprocess.Popen([sys.executable, "-m", "veil_cli", "up", *args], cwd=REPO, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def start_in_terminal() -> tuple[subprocess.Popen[str], int]:
    """``veil up`` with a pseudo-terminal as stdin (as typed in a shell); returns the process and the pty's master
    end, where the test types."""
    master, slave = pty.openpty()
    try:
        return start_up(slave), master
    finally:
        os.close(slave)


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


def stops_cleanly(proc: subprocess.Popen[str], kids: list[int], timeout: float = 30) -> None:
    """``veil up`` says it stopped, exits 0, and leaves none of its children behind."""
    read_until(proc, "veil up: stopped.", timeout=timeout)
    assert proc.wait(timeout=15) == 0
    assert not [k for k in kids if os.path.exists(f"/proc/{k}")]


def test_chat_in_a_terminal_answers_and_end_of_input_stops_everything() -> None:
    proc, tty = start_in_terminal()
    try:
        read_until(proc, "Hello")  # the SDK snippet: everything is up
        kids = children_of(proc.pid)
        assert len(kids) == 3  # gateway, relay, proxy
        os.write(tty, b"the capital of France\n")
        assert "veil> the capital of France" in read_until(proc, "veil> ")
        os.write(tty, b"\x04")  # Ctrl-D at the start of a line: end of input
        stops_cleanly(proc, kids)
    finally:
        os.close(tty)
        if proc.poll() is None:
            proc.kill()


def test_piped_lines_chat_with_the_chat_flag() -> None:
    proc = start_up(subprocess.PIPE, "--chat")
    try:
        read_until(proc, "Hello")
        assert proc.stdin is not None
        proc.stdin.write("hello from a pipe\n")
        proc.stdin.flush()
        assert "veil> hello from a pipe" in read_until(proc, "veil> hello")
        proc.stdin.close()
        read_until(proc, "veil up: stopped.")
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_ctrl_c_while_waiting_for_input_exits_promptly() -> None:
    proc, tty = start_in_terminal()
    try:
        read_until(proc, "Hello")
        kids = children_of(proc.pid)
        time.sleep(0.5)  # the chat is now blocked reading stdin (which stays open)
        proc.send_signal(signal.SIGINT)
        # Before the fix the process then waited in input() until the next Enter.
        stops_cleanly(proc, kids)
    finally:
        os.close(tty)
        if proc.poll() is None:
            proc.kill()


def test_without_a_terminal_it_serves_the_sdk_until_sigterm() -> None:
    """``veil up --engine echo < /dev/null`` (nohup, containers, systemd): end of input must not stop the chain."""
    port = free_port()
    proc = start_up(subprocess.DEVNULL, proxy_port=port)
    try:
        out = read_until(proc, "stop with Ctrl-C or SIGTERM")
        assert f"OpenAI base_url : http://127.0.0.1:{port}/v1" in out
        assert f"chat in a browser: http://127.0.0.1:{port}/" in out
        assert "stdin is not a terminal" in out
        kids = children_of(proc.pid)
        assert len(kids) == 3
        time.sleep(1.0)  # stdin is at its end already: the chain must still be there afterwards
        assert proc.poll() is None
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "still serving"}])
        assert r.choices[0].message.content == "still serving"
        proc.send_signal(signal.SIGTERM)
        stops_cleanly(proc, kids)
    finally:
        if proc.poll() is None:
            proc.kill()
