"""The outcome of a verification: one :class:`Check` per thing checked, readable as a document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    """One check: what, expected, found, and whether it passed. ``ok=None`` means "not checked" (never a pass)."""

    name: str
    ok: bool | None
    expected: str = ""
    found: str = ""
    detail: str = ""

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        parts = [f"[{mark}] {self.name}"]
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.found:
            parts.append(f"found {self.found}")
        if self.detail:
            parts.append(self.detail)
        return " | ".join(parts)


@dataclass
class Verdict:
    """Every check made on one piece of evidence (or a whole bundle). ``ok`` only if all passed and some ran."""

    platform: str
    checks: list[Check] = field(default_factory=list)
    measurement: bytes | None = None
    report_data: bytes | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    simulated: bool = False
    #: the gateway's configuration as its bundle binds it (None: not a gateway bundle, e.g. raw evidence)
    config: dict[str, Any] | None = None
    #: the key configurations the bundle binds, in published order (None: no key list, e.g. raw evidence)
    key_configs: list[dict[str, Any]] | None = None

    def add(self, name: str, ok: bool | None, expected: str = "", found: str = "", detail: str = "") -> bool:
        """Record a check; returns ``ok`` (False for None) so callers can chain."""
        self.checks.append(Check(name, ok, expected, found, detail))
        return bool(ok)

    def extend(self, other: Verdict, prefix: str = "") -> None:
        """Append another verdict's checks (e.g. the GPU's under the CPU's)."""
        for c in other.checks:
            self.checks.append(Check(prefix + c.name, c.ok, c.expected, c.found, c.detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok is True for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.ok is not True]

    def document(self) -> str:
        """The readable verification document: one line per check, then the verdict."""
        lines = [f"platform: {self.platform}" + ("  (SIMULATED: no TEE)" if self.simulated else "")]
        if self.measurement is not None:
            lines.append(f"measurement: {self.measurement.hex()}")
        if self.config is not None:
            lines.append("configuration (bound with the keys):" + ("" if self.config else " none"))
            lines += [f"  {k} = {_value(v)}" for k, v in sorted(self.config.items())]
        if self.key_configs is not None:
            lines.append("key configurations (bound, in the order published):")
            lines += [f"  key {k['key_id']}: {k['kem']} (0x{k['kem_id']:04x})"
                      + (", post-quantum" if k["post_quantum"] else "") for k in self.key_configs]
        lines += [c.line() for c in self.checks]
        lines.append("RESULT: " + ("PASS" if self.ok else f"FAIL ({len(self.failures)} failed or not checked)"))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "ok": self.ok,
            "simulated": self.simulated,
            "measurement": self.measurement.hex() if self.measurement else None,
            "claims": self.claims,
            "config": self.config,
            "key_configs": self.key_configs,
            "checks": [{"name": c.name, "ok": c.ok, "expected": c.expected, "found": c.found, "detail": c.detail}
                       for c in self.checks],
        }


def _value(value: Any) -> str:
    """A configuration value as the document shows it: JSON (strings quoted, null, true/false)."""
    import json

    return json.dumps(value, ensure_ascii=False)
