"""Evidence providers: their interface, their typed options, and the factory behind ``--attestation`` (for
``veil gateway`` and ``veil broker`` alike; each command prefixes :class:`ProviderError` with its own name)."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, Protocol

from .bundle import Bundle, ConfigValue
from .errors import ProviderError


class EvidenceProvider(Protocol):
    """Collects evidence that binds a key configuration."""

    #: "simulated", "sev-snp", "tdx", ...
    platform: str

    # Optional: ``evidence_expiry(bundle) -> float | None``: the unix time the bundle stops verifying (a Nitro
    # document's leaf certificate, an MAA token's exp); the gateway collects again halfway there.

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> Bundle:
        """Evidence whose REPORT_DATA is :func:`report_data` of ``key_config``, ``gpu_evidence``, ``nonce`` and
        ``config`` (the gateway's bound configuration; ``{}`` when None), carried as the bundle's ``config``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderOptions:
    """What the providers need besides their kind (``veil gateway``/``veil broker`` options of the same names)."""

    #: TPM2TOOLS_TCTI for tpm2-tools (None: the kernel's /dev/tpmrm0)
    tpm_tcti: str | None = None
    azure_imds_url: str = "http://169.254.169.254"
    #: an MAA instance to attach a token from (Azure); None: no token
    maa_url: str | None = None
    nsm_device: str = "/dev/nsm"
    #: PCCS for TDX collateral (None: Intel PCS)
    pccs_url: str | None = None
    #: GPU evidence: "nvml" collects it in-process; a command prints it; "none" without a command: no GPU evidence
    gpu_evidence: Literal["none", "nvml"] = "none"
    gpu_evidence_command: str | None = None
    #: NVSwitch evidence of a protected-PCIe system: "nscq" collects it in-process (with GPU evidence); "none": none
    switch_evidence: Literal["none", "nscq"] = "none"
    #: NVIDIA RIMs for the GPUs: the operator's folder of RIM files and/or NVIDIA's RIM service (or a mirror)
    gpu_rim_dir: str | None = None
    gpu_rim_url: str | None = None
    #: OCSP responder for the device and RIM chains (stapled into the bundle); None: nothing stapled
    gpu_ocsp_url: str | None = None


#: Devices of TEE guests; simulated evidence is refused where one exists.
TEE_DEVICES: Final = ("/sys/kernel/config/tsm/report", "/dev/sev-guest", "/dev/tdx_guest", "/dev/nsm")
#: On an Azure CVM the guest sees no TEE device (the paravisor owns it) but a vTPM.
VTPM_DEVICE: Final = "/dev/tpmrm0"


def _kinds() -> tuple[str, ...]:
    from .registry import PROVIDERS

    return ("simulated", "auto", *(k for k in PROVIDERS if k != "simulated"))


#: ``--attestation`` values of ``veil gateway`` and ``veil broker``.
PROVIDER_KINDS: Final = _kinds()


def make_provider(kind: str, options: ProviderOptions | None = None) -> EvidenceProvider:
    """The evidence provider for ``--attestation kind``, with GPU evidence as ``options`` ask. Simulated is refused
    on TEE hardware and a real one without it: no silent fallback.

    Raises:
        ProviderError: the platform is not here (the message names the option; the caller adds its command).
    """
    from .registry import PROVIDERS

    opts = options or ProviderOptions()
    present = [d for d in TEE_DEVICES if os.path.exists(d)]
    if kind == "simulated":
        from .azure.vtpm import hcl_report_present

        if not present and hcl_report_present(opts.tpm_tcti):
            present = ["an Azure HCL report in the vTPM"]
        if present:
            raise ProviderError(f"TEE hardware found ({', '.join(present)}); refusing to publish simulated evidence "
                                "on real hardware. Use --attestation auto.")
    elif kind == "auto":
        if not present and os.path.exists(VTPM_DEVICE):
            kind = "azure"
        elif present == ["/dev/nsm"]:
            kind = "nitro"
    if kind == "auto":
        from .tsm import tsm_provider

        cpu: EvidenceProvider = tsm_provider(None)
    elif (platform := PROVIDERS.get(kind)) is not None and platform.provider is not None:
        cpu = platform.provider(opts)
    else:
        raise ProviderError(f"--attestation {kind}: unknown (one of {', '.join(PROVIDER_KINDS)})")
    return _with_gpu(cpu, opts)


def _with_gpu(cpu: EvidenceProvider, opts: ProviderOptions) -> EvidenceProvider:
    from .gateway_evidence import (
        GatewayEvidence,
        GpuEvidenceCommand,
        GpuEvidenceSource,
        NscqSwitchEvidence,
        NvmlGpuEvidence,
    )

    gpu: GpuEvidenceSource | None = None
    if opts.gpu_evidence_command and opts.gpu_evidence != "none":
        raise ProviderError("give --gpu-evidence or --gpu-evidence-command, not both")
    if opts.gpu_evidence_command:
        gpu = GpuEvidenceCommand(shlex.split(opts.gpu_evidence_command))
    elif opts.gpu_evidence == "nvml":
        gpu = NvmlGpuEvidence()
    switches = NscqSwitchEvidence() if opts.switch_evidence == "nscq" else None
    if switches is not None and gpu is None:
        raise ProviderError("--switch-evidence nscq needs GPU evidence (--gpu-evidence nvml or "
                            "--gpu-evidence-command): the switches answer the GPUs' nonce")
    if (opts.gpu_rim_dir or opts.gpu_rim_url or opts.gpu_ocsp_url) and gpu is None:
        raise ProviderError("--gpu-rim-dir/--gpu-rim-url/--gpu-ocsp-url need GPU evidence (--gpu-evidence nvml or "
                            "--gpu-evidence-command)")
    rim_dir = None
    if opts.gpu_rim_dir:
        rim_dir = Path(opts.gpu_rim_dir)
        if not rim_dir.is_dir():
            raise ProviderError(f"--gpu-rim-dir {opts.gpu_rim_dir}: not a directory")
    for name, url in (("--gpu-rim-url", opts.gpu_rim_url), ("--gpu-ocsp-url", opts.gpu_ocsp_url)):
        if url and not url.startswith(("https://", "http://")):
            raise ProviderError(f"{name} {url}: not an http(s) URL")
    return GatewayEvidence(cpu, gpu=gpu, pccs_url=opts.pccs_url, gpu_rim_dir=rim_dir, gpu_rim_url=opts.gpu_rim_url,
                           gpu_ocsp_url=opts.gpu_ocsp_url, switches=switches)
