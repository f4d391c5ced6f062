"""Real processes on loopback: start a ``veil`` subcommand, wait until healthy, stop it afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """A running ``veil`` process and where it listens."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_veil(args: list[str], port: int, *, health: str = "/healthz", timeout: float = 30.0,
               env: dict[str, str] | None = None) -> Proc:
    """Start ``python -m veil_cli ARGS`` and wait until ``health`` answers 200."""
    log_fd, log_name = tempfile.mkstemp(prefix="veil-", suffix=".log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        [sys.executable, "-m", "veil_cli", *args], cwd=REPO, stdout=log_fd, stderr=subprocess.STDOUT, env=full_env
    )
    os.close(log_fd)
    proc = Proc(popen, port, Path(log_name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"veil {' '.join(args)} exited with {popen.returncode}:\n{proc.log()}")
        try:
            with urllib.request.urlopen(proc.base + health, timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"veil {' '.join(args)} not healthy after {timeout}s:\n{proc.log()}")


@pytest.fixture
def veil_process() -> Iterator[object]:
    """Factory fixture: ``veil_process(args, port)``; every process is stopped at teardown."""
    procs: list[Proc] = []

    def factory(args: list[str], port: int, **kw: object) -> Proc:
        p = start_veil(args, port, **kw)  # type: ignore[arg-type]
        procs.append(p)
        return p

    yield factory
    for p in procs:
        p.stop()
        p.log_path.unlink(missing_ok=True)


async def sdk_chat_and_stream(transport: object, text: str, stream_text: str) -> None:
    """The official async SDK through ``transport`` (Veil's in-process httpx transport): one chat completion and
    one streamed, each echoed back whole by the echo engine."""
    import httpx2 as httpx
    import openai

    client = openai.AsyncOpenAI(base_url="http://veil.invalid/v1", api_key="unused", max_retries=0,
                                http_client=httpx.AsyncClient(transport=transport))  # type: ignore[arg-type]
    try:
        r = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}])
        assert r.choices[0].message.content == text
        parts = []
        async for c in await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": stream_text}], stream=True
        ):
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
        assert "".join(parts) == stream_text
    finally:
        await client.close()
