"""NVSwitch (LS10) evidence of the shared 8x H100 protected-PCIe sample: parsed with the switch's field sizes, each
switch's chain to the pinned NVIDIA device root, SPDM signature and nonce (the GPUs' nonce) checked; measurements are
never compared (no LS10 RIM is available) and say so; the ``[nvidia] switch_count`` policy; switch evidence carried
in bundles (version 2 of the GPU evidence encoding, bound by the same SHA-256) and checked by ``verify_bundle``."""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from enclave.attestation import SimulatedProvider, cli, gpu_nonce, report_data
from enclave.attestation import verify as verify_module
from enclave.attestation.bundle import Bundle
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.gateway_evidence import GatewayEvidence
from enclave.attestation.nvidia import (
    decode_gpu_evidence,
    decode_nvidia_evidence,
    encode_gpu_evidence,
    load_nvtrust_evidence_list,
    parse_gpu_report,
)
from enclave.attestation.nvidia.abi import parse_switch_report
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.nvidia.verify import SWITCH_NO_RIM_DETAIL, verify_nvidia
from enclave.attestation.policy import Policy
from enclave.attestation.result import Verdict
from enclave.attestation.verify import verify_bundle

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


# --- switch evidence in the bundle: bound by the same SHA-256 as the GPU evidence, verified by verify_bundle ---------

KEYS = bytes.fromhex("0001") + b"recorded-switch-keys"
BUNDLE_POLICY = NvidiaPolicy(allowed_driver_versions=("590.12",), allowed_vbios_versions=("96.00.A5.00.01",),
                             gpu_count=8, switch_count=4)


class _Recorded:
    """A GPU source and a switch source answering with the recorded 8x H100 and 4x LS10 evidence; both record the
    nonces they were asked for in one list."""

    def __init__(self, nonces: list[bytes], evidence: list[tuple[bytes, str]], *, switches: bool) -> None:
        self.nonces, self.evidence, self.switches = nonces, evidence, switches

    def collect(self, nonce: bytes) -> Any:
        self.nonces.append(nonce)
        return self.evidence if self.switches else encode_gpu_evidence(self.evidence)


def _bundle(root: Path, switches: list[tuple[bytes, str]] | None) -> Bundle:
    evidence = encode_gpu_evidence(_gpus(root), switches or ())
    return SimulatedProvider().collect(KEYS, gpu_evidence=evidence)


def _verify_bundle(bundle: Bundle, policy: NvidiaPolicy = BUNDLE_POLICY, **kw: bool) -> Verdict:
    return verify_bundle(bundle, KEYS, Policy(nvidia=policy), now=NOW, allow_simulated=True, **kw)


