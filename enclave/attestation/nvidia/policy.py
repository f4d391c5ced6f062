"""The ``[nvidia]`` policy section: driver and VBIOS allow lists, RIM pins, GPU and switch counts, and the CC-mode caveat."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EvidenceFormatError


@dataclass(frozen=True)
class NvidiaPolicy:
    allowed_driver_versions: tuple[str, ...] = ()
    allowed_vbios_versions: tuple[str, ...] = ()
    any_version: bool = False
    #: Without RIMs (reference measurements), CC mode / secure boot / debug state cannot be verified from a Hopper
    #: report. An operator who accepts that risk says so here, and the verification document says it was accepted,
    #: not verified. Unnecessary when the bundle carries NVIDIA-signed RIMs that match every measurement.
    accept_unverifiable_cc_mode: bool = False
    #: RIM service ids (``NV_GPU_DRIVER_GH100_595.71.05``, ``NV_GPU_VBIOS_1010_0210_886_96009F0004``,
    #: ``NV_GPU_CC_DRIVER_GB100_595.91.07``) the GPUs may be measured against; empty = any NVIDIA-signed RIM whose
    #: identity matches the report.
    allowed_rim_ids: tuple[str, ...] = ()
    #: SHA-256 of the RIM files accepted (pins one revision: NVIDIA re-issues RIMs under the same id); empty = any.
    allowed_rim_sha256: tuple[str, ...] = ()
    #: The number of GPUs the evidence must hold (None: any number, at least one).
    gpu_count: int | None = None
    #: The number of NVSwitches (protected-PCIe systems) the switch evidence must hold (None: not checked).
    switch_count: int | None = None
    #: Refuse a GPU whose device or RIM chain has no good stapled OCSP answer (revoked is refused regardless).
    require_ocsp: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> NvidiaPolicy:
        """The section from its TOML table; unknown keys are errors."""
        d = dict(data)
        count = d.pop("gpu_count", None)
        if count is not None and (type(count) is not int or not 1 <= count <= 64):
            raise EvidenceFormatError(f"[nvidia] gpu_count must be an integer 1..64, not {count!r}")
        switches = d.pop("switch_count", None)
        if switches is not None and (type(switches) is not int or not 0 <= switches <= 16):
            raise EvidenceFormatError(f"[nvidia] switch_count must be an integer 0..16, not {switches!r}")
        policy = cls(
            allowed_driver_versions=tuple(d.pop("allowed_driver_versions", [])),
            allowed_vbios_versions=tuple(d.pop("allowed_vbios_versions", [])),
            accept_unverifiable_cc_mode=bool(d.pop("accept_unverifiable_cc_mode", False)),
            allowed_rim_ids=tuple(d.pop("allowed_rim_ids", [])),
            allowed_rim_sha256=tuple(str(x).lower() for x in d.pop("allowed_rim_sha256", [])),
            gpu_count=count,
            switch_count=switches,
            require_ocsp=bool(d.pop("require_ocsp", False)),
        )
        if d:
            raise EvidenceFormatError(f"unknown keys in [nvidia]: {sorted(d)}")
        return policy
