"""``veil gateway`` refuses clearly, before serving, when the platform it is told to attest is not there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veil_cli", "gateway", "--engine", "echo", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


def test_nitro_without_nsm_device_exits_with_the_reason(tmp_path: Path) -> None:
    out = gateway("--attestation", "nitro", "--nsm-device", str(tmp_path / "nsm"), "--listen", "vsock:8081")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "--attestation nitro" in out.stderr and str(tmp_path / "nsm") in out.stderr


@pytest.mark.parametrize("listen", ["vsock:", "vsock:port", "vsock:1:2:3", "vsock:99999999999"])
def test_bad_vsock_listen_addresses_are_refused(listen: str) -> None:
    out = gateway("--listen", listen)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert f"--listen {listen}" in out.stderr
