"""Simulated evidence in the registry: bundles ``simulated``, accepted only when the caller allows it
(``--insecure-allow-simulated``), never by a policy; the provider (``--attestation simulated``) refuses to run on
TEE hardware."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..platform import Platform
from ..result import Verdict
from . import PLATFORM as NAME
from . import SimulatedEvidenceError, SimulatedProvider, verify_simulated

if TYPE_CHECKING:
    from ..policy import Policy
    from ..provider import EvidenceProvider, ProviderOptions


@dataclass(frozen=True)
class SimulatedPolicy:
    """Simulated evidence has no policy section: whether it is accepted is the caller's ``allow_simulated``."""


def _verify(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    verdict = Verdict(platform=NAME)
    try:
        sim = verify_simulated(bundle, allow_simulated=True)
        verdict.add("simulated evidence signature and binding", True, detail="INSECURE: no TEE")
        verdict.measurement = sim.measurement
    except SimulatedEvidenceError as exc:
        verdict.add("simulated evidence", False, detail=str(exc))
    return verdict


def _provider(options: ProviderOptions) -> EvidenceProvider:
    return SimulatedProvider()


PLATFORM = Platform(
    key="simulated", table="", policy=SimulatedPolicy, parse_policy=lambda data, base: SimulatedPolicy(),
    names=(NAME,), verify=_verify, provider_kind="simulated", provider=_provider, simulated=True,
)
