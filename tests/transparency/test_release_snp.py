"""``veil release create --snp-*`` (a real process) puts the SEV-SNP launch digests of Debian's OVMF (fetched by
scripts/setup-ovmf) into the release's ``[sev-snp] measurements``: each equals what sev-snp-measure's own command
computes for that shape, and bad inputs end in one line naming the fix, without a traceback.

No report in ../shared/data/evidence was launched from parts available here (none records its OVMF, kernel or
shape), so no hardware-signed MEASUREMENT can be reproduced: sev-snp-measure's command is the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

VEIL = [sys.executable, str(REPO / "veil_cli.py")]
# sev-snp-measure's own command line, run as its console script would run it
MEASURE = [sys.executable, "-c", "import sys; from sevsnpmeasure.cli import main; sys.exit(main())"]
PREVIOUS = "ab" * 48  # a digest already in release.toml: kept, and kept first


def veil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VEIL, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def ovmf() -> Path:
    share = Path(os.environ.get("VEIL_CACHE", Path.home() / ".cache" / "veil")) / "ovmf" / "usr" / "share"
    if not (share / "ovmf" / "OVMF.fd").is_file():
        pytest.fail("Debian's OVMF is missing: run ./scripts/setup-ovmf (./scripts/test does it for you)")
    return share


def _create(tmp: Path, *snp: str) -> subprocess.CompletedProcess[str]:
    policy = tmp / "release.toml"
    policy.write_text(f'platforms = ["sev-snp"]\n[sev-snp]\nmeasurements = ["{PREVIOUS}"]\nvmpl = [0]\n')
    return veil("release", "create", "--name", "snp 1.0", "--policy", str(policy), "--out", str(tmp / "rel.txt"),
                *snp)


def _measurements(tmp: Path) -> list[str]:
    body = json.loads((tmp / "rel.txt").read_text().split("\n")[1])
    assert body["policy"]["sev-snp"]["vmpl"] == [0]
    m: list[str] = body["policy"]["sev-snp"]["measurements"]
    return m


def _reference(ovmf: Path, vcpus: int, *args: str) -> str:
    r = subprocess.run([*MEASURE, "--mode", "snp", "--ovmf", str(ovmf), "--vcpus", str(vcpus), *args],
                       capture_output=True, text=True, timeout=60, check=True)
    return r.stdout.strip()


def test_one_digest_per_shape_equal_to_sev_snp_measure(tmp_path: Path, ovmf: Path) -> None:
    fd = ovmf / "ovmf" / "OVMF.fd"
    r = _create(tmp_path, "--snp-ovmf", str(fd), "--snp-vcpus", "1,2", "--snp-vcpus", "4",
                "--snp-vcpu-type", "EPYC-v4,EPYC-Genoa", "--snp-vmm-type", "QEMU")
    assert r.returncode == 0, r.stderr
    want = [_reference(fd, n, "--vcpu-type", t) for n in (1, 2, 4) for t in ("EPYC-v4", "EPYC-Genoa")]
    assert _measurements(tmp_path) == [PREVIOUS, *want]
    assert len(set(want)) == 6 and all(len(d) == 96 for d in want)
    assert f"4 vCPU EPYC-Genoa: {want[-1]}" in r.stderr


def test_ec2_and_guest_features(tmp_path: Path, ovmf: Path) -> None:
    fd = ovmf / "ovmf" / "OVMF.fd"
    r = _create(tmp_path, "--snp-ovmf", str(fd), "--snp-vcpus", "2", "--snp-vmm-type", "ec2",
                "--snp-guest-features", "0x21")
    assert r.returncode == 0, r.stderr
    want = _reference(fd, 2, "--vmm-type", "ec2", "--guest-features", "0x21")
    assert _measurements(tmp_path) == [PREVIOUS, want]
    assert want != _reference(fd, 2, "--vmm-type", "ec2")


@pytest.mark.parametrize(("args", "message"), [
    (["--snp-ovmf", "/nonexistent/OVMF.fd", "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v4"], "no such file"),
    (["--snp-ovmf", "{share}/OVMF/OVMF_CODE_4M.fd", "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v4"],
     "has no SEV metadata section"),
    (["--snp-ovmf", "{share}/OVMF/OVMF_VARS.fd", "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v4"],
     "not an OVMF image with SEV support"),
    (["--snp-ovmf", "{share}/ovmf/OVMF.fd", "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v9"],
     "unknown --snp-vcpu-type 'EPYC-v9' (known: EPYC,"),
    (["--snp-ovmf", "{share}/ovmf/OVMF.fd", "--snp-vcpus", "1"], "needs --snp-vcpu-type"),
    (["--snp-ovmf", "{share}/ovmf/OVMF.fd", "--snp-vcpus", "0", "--snp-vcpu-type", "EPYC-v4"], "positive integers"),
    (["--snp-ovmf", "{share}/ovmf/OVMF.fd", "--snp-vcpus", "1", "--snp-vmm-type", "kvm"], "unknown --snp-vmm-type"),
    (["--snp-ovmf", "{share}/ovmf/OVMF.fd", "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v4", "--snp-kernel",
      "{share}/ovmf/OVMF.fd"], "cannot measure a kernel"),
    (["--snp-ovmf", "{share}/ovmf/OVMF.fd", "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v4", "--snp-append",
      "console=ttyS0"], "add --snp-kernel"),
    (["--snp-vcpus", "1"], "add --snp-ovmf"),
    (["--snp-ovmf", "{share}/ovmf/OVMF.fd", "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v4",
      "--snp-guest-features", "zz"], "is not hex"),
])
def test_bad_inputs_name_the_fix(tmp_path: Path, ovmf: Path, args: list[str], message: str) -> None:
    r = _create(tmp_path, *(a.format(share=ovmf) for a in args))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "rel.txt").exists()


def test_platforms_without_sev_snp_are_refused(tmp_path: Path, ovmf: Path) -> None:
    policy = tmp_path / "release.toml"
    policy.write_text('platforms = ["tdx"]\n')
    r = veil("release", "create", "--name", "x", "--policy", str(policy), "--out", str(tmp_path / "rel.txt"),
             "--snp-ovmf", str(ovmf / "ovmf" / "OVMF.fd"), "--snp-vcpus", "1", "--snp-vcpu-type", "EPYC-v4")
    assert r.returncode == 2 and "add \"sev-snp\" to platforms" in r.stderr, r.stderr
