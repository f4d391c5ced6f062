"""NVSwitch evidence through NSCQ (``--switch-evidence nscq``): the collector driven through a stand-in for NVIDIA's
``NSCQHandler`` (nv-attestation-sdk's pynscq binding, same methods and ``(value, return code)`` answers) that answers
with the four recorded LS10 reports of the shared 8x H100 protected-PCIe sample. What comes out must be what the
client's verifier accepts, collected with the gateway's key-derived nonce, and switches not in locked TNVL mode must
stop the gateway. NOT run against real NSCQ: no NVSwitch system was available (see enclave/attestation/nvidia/nscq.py).
"""

from __future__ import annotations

import base64
import ctypes.util
import datetime
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from enclave.attestation import ProviderError, ProviderOptions, SimulatedProvider, gpu_nonce, make_provider
from enclave.attestation import gateway_evidence as gateway_module
from enclave.attestation import verify as verify_module
from enclave.attestation.errors import CollateralUnavailableError
from enclave.attestation.gateway_evidence import GatewayEvidence, NscqSwitchEvidence
from enclave.attestation.nvidia import decode_nvidia_evidence, encode_gpu_evidence, load_nvtrust_evidence_list
from enclave.attestation.nvidia import nscq as nscq_module
from enclave.attestation.nvidia.nscq import NscqEvidenceError, collect_switch_evidence, switch_uuids
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.nvidia.verify import verify_nvidia
from enclave.attestation.policy import ConfigPolicy, Policy
from enclave.attestation.verify import verify_bundle
from enclave.gateway import GatewayConfig

HGX = "nvidia-gpu/hgx-8gpu-ppcie-nvtrust"
NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")  # the recorded reports'
NOW = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
KEYS = b"\x00\x01nscq-test-keys"
POLICY = NvidiaPolicy(allowed_driver_versions=("590.12",), allowed_vbios_versions=("96.00.A5.00.01",), gpu_count=8,
                      switch_count=4)
LOCKED, TNVL_ONLY, DISABLED, FAILURE = 3, 1, 0, 2  # nscq_device_tnvl_modes
LS10, LR10 = 2, 1  # nscq_arch_types


class FakeNscqHandler:
    """NVIDIA's ``NSCQHandler`` surface (nv-attestation-sdk 2.7.3): each query answers ``(value, rc)``, a value the
    library never sent is the string "NOT PRESENT", and the answers live in dictionaries keyed by switch UUID."""

    def __init__(self, recorded: list[tuple[bytes, bytes]], *, modes: list[int] | None = None, arch: int = LS10,
                 rc: int = 0, fail: str | None = None) -> None:
        self.recorded, self.arch, self.rc, self.fail = recorded, arch, rc, fail
        self.uuids = [f"SWX-{i:08d}-0000-0000-0000-000000000000" for i in range(len(recorded))]
        self.modes = modes if modes is not None else [LOCKED] * len(recorded)
        self.nonces: list[bytes] = []
        self.tnvl_status: dict[str, Any] = {}
        self.attestation_report: dict[str, Any] = {}
        self.certificate_chain: dict[str, Any] = {}

    def _maybe_fail(self, call: str) -> None:
        if self.fail == call:
            raise RuntimeError("NSCQ_RC_ERROR_DRV")  # pynscq's NSCQError is a plain Exception

    def get_all_switch_uuid(self) -> tuple[list[str], int | None]:
        self._maybe_fail("uuid")
        return list(self.uuids), (self.rc if self.uuids else None)

    def get_switch_architecture(self) -> tuple[int, int]:
        return self.arch, self.rc

    def get_switch_tnvl_status(self, device: str) -> tuple[Any, int]:
        self.tnvl_status[device] = self.modes[self.uuids.index(device)]
        return self.tnvl_status.get(device, "NOT PRESENT"), self.rc

    def get_switch_attestation_report(self, device: str, nonce: bytes) -> tuple[Any, int]:
        self._maybe_fail("report")
        self.nonces.append(bytes(nonce))
        if self.fail != "silent report":  # the callback never ran: the handler answers its placeholder
            self.attestation_report[device] = self.recorded[self.uuids.index(device)][0]
        return self.attestation_report.get(device, "NOT PRESENT"), self.rc

    def get_switch_attestation_certificate_chain(self, device: str) -> tuple[Any, int]:
        self.certificate_chain[device] = self.recorded[self.uuids.index(device)][1]
        return self.certificate_chain[device], self.rc


def _recorded(root: Path) -> list[tuple[bytes, bytes]]:
    items = json.loads((root / HGX / "switch_evidence.json").read_text())
    # NSCQ hands the chain over as PEM bytes of its buffer's size; one trailing NUL stands for a C terminator.
    return [(base64.b64decode(i["evidence"]), base64.b64decode(i["certificate"]) + b"\x00") for i in items]


