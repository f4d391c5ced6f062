"""Attestation policies for the key broker (and for gateways attesting the broker): Veil's client policy plus an
allow list for simulated evidence, and the one rule that nothing passes without a measurement check.

A policy file is the client policy TOML (``enclave.attestation.policy``) with one extra, optional table::

    platforms = ["sev-snp", "tdx"]
    [sev-snp]
    measurements = ["<96 hex>"]
    [simulated]                     # only honoured with an --insecure-allow-simulated* flag
    measurements = ["<96 hex>"]     # e.g. enclave.attestation.simulated.MEASUREMENT

Imports only ``enclave.attestation`` (no aiohttp), so the gateway's KBS client shares it.
"""

from __future__ import annotations

import hmac
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..attestation.bundle import Bundle
from ..attestation.errors import EvidenceFormatError
from ..attestation.policy import Policy
from ..attestation.result import Verdict
from ..attestation.snp.policy import SnpPolicy
from ..attestation.tdx.policy import TdxPolicy
from ..attestation.verify import verify_bundle


@dataclass(frozen=True)
class AttestationPolicy:
    """A Veil :class:`Policy` plus the measurements simulated evidence may carry. Empty lists accept nothing."""

    policy: Policy = field(default_factory=Policy)
    simulated_measurements: tuple[bytes, ...] = ()
    source: str = "(built-in: accepts nothing)"

    @classmethod
    def load(cls, path: str | Path) -> AttestationPolicy:
        """Read a policy file; unknown keys are errors (a typo must not loosen it).

        Raises:
            EvidenceFormatError: unreadable file or invalid content.
        """
        try:
            data: dict[str, Any] = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise EvidenceFormatError(f"cannot read policy {path}: {exc}") from None
        sim = dict(data.pop("simulated", {}))
        try:
            measurements = tuple(bytes.fromhex(m) for m in sim.pop("measurements", []))
        except (TypeError, ValueError) as exc:
            raise EvidenceFormatError(f"invalid [simulated] measurements in {path}: {exc}") from None
        if sim:
            raise EvidenceFormatError(f"unknown keys in [simulated] of {path}: {sorted(sim)}")
        return cls(policy=Policy.from_dict(data), simulated_measurements=measurements, source=str(path))

    def has_measurements(self) -> bool:
        """Whether any evidence could ever pass (an operator hint; an empty policy is safe, just useless)."""
        return bool(self.policy.get(SnpPolicy).measurements or self.policy.get(TdxPolicy).measurements
                    or self.simulated_measurements)


def check_evidence(bundle: Bundle, bound: bytes | None, policy: AttestationPolicy, *,
                   allow_simulated: bool) -> Verdict:
    """:func:`verify_bundle` against ``policy``, then the broker's rule: a passing ``measurement`` check is required.

    ``bound`` is the exact bytes the bundle must bind (``key_config``): the KBS report data for a gateway, the TLS
    certificate for a broker. SEV-SNP and TDX verifiers check measurements themselves; simulated evidence is
    checked here against ``[simulated] measurements``.
    """
    verdict = verify_bundle(bundle, bound, policy.policy, allow_simulated=allow_simulated)
    if verdict.simulated and allow_simulated and verdict.measurement is not None:
        found = verdict.measurement
        ok = any(hmac.compare_digest(found, m) for m in policy.simulated_measurements)
        verdict.add("measurement", ok, f"one of {len(policy.simulated_measurements)} allowed simulated measurements",
                    found.hex(), "" if ok else f"not in [simulated] measurements of {policy.source}")
    if not any(c.name == "measurement" and c.ok is True for c in verdict.checks):
        verdict.add("measurement checked", False, "a measurement compared with the policy", "none",
                    "nothing is accepted without a measurement check")
    return verdict
