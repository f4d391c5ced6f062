"""The ``[sev-snp]`` policy section: launch digests, minimum TCB, VMPL, key kinds, debug and migration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EvidenceFormatError


@dataclass(frozen=True)
class SnpPolicy:
    measurements: tuple[bytes, ...] = ()
    any_measurement: bool = False  # only from `veil attest verify --any-measurement`; says so in the document
    min_tcb: dict[str, int] = field(default_factory=dict)
    vmpl: tuple[int, ...] = (0,)
    allow_vlek: bool = True
    allow_debug: bool = False
    allow_migration_agent: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path | None = None) -> SnpPolicy:
        """The section from its TOML table; unknown keys are errors."""
        d = dict(data)
        policy = cls(
            measurements=tuple(bytes.fromhex(m) for m in d.pop("measurements", [])),
            min_tcb={k: int(v) for k, v in d.pop("min_tcb", {}).items()},
            vmpl=tuple(int(v) for v in d.pop("vmpl", [0])),
            allow_vlek=bool(d.pop("allow_vlek", True)),
            allow_debug=bool(d.pop("allow_debug", False)),
            allow_migration_agent=bool(d.pop("allow_migration_agent", False)),
        )
        if d:
            raise EvidenceFormatError(f"unknown keys in [sev-snp]: {sorted(d)}")
        return policy
