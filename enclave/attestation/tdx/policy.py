"""The ``[tdx]`` policy section: MRTD/RTMR sets, accepted TCB status, debug."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EvidenceFormatError


@dataclass(frozen=True)
class TdxPolicy:
    measurements: tuple[dict[str, bytes], ...] = ()
    any_measurement: bool = False
    allowed_status: tuple[str, ...] = ("UpToDate",)
    allow_debug: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> TdxPolicy:
        """The section from its TOML table; unknown keys are errors."""
        d = dict(data)
        policy = cls(
            measurements=tuple({k: bytes.fromhex(v) for k, v in m.items()} for m in d.pop("measurements", [])),
            allowed_status=tuple(d.pop("allowed_status", ["UpToDate"])),
            allow_debug=bool(d.pop("allow_debug", False)),
        )
        if d:
            raise EvidenceFormatError(f"unknown keys in [tdx]: {sorted(d)}")
        return policy
