"""NVSwitch (LS10) evidence of the shared 8x H100 protected-PCIe sample: parsed with the switch's field sizes, each
switch's chain to the pinned NVIDIA device root, SPDM signature and nonce (the GPUs' nonce) checked; measurements are
never compared (no LS10 RIM is available) and say so; the ``[nvidia] switch_count`` policy."""

from __future__ import annotations

import argparse
import datetime
from functools import cache
from pathlib import Path

import pytest

from enclave.attestation import cli
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.nvidia import load_nvtrust_evidence_list, parse_gpu_report
from enclave.attestation.nvidia.abi import parse_switch_report
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.nvidia.verify import SWITCH_NO_RIM_DETAIL, verify_nvidia
from enclave.attestation.result import Verdict

NOW = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
HGX = "hgx-8gpu-ppcie-nvtrust"
NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")
POLICY = NvidiaPolicy(allowed_driver_versions=("590.12",), allowed_vbios_versions=("96.00.A5.00.01",))
SWITCH_STEPS = ["parse", "cert chain", "cert validity", "root pinned", "signature", "nonce"]


@cache
def _load(root: Path, name: str) -> list[tuple[bytes, str]]:
    return load_nvtrust_evidence_list((root / "nvidia-gpu" / HGX / name).read_bytes())


def _gpus(root: Path) -> list[tuple[bytes, str]]:
    return _load(root, "gpu_evidence.json")


def _switches(root: Path) -> list[tuple[bytes, str]]:
    return _load(root, "switch_evidence.json")


def _verify(root: Path, switches: list[tuple[bytes, str]] | None, *, policy: NvidiaPolicy = POLICY,
            nonce: bytes | None = NONCE) -> Verdict:
    return verify_nvidia(_gpus(root), policy, now=NOW, expected_nonce=nonce, switches=switches)


def _checks(v: Verdict) -> dict[str, bool | None]:
    return {c.name: c.ok for c in v.checks}


def _switch_failures(v: Verdict) -> dict[str, bool | None]:
    """Checks about switches that did not pass, less the measurements lines (never compared)."""
    return {c.name: c.ok for c in v.checks if c.name.startswith("switch") and c.ok is not True
            and not c.name.endswith(" measurements")}


def test_switch_reports_parse_with_switch_sizes_only(evidence_dir: Path) -> None:
    switches = _switches(evidence_dir)
    assert len(switches) == 4
    for raw, _ in switches:
        report = parse_switch_report(raw)
        assert report.vbios_version == "96.10.73.00.01"
        assert report.nonce == NONCE and report.fwid is None and len(report.blocks) == 31
        # GPU parsing is not loosened: a switch's 14-byte VBIOS_VERSION is still refused there.
        with pytest.raises(EvidenceFormatError, match="VBIOS_VERSION"):
            parse_gpu_report(raw)
    # ... and a GPU report (8-byte binary VBIOS_VERSION) is not a switch report.
    with pytest.raises(EvidenceFormatError, match="VBIOS_VERSION"):
        parse_switch_report(_gpus(evidence_dir)[0][0])


def test_four_real_switches_verify_with_the_gpus_nonce(evidence_dir: Path) -> None:
    v = _verify(evidence_dir, _switches(evidence_dir), policy=NvidiaPolicy(
        allowed_driver_versions=("590.12",), allowed_vbios_versions=("96.00.A5.00.01",), gpu_count=8,
        switch_count=4))
    checks = _checks(v)
    for i in range(4):
        for step in SWITCH_STEPS:
            assert checks[f"switch[{i}] {step}"] is True, (i, step)
        # Never a pass: no LS10 RIM exists, so the measurements are reported as not compared.
        line = next(c for c in v.checks if c.name == f"switch[{i}] measurements")
        assert line.ok is None and line.detail == SWITCH_NO_RIM_DETAIL == "not compared: no LS10 RIM available"
    assert checks["switches distinct devices"] is True
    assert checks["switches policy count"] is True and checks["gpus policy count"] is True
    assert _switch_failures(v) == {}
    # Every GPU and switch check passes except the ones that cannot be made without RIMs.
    assert {k for k, ok in checks.items() if ok is not True} == (
        {f"gpu[{i}] cc mode" for i in range(8)} | {f"switch[{i}] measurements" for i in range(4)})
    assert {s["vbios_version"] for s in v.claims["switches"]} == {"96.10.73.00.01"}
    assert any("switch[0] fwid not compared" in n for n in v.claims["notes"])
    chain = next(c for c in v.checks if c.name == "switch[0] cert chain").detail
    assert "NVIDIA GH100 Identity" in chain and chain.endswith("NVIDIA Device Identity CA")


def test_flipped_signature_byte_fails_at_signature(evidence_dir: Path) -> None:
    switches = list(_switches(evidence_dir))
    raw, pem = switches[2]
    tampered = bytearray(raw)
    tampered[-1] ^= 0x01  # last byte of s (no padding after the signature in these reports)
    switches[2] = (bytes(tampered), pem)
    assert _switch_failures(_verify(evidence_dir, switches)) == {"switch[2] signature": False}


