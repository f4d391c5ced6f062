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


# --- what the gateway checked itself goes into the bound configuration ---------------------------------------------


def _gateway() -> Any:
    from enclave.attestation import SimulatedProvider
    from enclave.attestation.gateway_evidence import GatewayEvidence

    return GatewayEvidence(SimulatedProvider(), gpu=NvmlGpuEvidence())


def test_the_nvml_check_is_bound_and_the_client_sees_it(recorded: tuple[bytes, bytes],
                                                        install: Callable[[FakeLibNvml], FakeLibNvml]) -> None:
    import ohttp
    from enclave.api import Api
    from enclave.attestation.policy import ConfigPolicy, Policy
    from enclave.attestation.verify import verify_bundle
    from enclave.engines import EchoEngine
    from enclave.gateway import GatewayConfig, create_app
    from enclave.gateway.app_state_keys import STATE

    install(FakeLibNvml(*recorded, gpus=2))
    provider = _gateway()
    found = provider.gpu_check()
    assert found == {"gpu_cc_checked": "nvml", "gpu_count": 2, "switch_tnvl_checked": None, "switch_count": None}
    engine = EchoEngine()
    app = create_app(engine=engine, keyring=ohttp.KeyRing([ohttp.GatewayKey.generate(0)]), provider=provider,
                     config=GatewayConfig(**found), api=Api(engine))
    state = app[STATE]
    assert state.bundle is not None
    assert (state.bundle.config["gpu_cc_checked"], state.bundle.config["gpu_count"]) == ("nvml", 2)
    policy = Policy(nvidia=NvidiaPolicy(any_version=True, accept_unverifiable_cc_mode=True),
                    config=ConfigPolicy(require={"gpu_cc_checked": "nvml", "gpu_count": 2}))
    v = verify_bundle(state.bundle, state.keys_body, policy, now=NOW, allow_simulated=True)
    checks = {c.name: c.ok for c in v.checks}
    assert checks["gateway configuration gpu_cc_checked"] is True and checks["gateway configuration gpu_count"]
    assert checks["gpus cc mode checked in the TEE"] is True and checks["gpus bound count"] is True
    # The recorded reports answer the recording's nonce, not this key configuration's: that binding must fail.
    assert checks["gpu[0] nonce"] is False
    # A bundle whose bound count is not the number of GPU reports (a GPU left out) fails at that check.
    from enclave.attestation import SimulatedProvider

    short = SimulatedProvider().collect(state.keys_body, gpu_evidence=state.bundle.gpu_evidence,
                                        config={**state.bundle.config, "gpu_count": 3})
    assert {c.name: c.ok for c in verify_bundle(short, state.keys_body, policy, now=NOW,
                                                 allow_simulated=True).checks}["gpus bound count"] is False


def test_a_command_source_binds_command_and_a_policy_demanding_nvml_refuses_it(recorded: tuple[bytes, bytes]) -> None:
    import ohttp
    from enclave.attestation import SimulatedProvider
    from enclave.attestation.gateway_evidence import GatewayEvidence, GpuEvidenceCommand
    from enclave.attestation.nvidia import encode_gpu_evidence
    from enclave.attestation.policy import ConfigPolicy, Policy
    from enclave.attestation.verify import verify_bundle

    assert GatewayEvidence(SimulatedProvider(), gpu=GpuEvidenceCommand(["true"])).gpu_check() == {
        "gpu_cc_checked": "command", "gpu_count": None, "switch_tnvl_checked": None, "switch_count": None}
    assert GatewayEvidence(SimulatedProvider()).gpu_check() == {"gpu_cc_checked": None, "gpu_count": None,
                                                                "switch_tnvl_checked": None, "switch_count": None}
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    bundle = SimulatedProvider().collect(keys, gpu_evidence=encode_gpu_evidence([(recorded[0], recorded[1].decode())]),
                                         config={"gpu_cc_checked": "command", "gpu_count": None})
    policy = Policy(nvidia=NvidiaPolicy(any_version=True, accept_unverifiable_cc_mode=True),
                    config=ConfigPolicy(require={"gpu_cc_checked": "nvml"}))
    checks = {c.name: c.ok for c in verify_bundle(bundle, keys, policy, now=NOW, allow_simulated=True).checks}
    assert checks["gateway configuration gpu_cc_checked"] is False
    assert "gpus cc mode checked in the TEE" not in checks and "gpus bound count" not in checks


def test_gpus_that_fail_the_check_stop_the_gateway_and_a_changed_count_is_refused(
    recorded: tuple[bytes, bytes], install: Callable[[FakeLibNvml], FakeLibNvml]
) -> None:
    from enclave.cli import _gpu_check

    install(FakeLibNvml(*recorded, dev_tools=1))
    with pytest.raises(SystemExit, match="veil gateway: GPU check: the GPU is in CC dev-tools mode"):
        _gpu_check(_gateway())
    lib = install(FakeLibNvml(*recorded, gpus=2))
    provider = _gateway()
    assert _gpu_check(provider) == {"gpu_cc_checked": "nvml", "gpu_count": 2, "switch_tnvl_checked": None, "switch_count": None}
    lib.gpus = 1
    with pytest.raises(CollateralUnavailableError, match="NVML now sees 1 GPUs, 2 at start"):
        provider.gpu.collect(NONCE)