def _gpus(root: Path) -> list[tuple[bytes, str]]:
    return load_nvtrust_evidence_list((root / HGX / "gpu_evidence.json").read_bytes())


def _module(handler: FakeNscqHandler) -> Any:
    return SimpleNamespace(NSCQHandler=lambda: handler)


def test_switch_evidence_through_nscq_verifies_with_the_client_verifier(evidence_dir: Path) -> None:
    handler = FakeNscqHandler(_recorded(evidence_dir))
    switches = collect_switch_evidence(NONCE, _module(handler))
    assert handler.nonces == [NONCE] * 4
    assert [r for r, _ in switches] == [r for r, _ in _recorded(evidence_dir)]
    assert all(chain.endswith("-----END CERTIFICATE-----\n") for _, chain in switches)  # NUL dropped
    v = verify_nvidia(_gpus(evidence_dir), POLICY, now=NOW, expected_nonce=NONCE, switches=switches)
    failing = {c.name for c in v.checks if c.ok is not True}
    assert failing == {f"gpu[{i}] cc mode" for i in range(8)} | {f"switch[{i}] measurements" for i in range(4)}


@pytest.mark.parametrize(("handler_kw", "match"), [
    ({"modes": [LOCKED, LOCKED, DISABLED, LOCKED]}, "not in protected-PCIe \\(TNVL\\) mode"),
    ({"modes": [LOCKED, TNVL_ONLY, LOCKED, LOCKED]}, "TNVL mode but not locked"),
    ({"modes": [FAILURE] * 4}, "not in protected-PCIe"),
    ({"arch": LR10}, "not LS10"),
    ({"rc": -7}, "return code -7"),
    ({"fail": "uuid"}, "NSCQ failed: RuntimeError"),
], ids=["tnvl-off", "unlocked", "tnvl-failure", "lr10", "rc-error", "nscq-error"])
def test_switches_that_must_not_be_attested_are_refused(evidence_dir: Path, handler_kw: dict[str, Any],
                                                        match: str) -> None:
    handler = FakeNscqHandler(_recorded(evidence_dir), **handler_kw)
    with pytest.raises(NscqEvidenceError, match=match):
        switch_uuids(_module(handler))
    with pytest.raises(NscqEvidenceError, match=match):
        collect_switch_evidence(NONCE, _module(handler))
    assert handler.nonces == []  # refused before any report was asked for


def test_no_switch_a_failed_report_and_a_stale_one_are_refused(evidence_dir: Path) -> None:
    with pytest.raises(NscqEvidenceError, match="sees no NVSwitch"):  # no callback ran: rc None, nothing listed
        switch_uuids(_module(FakeNscqHandler([])))
    with pytest.raises(NscqEvidenceError, match="NSCQ failed to produce switch evidence: RuntimeError"):
        collect_switch_evidence(NONCE, _module(FakeNscqHandler(_recorded(evidence_dir), fail="report")))
    # A callback that never ran must not hand on the previous collection's report (the handler keeps answers).
    handler = FakeNscqHandler(_recorded(evidence_dir))
    collect_switch_evidence(NONCE, _module(handler))
    handler.fail = "silent report"
    with pytest.raises(NscqEvidenceError, match="attestation report: NSCQ gave no value"):
        collect_switch_evidence(NONCE, _module(handler))
    # A report over another nonce than the one asked for: refused at the gateway, before any client sees it.
    with pytest.raises(NscqEvidenceError, match="answers nonce 4760e30534a06213"):
        collect_switch_evidence(bytes(32), _module(FakeNscqHandler(_recorded(evidence_dir))))
    with pytest.raises(NscqEvidenceError, match="32 bytes"):
        collect_switch_evidence(NONCE[:16], _module(FakeNscqHandler(_recorded(evidence_dir))))
    # A GPU report where a switch report belongs: not LS10.
    swapped = [(_gpus(evidence_dir)[0][0], c) for _, c in _recorded(evidence_dir)]
    with pytest.raises(NscqEvidenceError, match="not an LS10 attestation report"):
        collect_switch_evidence(NONCE, _module(FakeNscqHandler(swapped)))


def test_without_the_library_or_the_binding_the_gateway_says_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(NscqEvidenceError, match="libnvidia-nscq is not installed"):
        switch_uuids()
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: f"lib{name}.so.1")
    monkeypatch.setattr(nscq_module, "SDK_MODULE", "veil_test_no_such_nscq_binding")
    with pytest.raises(NscqEvidenceError, match="pip install --no-deps nv-attestation-sdk"):
        switch_uuids()
    # --switch-evidence nscq without GPU evidence: refused when the provider is made (no nonce to answer).
    with pytest.raises(ProviderError, match="needs GPU evidence"):
        make_provider("simulated", ProviderOptions(switch_evidence="nscq"))