@pytest.fixture
def recorded_nonce(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The recorded reports answer the nonce of the session that recorded them, not ``gpu_nonce(KEYS)``: the
    client's derivation is made to yield that nonce for KEYS (and only KEYS), so every other check runs as it
    would on a gateway whose evidence answers its own key-derived nonce."""
    asked: list[bytes] = []

    def derived(key_config: bytes, boot_nonce: bytes = b"") -> bytes:
        asked.append(key_config)
        return NONCE if key_config == KEYS else gpu_nonce(key_config, boot_nonce)

    monkeypatch.setattr(verify_module, "gpu_nonce", derived)
    return asked


def test_gpu_only_evidence_keeps_version_1_and_switches_make_version_2(evidence_dir: Path) -> None:
    gpus, switches = _gpus(evidence_dir), _switches(evidence_dir)
    v1 = encode_gpu_evidence(gpus)
    assert json.loads(v1) == {"version": 1, "gpus": [{"report": r.hex(), "cert_chain": c} for r, c in gpus]}
    v2 = encode_gpu_evidence(gpus, switches)
    assert json.loads(v2)["version"] == 2 and len(json.loads(v2)["switches"]) == 4
    assert decode_nvidia_evidence(v1) == (gpus, []) and decode_nvidia_evidence(v2) == (gpus, switches)
    assert decode_gpu_evidence(v2) == gpus  # RIM and OCSP collection read the GPUs of either version
    # One byte string per content: no switches key in version 1, no empty or missing list in version 2, canonical.
    obj = json.loads(v2)
    for bad, match in (({**obj, "version": 1}, "exactly gpus, version"),
                       ({k: v for k, v in obj.items() if k != "switches"}, "exactly gpus, switches, version"),
                       ({**obj, "switches": []}, "1..16"),
                       ({**obj, "version": 3}, "unsupported GPU evidence version 3")):
        with pytest.raises(EvidenceFormatError, match=match):
            decode_nvidia_evidence(orjson.dumps(bad, option=orjson.OPT_SORT_KEYS))
    with pytest.raises(EvidenceFormatError, match="canonical"):
        decode_nvidia_evidence(v2.replace(switches[0][0].hex().encode(), switches[0][0].hex().upper().encode()))
    with pytest.raises(ValueError, match="switches"):
        encode_gpu_evidence(gpus, switches * 5)


def test_gateway_collects_switches_with_the_key_nonce_into_the_bound_evidence(evidence_dir: Path) -> None:
    nonces: list[bytes] = []
    provider = GatewayEvidence(SimulatedProvider(), gpu=_Recorded(nonces, _gpus(evidence_dir), switches=False),
                               switches=_Recorded(nonces, _switches(evidence_dir), switches=True))
    bundle = provider.collect(KEYS)
    # One nonce, derived from the key configuration, for the GPUs and the switches alike.
    assert nonces == [gpu_nonce(KEYS)] * 2
    assert bundle.gpu_evidence == encode_gpu_evidence(_gpus(evidence_dir), _switches(evidence_dir))
    assert report_data(KEYS, bundle.gpu_evidence) in bundle.report
    # Without the stand-in derivation the recorded reports answer another session's nonce: every GPU and every
    # switch fails the binding, exactly what replayed evidence must get.
    checks = _checks(_verify_bundle(bundle))
    assert {n for n, ok in checks.items() if ok is False} == (
        {f"gpu[{i}] nonce" for i in range(8)} | {f"switch[{i}] nonce" for i in range(4)})


def test_a_bundle_with_switches_verifies_through_verify_bundle(evidence_dir: Path,
                                                               recorded_nonce: list[bytes]) -> None:
    v = _verify_bundle(_bundle(evidence_dir, _switches(evidence_dir)))
    assert recorded_nonce == [KEYS]
    checks = _checks(v)
    for i in range(4):
        for step in SWITCH_STEPS:
            assert checks[f"switch[{i}] {step}"] is True, (i, step)
    assert checks["switches policy count"] is True and checks["switches distinct devices"] is True
    assert checks["switches gpus in protected-pcie mode"] is True and checks["simulated evidence signature and binding"]
    # Only what cannot be checked without RIMs (GPU CC mode, LS10 measurements) is not a pass.
    assert {k for k, ok in checks.items() if ok is not True} == (
        {f"gpu[{i}] cc mode" for i in range(8)} | {f"switch[{i}] measurements" for i in range(4)})
    assert len(v.claims["gpus"]["switches"]) == 4


def test_a_switch_count_policy_refuses_bundles_without_switch_evidence(evidence_dir: Path,
                                                                       recorded_nonce: list[bytes]) -> None:
    gpu_only = _checks(_verify_bundle(_bundle(evidence_dir, None)))
    assert gpu_only["switches policy count"] is False
    assert not any(n.startswith("switch[") for n in gpu_only)
    # A bundle without any GPU evidence: a policy counting switches demands it even without require_gpu.
    bare = _checks(_verify_bundle(SimulatedProvider().collect(KEYS)))
    assert bare["GPU evidence present"] is False
    # Fewer switches than the policy counts: refused.
    three = _checks(_verify_bundle(_bundle(evidence_dir, _switches(evidence_dir)[:3])))
    assert three["switches policy count"] is False
    # No switch_count: GPU-only bundles have no switch lines at all.
    relaxed = NvidiaPolicy(allowed_driver_versions=("590.12",), allowed_vbios_versions=("96.00.A5.00.01",))
    assert not any(n.startswith("switch") for n in _checks(_verify_bundle(_bundle(evidence_dir, None), relaxed)))


def test_switch_evidence_swapped_after_the_fact_fails_the_binding(evidence_dir: Path,
                                                                  recorded_nonce: list[bytes]) -> None:
    switches = _switches(evidence_dir)
    bundle = _bundle(evidence_dir, switches)
    for other in (switches[::-1], switches[:3], [switches[0]] + switches[2:] + [switches[1]]):
        swapped = replace(bundle, gpu_evidence=encode_gpu_evidence(_gpus(evidence_dir), other))
        checks = _checks(_verify_bundle(swapped))
        # Every switch report is genuine and answers the right nonce: only the REPORT_DATA binding catches it.
        assert checks["simulated evidence"] is False
        assert all(checks[f"switch[{i}] signature"] for i in range(len(other)))
    stripped = replace(bundle, gpu_evidence=encode_gpu_evidence(_gpus(evidence_dir)))
    assert _checks(_verify_bundle(stripped))["simulated evidence"] is False


def test_switches_beside_gpus_not_in_protected_pcie_mode_fail(evidence_dir: Path) -> None:
    # The Azure H100 (single GPU, CC mode, FEATURE_FLAG SPT) with the HGX switches: not one system.
    recorded = json.loads((evidence_dir / "nvidia-gpu" / "hopper-595-azure-full-rim-match" / "gpu-evidence.json")
                          .read_text())
    azure = load_nvtrust_evidence_list(json.dumps(recorded["evidence_list"]).encode())
    v = verify_nvidia(azure, NvidiaPolicy(any_version=True), now=NOW, expected_nonce=None,
                      switches=_switches(evidence_dir))
    line = next(c for c in v.checks if c.name == "switches gpus in protected-pcie mode")
    assert line.ok is False and "PPCIE" not in line.found
