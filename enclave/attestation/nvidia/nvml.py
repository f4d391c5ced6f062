"""NVIDIA GPU evidence through NVML (``nvidia-ml-py``), the library NVIDIA's own attestation SDK collects it with.

For each GPU: check that the system is in confidential-computing mode (``nvmlSystemGetConfComputeState``: feature
enabled, production environment), then ask for the SPDM attestation report over the 32-byte nonce
(``nvmlDeviceGetConfComputeGpuAttestationReport``) and the device certificate chain
(``nvmlDeviceGetConfComputeGpuCertificate``). The output is nvtrust's evidence list, which
:func:`enclave.attestation.nvidia.abi.load_nvtrust_evidence_list` reads::

    [{"evidence": b64(SPDM report), "certificate": b64(PEM chain), "arch": "HOPPER"}, ...]

Hopper evidence does not say whether CC mode is on, so a client cannot check it (see the verifier): refusing to
produce evidence when NVML says CC is off is the gateway's own safety net, not something the client relies on.
It also gives the operator the reason: on a real H100 with CC off (driver 580.159.04, `scripts/gpu-check`), the
report and certificate calls answer only "Unknown Error".

Standard library and ``pynvml`` only, so that the file also runs on its own as ``--gpu-evidence-command``::

    python3 enclave/attestation/nvidia/nvml.py <64 hex nonce>     # prints the evidence list
    python3 enclave/attestation/nvidia/nvml.py --probe            # prints what NVML says about CC mode
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Sequence
from typing import Any, Final

NONCE_SIZE: Final = 32
#: nvmlSystemGetConfComputeState().environment / .ccFeature values (nvml.h)
CC_ENVIRONMENTS: Final = {0: "unavailable", 1: "simulated", 2: "production"}
CC_FEATURE_ENABLED: Final = 1
CC_ENVIRONMENT_PROD: Final = 2


class NvmlEvidenceError(Exception):
    """NVML produced no evidence (no driver, CC off, an NVML error); the message says what to do."""


def _nvml(module: Any | None) -> Any:
    if module is not None:
        return module
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        raise NvmlEvidenceError("nvidia-ml-py is not installed: pip install 'veil[gpu]' (or nvidia-ml-py)") from None
    return pynvml


def cc_state(nvml: Any | None = None) -> dict[str, Any]:
    """What NVML says about confidential computing: environment, feature, dev-tools mode, GPUs ready."""
    lib = _nvml(nvml)
    _init(lib)
    try:
        state = lib.nvmlSystemGetConfComputeState()
        out: dict[str, Any] = {
            "environment": CC_ENVIRONMENTS.get(state.environment, str(state.environment)),
            "cc_feature": "enabled" if state.ccFeature == CC_FEATURE_ENABLED else "disabled",
            "dev_tools_mode": bool(state.devToolsMode),
        }
        try:
            out["gpus_ready"] = bool(lib.nvmlSystemGetConfComputeGpusReadyState())
        except lib.NVMLError as exc:
            out["gpus_ready"] = f"unknown ({exc})"
        return out
    except lib.NVMLError as exc:
        raise NvmlEvidenceError(f"NVML cannot report confidential-computing state: {exc}") from None
    finally:
        lib.nvmlShutdown()


def collect_evidence_list(nonce: bytes, nvml: Any | None = None, *, allow_dev_tools: bool = False) -> bytes:
    """The nvtrust evidence list (JSON bytes) of every GPU, each report over ``nonce``.

    Raises:
        NvmlEvidenceError: no NVML, no GPU, CC mode off or not production, dev-tools mode on, or an NVML call failed.
    """
    if len(nonce) != NONCE_SIZE:
        raise NvmlEvidenceError(f"the GPU nonce must be {NONCE_SIZE} bytes, not {len(nonce)}")
    lib = _nvml(nvml)
    _init(lib)
    try:
        count = _checked_gpu_count(lib, allow_dev_tools)
        items = []
        for i in range(count):
            handle = lib.nvmlDeviceGetHandleByIndex(i)
            report = lib.nvmlDeviceGetConfComputeGpuAttestationReport(handle, list(nonce))
            cert = lib.nvmlDeviceGetConfComputeGpuCertificate(handle)
            evidence = bytes(report.attestationReport[: report.attestationReportSize])
            chain = bytes(cert.attestationCertChain[: cert.attestationCertChainSize])
            if not evidence or b"BEGIN CERTIFICATE" not in chain:
                raise NvmlEvidenceError(f"GPU {i}: NVML returned an empty report or certificate chain")
            items.append({"evidence": base64.b64encode(evidence).decode(),
                          "certificate": base64.b64encode(chain).decode(), "arch": "HOPPER"})
        return json.dumps(items).encode()
    except lib.NVMLError as exc:
        raise NvmlEvidenceError(f"NVML failed to produce GPU evidence: {exc}") from None
    finally:
        lib.nvmlShutdown()


def check_cc(nvml: Any | None = None, *, allow_dev_tools: bool = False) -> int:
    """The number of GPUs, after the checks :func:`collect_evidence_list` makes before every collection: CC feature
    on, production environment, dev-tools mode off, at least one GPU. What the gateway binds as its own check
    (``gpu_cc_checked = "nvml"``, ``gpu_count``).

    Raises:
        NvmlEvidenceError: no NVML, no GPU, CC mode off or not production, dev-tools mode on, or an NVML call failed.
    """
    lib = _nvml(nvml)
    _init(lib)
    try:
        return _checked_gpu_count(lib, allow_dev_tools)
    except lib.NVMLError as exc:
        raise NvmlEvidenceError(f"NVML failed to check the GPUs: {exc}") from None
    finally:
        lib.nvmlShutdown()


def _checked_gpu_count(lib: Any, allow_dev_tools: bool) -> int:
    try:
        state = lib.nvmlSystemGetConfComputeState()
    except lib.NVMLError as exc:
        raise NvmlEvidenceError(f"NVML cannot report confidential-computing state ({exc}): this driver or "
                                "GPU has no CC support") from None
    if state.ccFeature != CC_FEATURE_ENABLED:
        raise NvmlEvidenceError("the GPU is not in confidential-computing mode (NVML: CC feature disabled); "
                                "enable it with NVIDIA's gpu-admin-tools (--set-cc-mode=on) on the host")
    if state.environment != CC_ENVIRONMENT_PROD:
        raise NvmlEvidenceError(f"the CC environment is {CC_ENVIRONMENTS.get(state.environment, '?')}, not "
                                "production: its evidence is not trustworthy")
    if state.devToolsMode and not allow_dev_tools:
        raise NvmlEvidenceError("the GPU is in CC dev-tools mode (debugging allowed): refusing to attest it")
    count: int = lib.nvmlDeviceGetCount()
    if count < 1:
        raise NvmlEvidenceError("NVML sees no GPU")
    return count


def _init(lib: Any) -> None:
    try:
        lib.nvmlInit()
    except lib.NVMLError as exc:
        raise NvmlEvidenceError(f"cannot load NVML ({exc}): is the NVIDIA driver installed?") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``nvml.py NONCE_HEX`` prints the evidence list; ``nvml.py --probe`` prints the CC state. Exit 1 on error."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args == ["--probe"]:
            print(json.dumps(cc_state()))
            return 0
        if len(args) != 1:
            print("usage: nvml.py <64 hex nonce> | --probe", file=sys.stderr)
            return 2
        try:
            nonce = bytes.fromhex(args[0])
        except ValueError:
            print("nvml.py: the nonce must be hex", file=sys.stderr)
            return 2
        sys.stdout.write(collect_evidence_list(nonce).decode())
        return 0
    except NvmlEvidenceError as exc:
        print(f"nvml.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
