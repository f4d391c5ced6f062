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
    """The bundle's GPU evidence and, in version 2 of its encoding, the NVSwitch evidence of a protected-PCIe system
    (both bound by the same SHA-256 in REPORT_DATA); ``expected_nonce`` is :func:`gpu_nonce` of its key configuration,
    checked in every GPU's and every switch's report."""
    from .abi import decode_nvidia_evidence
    from .rim import RIMS_CERT_KEY, decode_rim_list
    from .verify import verify_nvidia

    # The RIMs travel as collateral (NVIDIA-signed, so unbound like TDX collateral): certs["nvidia_rims"].
    rims = decode_rim_list(bundle.certs[RIMS_CERT_KEY]) if RIMS_CERT_KEY in bundle.certs else []
    from .ocsp import OCSP_CERT_KEY, decode_ocsp_list

    ocsp = decode_ocsp_list(bundle.certs[OCSP_CERT_KEY]) if OCSP_CERT_KEY in bundle.certs else []
    gpus, switches = decode_nvidia_evidence(bundle.gpu_evidence)
    # No switches: None, so GPU-only evidence has no switch lines unless [nvidia] switch_count asks for switches.
    verdict = verify_nvidia(gpus, policy.get(NvidiaPolicy), now=now, expected_nonce=expected_nonce, rims=rims,
                            ocsp_responses=ocsp, switches=switches or None)
    if expected_nonce is not None:  # the configuration is bound (else nothing it says is the gateway's word)
        _check_gateway_gpu_check(verdict, bundle, len(gpus))
        _check_gateway_switch_check(verdict, bundle, len(switches))
    return verdict


def _check_gateway_gpu_check(verdict: Verdict, bundle: Bundle, n_gpus: int) -> None:
    """What the TEE itself checked of its GPUs (bound ``gpu_cc_checked``, ``gpu_count``): NVML's count must be the
    number of GPU reports (a GPU left out of the evidence fails), and the verdict says what NVML vouched for."""
    checked, count = bundle.config.get("gpu_cc_checked"), bundle.config.get("gpu_count")
    if checked == "nvml":
        verdict.add("gpus cc mode checked in the TEE", True, expected="gateway's NVML check (bound gpu_cc_checked)",
                    found="nvml", detail="CC feature on, production environment, dev-tools mode off: the gateway's "
                    "word inside the TEE, checked before every collection (the SPDM report does not carry them)")
        if not isinstance(count, int) or isinstance(count, bool):
            verdict.add("gpus bound count", False, expected="gpu_count (an integer) with gpu_cc_checked nvml",
                        found=repr(count))
            return
    if isinstance(count, int) and not isinstance(count, bool):
        verdict.add("gpus bound count", count == n_gpus, expected=f"{count} (GPUs NVML saw in the TEE, bound "
                    "gpu_count)", found=f"{n_gpus} GPU reports")


def _check_gateway_switch_check(verdict: Verdict, bundle: Bundle, n_switches: int) -> None:
    """What the TEE itself checked of its NVSwitches (bound ``switch_tnvl_checked``, ``switch_count``): NSCQ's
    count must be the number of switch reports (a switch left out of the evidence fails)."""
    checked, count = bundle.config.get("switch_tnvl_checked"), bundle.config.get("switch_count")
    if checked is None and count is None:
        return
    if checked != "nscq" or not isinstance(count, int) or isinstance(count, bool):
        verdict.add("switches bound count", False, expected="switch_count (an integer) with switch_tnvl_checked nscq",
                    found=f"switch_tnvl_checked={checked!r}, switch_count={count!r}")
        return
    verdict.add("switches tnvl checked in the TEE", True, expected="gateway's NSCQ check (bound switch_tnvl_checked)",
                found="nscq", detail="every switch LS10 with TNVL on and locked: the gateway's word inside the TEE, "
                "checked before every collection (the LS10 report does not carry TNVL mode)")
    verdict.add("switches bound count", count == n_switches, expected=f"{count} (NVSwitches NSCQ saw in the TEE, "
                "bound switch_count)", found=f"{n_switches} switch reports")


PLATFORM = Platform(
    key="nvidia", table="nvidia", policy=NvidiaPolicy, parse_policy=NvidiaPolicy.from_dict, verify=_verify,
    audit=lambda section: replace(section, any_version=True),
)
