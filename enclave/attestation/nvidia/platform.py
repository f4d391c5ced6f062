"""NVIDIA Hopper CC GPUs in the registry: the ``[nvidia]`` section and the check of a bundle's GPU evidence (it
rides along a CPU platform's bundle, so it has no bundle name of its own)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..platform import Platform
from ..result import Verdict
from .policy import NvidiaPolicy

if TYPE_CHECKING:
    from ..policy import Policy


def _verify(bundle: Bundle, policy: Policy, now: dt.datetime, expected_nonce: bytes | None) -> Verdict:
    """The bundle's GPU evidence; ``expected_nonce`` is :func:`gpu_nonce` of its key configuration."""
    from .abi import decode_gpu_evidence
    from .rim import RIMS_CERT_KEY, decode_rim_list
    from .verify import verify_nvidia

    # The RIMs travel as collateral (NVIDIA-signed, so unbound like TDX collateral): certs["nvidia_rims"].
    rims = decode_rim_list(bundle.certs[RIMS_CERT_KEY]) if RIMS_CERT_KEY in bundle.certs else []
    from .ocsp import OCSP_CERT_KEY, decode_ocsp_list

    ocsp = decode_ocsp_list(bundle.certs[OCSP_CERT_KEY]) if OCSP_CERT_KEY in bundle.certs else []
    return verify_nvidia(decode_gpu_evidence(bundle.gpu_evidence), policy.get(NvidiaPolicy), now=now,
                         expected_nonce=expected_nonce, rims=rims, ocsp_responses=ocsp)


PLATFORM = Platform(
    key="nvidia", table="nvidia", policy=NvidiaPolicy, parse_policy=NvidiaPolicy.from_dict, verify=_verify,
    audit=lambda section: replace(section, any_version=True),
)
