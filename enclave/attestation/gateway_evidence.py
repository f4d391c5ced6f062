"""What the gateway publishes: CPU evidence, GPU (and NVSwitch) evidence collected with the key-derived nonce, TDX
collateral.

``GatewayEvidence`` composes the pieces in the order the binding needs: GPU and switch evidence first (their nonce
is derived from the key configuration), then the CPU report over SHA-256 of those exact bytes, then (TDX) the
collateral a client needs to verify offline.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .bundle import Bundle, ConfigValue, gpu_nonce
from .errors import CollateralUnavailableError, EvidenceFormatError
from .provider import EvidenceProvider

if TYPE_CHECKING:
    from .nvidia.collect import Fetch
    from .nvidia.staple import OcspFetch


class GpuEvidenceCommand:
    """Collects NVIDIA GPU evidence by running an operator-supplied command (NVIDIA's tools) with the nonce.

    The command gets the 32-byte nonce as 64 hex characters in its last argument and must print nvtrust's evidence
    list as JSON (``[{"evidence": <b64 report>, "certificate": <b64 PEM chain>}, ...]``), one entry per GPU.
    """

    def __init__(self, command: list[str], timeout: float = 120.0) -> None:
        self.command = command
        self.timeout = timeout

    def collect(self, nonce: bytes) -> bytes:
        from .nvidia import encode_gpu_evidence, load_nvtrust_evidence_list

        try:
            out = subprocess.run([*self.command, nonce.hex()], capture_output=True, timeout=self.timeout, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            raise CollateralUnavailableError(f"GPU evidence command failed: {exc}") from None
        return encode_gpu_evidence(load_nvtrust_evidence_list(out.stdout))


class NvmlGpuEvidence:
    """Collects NVIDIA GPU evidence in-process through NVML (``nvidia-ml-py``; see :mod:`.nvidia.nvml`). Every
    collection first checks CC on, production, dev tools off; after :meth:`check` it also refuses evidence for a
    number of GPUs other than the one checked (and bound) at start."""

    def __init__(self) -> None:
        self.count: int | None = None

    def check(self) -> int:
        """The GPU count, after NVML's CC checks (:func:`.nvidia.nvml.check_cc`); kept for later collections.

        Raises:
            CollateralUnavailableError: the GPUs must not be attested (the message says why).
        """
        from .nvidia.nvml import NvmlEvidenceError, check_cc

        try:
            self.count = check_cc()
        except NvmlEvidenceError as exc:
            raise CollateralUnavailableError(f"GPU check: {exc}") from None
        return self.count

    def collect(self, nonce: bytes) -> bytes:
        from .nvidia import encode_gpu_evidence, load_nvtrust_evidence_list
        from .nvidia.nvml import NvmlEvidenceError, collect_evidence_list

        try:
            listing = collect_evidence_list(nonce)
        except NvmlEvidenceError as exc:
            raise CollateralUnavailableError(f"GPU evidence: {exc}") from None
        gpus = load_nvtrust_evidence_list(listing)
        if self.count is not None and len(gpus) != self.count:
            raise CollateralUnavailableError(f"GPU evidence: NVML now sees {len(gpus)} GPUs, {self.count} at start "
                                             "(bound as gpu_count); restart the gateway")
        return encode_gpu_evidence(gpus)


class GpuEvidenceSource(Protocol):
    def collect(self, nonce: bytes) -> bytes:
        """Veil's encoding of every GPU's evidence, each collected with ``nonce``."""
        ...


class NscqSwitchEvidence:
    """Collects NVSwitch evidence in-process through NSCQ (NVIDIA's ``NSCQHandler``; see :mod:`.nvidia.nscq`).
    Every collection first checks LS10, TNVL on and locked; after :meth:`check` it also refuses evidence for a
    number of switches other than the one checked at start. ``nscq``: the module providing ``NSCQHandler``
    (default: NVIDIA's)."""

    def __init__(self, nscq: Any | None = None) -> None:
        self.nscq = nscq
        self.count: int | None = None

    def check(self) -> int:
        """The switch count, after NSCQ's checks (:func:`.nvidia.nscq.switch_uuids`); kept for later collections.

        Raises:
            CollateralUnavailableError: the switches must not be attested (the message says why).
        """
        from .nvidia.nscq import NscqEvidenceError, switch_uuids

        try:
            self.count = len(switch_uuids(self.nscq))
        except NscqEvidenceError as exc:
            raise CollateralUnavailableError(f"NVSwitch check: {exc}") from None
        return self.count

    def collect(self, nonce: bytes) -> list[tuple[bytes, str]]:
        from .nvidia.nscq import NscqEvidenceError, collect_switch_evidence

        try:
            switches = collect_switch_evidence(nonce, self.nscq)
        except NscqEvidenceError as exc:
            raise CollateralUnavailableError(f"NVSwitch evidence: {exc}") from None
        if self.count is not None and len(switches) != self.count:
            raise CollateralUnavailableError(f"NVSwitch evidence: NSCQ now sees {len(switches)} switches, "
                                             f"{self.count} at start; restart the gateway")
        return switches


class SwitchEvidenceSource(Protocol):
    def collect(self, nonce: bytes) -> list[tuple[bytes, str]]:
        """Every NVSwitch's ``(attestation report, PEM chain)``, each report collected with ``nonce``."""
        ...


class GatewayEvidence:
    """An :class:`EvidenceProvider` that adds GPU evidence (with the NVSwitch evidence of a protected-PCIe system)
    and TDX collateral around a CPU provider."""

    def __init__(self, cpu: EvidenceProvider, *, gpu: GpuEvidenceSource | None = None,
                 pccs_url: str | None = None, gpu_rim_dir: Path | None = None, gpu_rim_url: str | None = None,
                 fetch: Fetch | None = None, gpu_ocsp_url: str | None = None,
                 ocsp_fetch: OcspFetch | None = None, switches: SwitchEvidenceSource | None = None) -> None:
        from .nvidia.collect import RimCollector, RimDirectory, RimService, RimSource
        from .nvidia.staple import OcspStapler

        if switches is not None and gpu is None:
            raise ValueError("switch evidence needs GPU evidence (the switches answer the GPUs' nonce)")
        self.cpu = cpu
        self.gpu = gpu
        #: NVSwitch evidence, collected with the GPUs' key-derived nonce into the same bound bytes (version 2)
        self.switches = switches
        self.pccs_url = pccs_url
        sources: list[RimSource] = []
        if gpu_rim_dir is not None:
            sources.append(RimDirectory(gpu_rim_dir))
        if gpu_rim_url is not None:
            sources.append(RimService(gpu_rim_url, fetch))
        #: from the operator's folder of NVIDIA RIM files (``*.xml``, ``*.swidtag``) and/or NVIDIA's RIM service: the
        #: RIMs this machine's GPUs name travel in every bundle, so clients compare measurements offline
        self.rims = RimCollector(sources) if sources else None
        #: staples OCSP responses for the device and RIM chains (``certs["nvidia_ocsp"]``), refreshed before they lapse
        self.ocsp = None if gpu_ocsp_url is None else OcspStapler(gpu_ocsp_url, ocsp_fetch)
        self.platform = cpu.platform

    def gpu_check(self) -> dict[str, ConfigValue]:
        """What the gateway checks of its GPUs and switches itself, for the bound configuration: ``gpu_cc_checked``
        "nvml" (with the GPU count NVML sees now, after its CC checks), "command" (the operator's command; nothing
        checked here) or None (no GPU evidence), ``gpu_count``, ``switch_tnvl_checked`` "nscq" (every switch
        LS10 in locked TNVL mode, checked through NSCQ) or None (no switch evidence), and ``switch_count``.

        Raises:
            CollateralUnavailableError: NVML says the GPUs must not be attested, or NSCQ the switches.
        """
        switch: dict[str, ConfigValue] = {"switch_tnvl_checked": None, "switch_count": None}
        if isinstance(self.switches, NscqSwitchEvidence):
            # switches not in locked TNVL mode stop the gateway here, as GPUs with CC off do
            switch = {"switch_tnvl_checked": "nscq", "switch_count": self.switches.check()}
        if isinstance(self.gpu, NvmlGpuEvidence):
            return {"gpu_cc_checked": "nvml", "gpu_count": self.gpu.check(), **switch}
        return {"gpu_cc_checked": None if self.gpu is None else "command", "gpu_count": None, **switch}

    def evidence_expiry(self, bundle: Bundle) -> float | None:
        """When the bundle stops verifying (None: it does not expire by itself): the CPU evidence's expiry, or the
        earliest nextUpdate of its stapled OCSP responses if sooner (the gateway collects again before either)."""
        from .nvidia.ocsp import OCSP_CERT_KEY
        from .nvidia.staple import ocsp_expiry

        expiry = getattr(self.cpu, "evidence_expiry", None)
        times = [t for t in (None if expiry is None else expiry(bundle),
                             ocsp_expiry(bundle.certs[OCSP_CERT_KEY]) if OCSP_CERT_KEY in bundle.certs else None)
                 if t is not None]
        return min(times) if times else None

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> Bundle:
        if self.gpu is not None and not gpu_evidence:
            gpu_evidence = self.gpu.collect(gpu_nonce(key_config))
            if self.switches is not None:
                from .nvidia import decode_gpu_evidence, encode_gpu_evidence

                # The switches answer the same key-derived nonce; their evidence joins the GPUs' bytes, so the one
                # SHA-256 in REPORT_DATA binds both (no new bundle field, the page's binding is unchanged).
                switches = self.switches.collect(gpu_nonce(key_config))
                gpu_evidence = encode_gpu_evidence(decode_gpu_evidence(gpu_evidence), switches)
        bundle = self.cpu.collect(key_config, nonce, gpu_evidence, config)
        rims: list[bytes] = []
        if gpu_evidence and self.rims is not None:
            from .nvidia.rim import RIMS_CERT_KEY, encode_rim_list

            rims = self.rims.rims(gpu_evidence)
            bundle = replace(bundle, certs={**bundle.certs, RIMS_CERT_KEY: encode_rim_list(rims)})
        if gpu_evidence and self.ocsp is not None:
            from .nvidia.ocsp import OCSP_CERT_KEY, encode_ocsp_list
            from .nvidia.staple import ocsp_targets

            stapled = self.ocsp.responses(ocsp_targets(gpu_evidence, rims))
            if stapled:
                bundle = replace(bundle, certs={**bundle.certs, OCSP_CERT_KEY: encode_ocsp_list(stapled)})
        if "collateral" not in bundle.certs:
            if bundle.platform == "tdx":
                bundle = replace(bundle, certs={**bundle.certs, "collateral": self._tdx_collateral(bundle.report)})
            elif bundle.platform == "az-tdx-vtpm":  # the TD quote travels beside the HCL report
                td_quote = base64.b64decode(bundle.certs["td_quote"])
                bundle = replace(bundle, certs={**bundle.certs, "collateral": self._tdx_collateral(td_quote)})
        return bundle

    def _tdx_collateral(self, quote: bytes) -> str:
        # Clients verify offline, so the gateway ships the collateral (fetched from the operator's PCCS or Intel PCS).
        try:
            import dcap_qvl

            if self.pccs_url:
                coll = dcap_qvl.get_collateral(self.pccs_url, quote)
            else:
                import asyncio
                from concurrent.futures import ThreadPoolExecutor

                # The gateway calls this from inside its event loop: run the library's coroutine on its own loop.
                with ThreadPoolExecutor(1) as pool:
                    coll = pool.submit(asyncio.run, dcap_qvl.get_collateral_from_pcs(quote)).result()
            text: str = coll.to_json()
            return text
        except EvidenceFormatError:
            raise
        except Exception as exc:
            raise CollateralUnavailableError(
                f"cannot fetch TDX collateral ({exc}); set --pccs-url to a reachable PCCS"
            ) from None


def rims_for(gpu_evidence: bytes, rim_dir: Path) -> list[bytes]:
    """The RIM files in ``rim_dir`` that the GPUs of ``gpu_evidence`` need: for each distinct driver and VBIOS RIM the
    reports name, the file whose ``colloquialVersion`` is that version (VBIOS case-insensitively; among several, the
    one whose ``product`` is the GPU's chip). The gateway does not judge them (the client authenticates every RIM); it
    only picks (:class:`.nvidia.collect.RimCollector`).

    Raises:
        CollateralUnavailableError: a needed RIM is missing, or more than one file fits it.
    """
    from .nvidia.collect import RimCollector, RimDirectory

    return RimCollector([RimDirectory(rim_dir)]).rims(gpu_evidence)
