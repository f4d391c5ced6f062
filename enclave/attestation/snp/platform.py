"""AMD SEV-SNP in the registry: bundles ``sev-snp`` (report + VCEK/VLEK chain), the ``[sev-snp]`` section, and
the configfs-tsm provider (``--attestation sev-snp``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..platform import Platform
from ..result import Verdict
from .policy import SnpPolicy

if TYPE_CHECKING:
    from ..policy import Policy
    from ..provider import EvidenceProvider, ProviderOptions


def _verify(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    from .verify import verify_snp

    return verify_snp(bundle.report, bundle.certs, policy.get(SnpPolicy), now=now, expected_report_data=expected_rd)


def _provider(options: ProviderOptions) -> EvidenceProvider:
    from ..tsm import tsm_provider

    return tsm_provider("sev-snp")


PLATFORM = Platform(
    key="snp", table="sev-snp", policy=SnpPolicy, parse_policy=SnpPolicy.from_dict, names=("sev-snp",),
    verify=_verify, provider_kind="sev-snp", provider=_provider,
    audit=lambda section: replace(section, any_measurement=True),
)