class _RecordedGpus:
    def __init__(self, gpus: list[tuple[bytes, str]]) -> None:
        self.gpus = gpus

    def collect(self, nonce: bytes) -> bytes:
        return encode_gpu_evidence(self.gpus)


def test_the_gateway_checks_the_switches_at_start_and_binds_their_evidence(
        evidence_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The recorded reports answer the nonce of the session that recorded them: gateway and client derive that
    # nonce for KEYS (and only KEYS), so everything else runs as on a gateway whose switches answer its keys.
    def derived(key_config: bytes, boot_nonce: bytes = b"") -> bytes:
        return NONCE if key_config == KEYS else gpu_nonce(key_config, boot_nonce)

    monkeypatch.setattr(gateway_module, "gpu_nonce", derived)
    monkeypatch.setattr(verify_module, "gpu_nonce", derived)
    handler = FakeNscqHandler(_recorded(evidence_dir))
    provider = GatewayEvidence(SimulatedProvider(), gpu=_RecordedGpus(_gpus(evidence_dir)),
                               switches=NscqSwitchEvidence(_module(handler)))
    found = provider.gpu_check()
    assert found == {"gpu_cc_checked": "command", "gpu_count": None, "switch_tnvl_checked": "nscq", "switch_count": 4}
    # The TNVL check goes into the bound configuration (the LS10 report does not carry TNVL mode), so a client
    # policy can require that the TEE itself checked it.
    config = GatewayConfig(**found).attested(engine="echo", api_keys_required=False, cache_salt="tenant")
    bundle = provider.collect(KEYS, config=config)
    assert handler.nonces == [NONCE] * 4
    require_tnvl = ConfigPolicy(require={"switch_tnvl_checked": "nscq"})
    v = verify_bundle(bundle, KEYS, Policy(nvidia=POLICY, config=require_tnvl), now=NOW, allow_simulated=True)
    checks = {c.name: c.ok for c in v.checks}
    assert checks["switches policy count"] is True and all(checks[f"switch[{i}] nonce"] for i in range(4))
    assert checks["gateway configuration switch_tnvl_checked"] is True
    assert checks["switches tnvl checked in the TEE"] is True and checks["switches bound count"] is True
    assert not [n for n, ok in checks.items() if ok is False]
    # A switch left out of the evidence (bound count 4, three reports) fails without any client switch_count.
    gpus, switches = decode_nvidia_evidence(bundle.gpu_evidence)
    short = SimulatedProvider().collect(KEYS, gpu_evidence=encode_gpu_evidence(gpus, switches[:3]), config=config)
    v = verify_bundle(short, KEYS, Policy(nvidia=POLICY), now=NOW, allow_simulated=True)
    assert {c.name: c.ok for c in v.checks}["switches bound count"] is False and not v.ok
    # A count without the check it comes from is not the gateway's word: refused.
    odd = SimulatedProvider().collect(KEYS, gpu_evidence=bundle.gpu_evidence,
                                      config={**config, "switch_tnvl_checked": None})
    v = verify_bundle(odd, KEYS, Policy(nvidia=POLICY), now=NOW, allow_simulated=True)
    assert {c.name: c.ok for c in v.checks}["switches bound count"] is False
    # Evidence from a gateway that did not check its switches (the same reports, from a command) fails that policy.
    unchecked = provider.collect(KEYS, config={**config, "switch_tnvl_checked": None, "switch_count": None})
    v = verify_bundle(unchecked, KEYS, Policy(nvidia=POLICY, config=require_tnvl), now=NOW, allow_simulated=True)
    assert {c.name: c.ok for c in v.checks}["gateway configuration switch_tnvl_checked"] is False and not v.ok
    # The gateway's own keys would ask for another nonce: the recorded (stale) reports are refused at collection.
    with pytest.raises(CollateralUnavailableError, match="answers nonce"):
        provider.collect(b"\x00\x01other keys")
    # A switch gone since start: refused rather than published with fewer switches.
    handler.uuids.pop()
    with pytest.raises(CollateralUnavailableError, match="NSCQ now sees 3 switches, 4 at start"):
        provider.collect(KEYS)
    # Switches that leave locked TNVL mode stop the gateway at start (gpu_check is called before serving).
    unlocked = GatewayEvidence(SimulatedProvider(), gpu=_RecordedGpus(_gpus(evidence_dir)), switches=NscqSwitchEvidence(
        _module(FakeNscqHandler(_recorded(evidence_dir), modes=[TNVL_ONLY] * 4))))
    with pytest.raises(CollateralUnavailableError, match="NVSwitch check: .* not locked"):
        unlocked.gpu_check()
