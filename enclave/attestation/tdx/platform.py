"""Intel TDX in the registry: bundles ``tdx`` (quote + DCAP collateral), the ``[tdx]`` section, and the
configfs-tsm provider (``--attestation tdx``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..platform import Platform
from ..result import Verdict
from .policy import TdxPolicy

if TYPE_CHECKING:
    from ..policy import Policy
    from ..provider import EvidenceProvider, ProviderOptions


def _verify(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    collateral = bundle.certs.get("collateral")
    if collateral is None:
        v = Verdict(platform="tdx")
        v.add("TDX collateral present", False, "collateral in the bundle", "none")
        return v
    from .verify import verify_tdx

    return verify_tdx(bundle.report, collateral, policy.get(TdxPolicy), now=now, expected_report_data=expected_rd)


def _provider(options: ProviderOptions) -> EvidenceProvider:
    from ..tsm import tsm_provider

    return tsm_provider("tdx")


PLATFORM = Platform(
    key="tdx", table="tdx", policy=TdxPolicy, parse_policy=TdxPolicy.from_dict, names=("tdx",),
    verify=_verify, provider_kind="tdx", provider=_provider,
    audit=lambda section: replace(section, any_measurement=True),
)
