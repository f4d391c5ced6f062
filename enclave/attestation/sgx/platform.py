"""Intel SGX in the registry (verifier only): bundles ``sgx`` (quote v3 + DCAP collateral), the ``[sgx]``
section."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..platform import Platform
from ..result import Verdict
from .policy import SgxPolicy

if TYPE_CHECKING:
    from ..policy import Policy


def _verify(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    from .verify import verify_sgx

    return verify_sgx(bundle.report, bundle.certs.get("collateral"), policy.get(SgxPolicy), now=now,
                      expected_report_data=expected_rd)


PLATFORM = Platform(
    key="sgx", table="sgx", policy=SgxPolicy, parse_policy=lambda data, base: SgxPolicy.from_dict(data),
    names=("sgx",), verify=_verify, audit=lambda section: replace(section, any_measurement=True),
)
