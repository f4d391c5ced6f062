"""The ``[nvidia]`` policy section: driver and VBIOS allow lists, and the Hopper CC-mode caveat."""

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
    #: Hopper evidence has no CC on/off field; without RIM comparison the check cannot pass. An operator who accepts
    #: that risk says so here, and the verification document says it was accepted, not verified.
    accept_unverifiable_cc_mode: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> NvidiaPolicy:
        """The section from its TOML table; unknown keys are errors."""
        d = dict(data)
        policy = cls(
            allowed_driver_versions=tuple(d.pop("allowed_driver_versions", [])),
            allowed_vbios_versions=tuple(d.pop("allowed_vbios_versions", [])),
            accept_unverifiable_cc_mode=bool(d.pop("accept_unverifiable_cc_mode", False)),
        )
        if d:
            raise EvidenceFormatError(f"unknown keys in [nvidia]: {sorted(d)}")
        return policy
