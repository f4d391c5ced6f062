"""GPU evidence through NVML: the real ``pynvml`` wrapper (its ctypes structures and calls) over a stand-in for
``libnvidia-ml.so`` that answers with a recorded real H100 report and certificate chain. What comes out must be
what the client's NVIDIA verifier accepts, bound to the nonce the gateway asked for."""

from __future__ import annotations

import ctypes
import datetime
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pynvml = pytest.importorskip("pynvml")  # nvidia-ml-py: in the test extras

from enclave.attestation.errors import CollateralUnavailableError  # noqa: E402
from enclave.attestation.gateway_evidence import NvmlGpuEvidence  # noqa: E402
from enclave.attestation.nvidia import decode_gpu_evidence, load_nvtrust_evidence_list
from enclave.attestation.nvidia.verify import verify_nvidia  # noqa: E402
from enclave.attestation.nvidia.nvml import NvmlEvidenceError, cc_state, collect_evidence_list  # noqa: E402
from enclave.attestation.nvidia.policy import NvidiaPolicy  # noqa: E402

NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")  # the recorded report's
NOW = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
POLICY = NvidiaPolicy(allowed_driver_versions=("550.90.07",), allowed_vbios_versions=("96.00.9F.00.01",),
                      accept_unverifiable_cc_mode=True)
SUCCESS, NOT_SUPPORTED = 0, 3


class FakeLibNvml:
    """The C functions pynvml calls, answering from one recorded GPU; records the nonces it was given."""

    def __init__(self, report: bytes, chain: bytes, *, cc: int = 1, env: int = 2, dev_tools: int = 0,
                 gpus: int = 1, report_ret: int = SUCCESS) -> None:
        self.report, self.chain = report, chain
        self.cc, self.env, self.dev_tools, self.gpus, self.report_ret = cc, env, dev_tools, gpus, report_ret
        self.nonces: list[bytes] = []
        self.shutdowns = 0

    def function(self, name: str) -> Callable[..., int]:
        def state(ref: Any) -> int:
            s = ref._obj
            s.environment, s.ccFeature, s.devToolsMode = self.env, self.cc, self.dev_tools
            return SUCCESS

        def ready(ref: Any) -> int:
            ref._obj.value = 1
            return SUCCESS

        def count(ref: Any) -> int:
            ref._obj.value = self.gpus
            return SUCCESS

        def handle(index: Any, ref: Any) -> int:
            return SUCCESS

        def report(device: Any, ref: Any) -> int:
            r = ref._obj
            self.nonces.append(bytes(r.nonce))
            if self.report_ret != SUCCESS:
                return self.report_ret
            r.attestationReportSize = len(self.report)
            ctypes.memmove(r.attestationReport, self.report, len(self.report))
            return SUCCESS

        def cert(device: Any, ref: Any) -> int:
            c = ref._obj
            c.attestationCertChainSize = len(self.chain)
            ctypes.memmove(c.attestationCertChain, self.chain, len(self.chain))
            return SUCCESS

        def shutdown() -> int:
            self.shutdowns += 1
            return SUCCESS

        table: dict[str, Callable[..., int]] = {
            "nvmlInitWithFlags": lambda flags: SUCCESS, "nvmlShutdown": shutdown,
            "nvmlSystemGetConfComputeState": state, "nvmlSystemGetConfComputeGpusReadyState": ready,
            "nvmlDeviceGetCount_v2": count, "nvmlDeviceGetHandleByIndex_v2": handle,
            "nvmlDeviceGetConfComputeGpuAttestationReport": report,
            "nvmlDeviceGetConfComputeGpuCertificate": cert,
        }
        return table[name]


@pytest.fixture
def recorded(evidence_dir: Path) -> tuple[bytes, bytes]:
    d = evidence_dir / "nvidia-gpu" / "hopper-nvtrust-sample"
    return bytes.fromhex((d / "attestation_report.hex").read_text().strip()), (d / "cert_chain.pem").read_bytes()


@pytest.fixture
def install(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeLibNvml], FakeLibNvml]:
    def go(lib: FakeLibNvml) -> FakeLibNvml:
        monkeypatch.setattr(pynvml, "nvmlLib", object())  # "loaded": pynvml then only looks functions up
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", lib.function)
        return lib
    return go


def test_evidence_through_pynvml_verifies_with_the_client_verifier(
    recorded: tuple[bytes, bytes], install: Callable[[FakeLibNvml], FakeLibNvml]
) -> None:
    lib = install(FakeLibNvml(*recorded))
    listing = collect_evidence_list(NONCE)
    assert lib.nonces == [NONCE] and lib.shutdowns == 1  # the nonce reached the driver; NVML was closed again
    gpus = load_nvtrust_evidence_list(listing)
    assert gpus == [(recorded[0], recorded[1].decode())]
    v = verify_nvidia(gpus, POLICY, now=NOW, expected_nonce=NONCE)
    assert v.ok, [c for c in v.checks if not c.ok]


def test_gateway_source_encodes_for_the_bundle(recorded: tuple[bytes, bytes],
                                               install: Callable[[FakeLibNvml], FakeLibNvml]) -> None:
    install(FakeLibNvml(*recorded, gpus=2))
    encoded = NvmlGpuEvidence().collect(NONCE)
    assert decode_gpu_evidence(encoded) == [(recorded[0], recorded[1].decode())] * 2


@pytest.mark.parametrize(("settings", "words"), [
    ({"cc": 0}, "not in confidential-computing mode"),
    ({"env": 1}, "simulated, not production"),
    ({"dev_tools": 1}, "dev-tools mode"),
    ({"gpus": 0}, "sees no GPU"),
    ({"report_ret": NOT_SUPPORTED}, "NVML failed to produce GPU evidence: Not Supported"),
])
def test_gpus_that_must_not_be_attested_are_refused(recorded: tuple[bytes, bytes],
                                                     install: Callable[[FakeLibNvml], FakeLibNvml],
                                                     settings: dict[str, int], words: str) -> None:
    lib = install(FakeLibNvml(*recorded, **settings))
    with pytest.raises(NvmlEvidenceError, match=words):
        collect_evidence_list(NONCE)
    assert lib.shutdowns == 1
    with pytest.raises(CollateralUnavailableError, match=words):
        NvmlGpuEvidence().collect(NONCE)


def test_cc_state_probe(recorded: tuple[bytes, bytes], install: Callable[[FakeLibNvml], FakeLibNvml]) -> None:
    install(FakeLibNvml(*recorded, cc=0, env=0))
    assert cc_state() == {"environment": "unavailable", "cc_feature": "disabled", "dev_tools_mode": False,
                          "gpus_ready": True}


def test_wrong_nonce_size_is_refused() -> None:
    with pytest.raises(NvmlEvidenceError, match="32 bytes"):
        collect_evidence_list(bytes(31))


def test_without_a_driver_the_command_says_so() -> None:
    # This machine has no NVIDIA driver: the real pynvml cannot load libnvidia-ml.so.1.
    script = Path(__file__).resolve().parents[2] / "enclave" / "attestation" / "nvidia" / "nvml.py"
    out = subprocess.run([sys.executable, str(script), NONCE.hex()], capture_output=True, text=True, timeout=60)
    if out.returncode == 0:
        pytest.skip("an NVIDIA driver is present here")
    assert out.returncode == 1 and "cannot load NVML" in out.stderr and "Traceback" not in out.stderr
    usage = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr
