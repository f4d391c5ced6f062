"""Fixtures for Privacy Pass across processes: a Redis server on loopback (Debian's redis-server), an issuer app."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port


def redis_server_path() -> str | None:
    """Debian's redis-server (installed by scripts/setup-redis), if present."""
    return shutil.which("redis-server") or (os.path.exists("/usr/bin/redis-server") and "/usr/bin/redis-server") or None


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server on loopback, no persistence; its URL."""
    exe = redis_server_path()
    if exe is None:
        # ./scripts/test installs it (scripts/setup-redis), as it does Chromium and swtpm: a missing server is a
        # set-up error to fix, not a reason to leave the replicas' shared spent-token store untested.
        pytest.fail("redis-server is missing: run ./scripts/setup-redis (./scripts/test does it for you)")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