def test_flipped_measurement_byte_fails_at_signature(evidence_dir: Path) -> None:
    switches = list(_switches(evidence_dir))
    raw, pem = switches[0]
    tampered = bytearray(raw)
    tampered[37 + 8 + 4 + 3] ^= 0x80  # first byte of block 1's value: signed, parsed fine
    switches[0] = (bytes(tampered), pem)
    assert _switch_failures(_verify(evidence_dir, switches)) == {"switch[0] signature": False}


def test_wrong_nonce_fails_at_nonce_for_every_switch(evidence_dir: Path) -> None:
    wrong = bytes(32)
    v = _verify(evidence_dir, _switches(evidence_dir), nonce=wrong)
    assert _switch_failures(v) == {f"switch[{i}] nonce": False for i in range(4)}


def test_switch_with_another_nonce_than_the_gpus_fails(evidence_dir: Path) -> None:
    # A switch report replayed from another session: re-signing is impossible, so tampering its nonce breaks both
    # the nonce and the signature; the GPUs still pass.
    switches = list(_switches(evidence_dir))
    raw, pem = switches[1]
    tampered = bytearray(raw)
    tampered[4] ^= 0x01  # request nonce, first byte
    switches[1] = (bytes(tampered), pem)
    v = _verify(evidence_dir, switches)
    assert _switch_failures(v) == {"switch[1] nonce": False, "switch[1] signature": False}
    assert all(ok is not False for name, ok in _checks(v).items() if name.startswith("gpu"))


def test_swapped_chain_fails_at_signature(evidence_dir: Path) -> None:
    # Switch 0's report with switch 1's (genuine, pinned) chain: the chain checks pass, the signature does not.
    switches = list(_switches(evidence_dir))
    switches[0] = (switches[0][0], switches[1][1])
    v = _verify(evidence_dir, switches)
    assert _switch_failures(v) == {"switch[0] signature": False, "switches distinct devices": False}


def test_gpu_chain_for_a_switch_fails_at_signature(evidence_dir: Path) -> None:
    switches = list(_switches(evidence_dir))
    switches[3] = (switches[3][0], _gpus(evidence_dir)[0][1])
    assert _switch_failures(_verify(evidence_dir, switches)) == {"switch[3] signature": False}


def test_one_switch_replayed_four_times_fails(evidence_dir: Path) -> None:
    v = _verify(evidence_dir, [_switches(evidence_dir)[0]] * 4)
    assert _switch_failures(v) == {"switches distinct devices": False}


def test_switch_count_policy(evidence_dir: Path) -> None:
    switches = _switches(evidence_dir)
    three = NvidiaPolicy(allowed_driver_versions=("590.12",), allowed_vbios_versions=("96.00.A5.00.01",),
                         switch_count=3)
    assert _checks(_verify(evidence_dir, switches, policy=three))["switches policy count"] is False
    four = NvidiaPolicy.from_dict({"allowed_driver_versions": ["590.12"], "allowed_vbios_versions": ["96.00.A5.00.01"],
                                   "switch_count": 4})
    assert four.switch_count == 4
    assert _checks(_verify(evidence_dir, switches, policy=four))["switches policy count"] is True
    # Fail closed: a policy that requires switches refuses evidence without them.
    no_switches = _checks(_verify(evidence_dir, None, policy=four))
    assert no_switches["switches policy count"] is False
    assert not any(name.startswith("switch[") for name in no_switches)
    # Unset: not checked, and GPU-only verification has no switch lines at all.
    assert not any(name.startswith("switch") for name in _checks(_verify(evidence_dir, None)))
    for bad in (-1, 17, "4", True):
        with pytest.raises(EvidenceFormatError, match="switch_count"):
            NvidiaPolicy.from_dict({"switch_count": bad})


def test_cli_raw_switch_evidence(evidence_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = evidence_dir / "nvidia-gpu" / HGX
    policy = tmp_path / "policy.toml"
    policy.write_text('[nvidia]\nallowed_driver_versions = ["590.12"]\nallowed_vbios_versions = ["96.00.A5.00.01"]\n'
                      "switch_count = 4\ngpu_count = 8\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["verify", "--gpu-evidence", str(folder / "gpu_evidence.json"), "--switch-evidence",
                              str(folder / "switch_evidence.json"), "--nonce", NONCE.hex(), "--no-binding",
                              "--policy", str(policy), "--at", NOW.isoformat()])
    rc = cli.run(args)
    out = capsys.readouterr().out
    assert rc == 4  # not a pass: GPU CC mode and switch measurements cannot be checked without RIMs
    assert "[PASS] switch[3] signature" in out and "[PASS] switches policy count" in out
    assert "[SKIP] switch[0] measurements" in out and "not compared: no LS10 RIM available" in out
    assert "[FAIL]" not in out
