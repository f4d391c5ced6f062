"""Verify a TDX quote (DCAP via dcap-qvl, pinned Intel root, explicit time), then validate it against a TdxPolicy.

Parse (``abi``) raises on malformed bytes; everything after that is a :class:`~..result.Check` in the verdict, so a
failed signature, missing collateral or "No matching TCB level" is a FAIL line, never an exception. The Intel DCAP
part (collateral, trust anchor, the dcap-qvl call) is shared with the SGX verifier in :mod:`..dcap`; the TDX quote
format (parser cross-check, FMSPC, verified-report comparison) and the policy checks are here. Imports nothing from
``enclave`` outside ``enclave.attestation``.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Mapping
from typing import Any, Final

import dcap_qvl

from ..dcap import (
    INTEL_SGX_ROOT_CA_SHA256,
    call_library,
    check_collateral,
    check_collateral_validity,
    check_dcap,
    check_library_parse,
    check_tcb_status,
    check_trust_anchor,
    json_object,
)
from .policy import TdxPolicy
from ..result import Verdict
from .abi import INTEL_QE_VENDOR_ID, TdxQuote, parse_quote

__all__ = ["INTEL_SGX_ROOT_CA_SHA256", "PLATFORM", "verify_tdx"]

PLATFORM: Final = "tdx"
#: Policy measurement keys -> TdxQuote attributes. MRTD is mandatory in every entry; the others are compared if present.
_MEASUREMENT_FIELDS: Final = {"mrtd": "mr_td", "rtmr0": "rtmr0", "rtmr1": "rtmr1", "rtmr2": "rtmr2"}
#: TdxQuote attribute -> dcap-qvl report attribute / JSON key, for the parser and verified-report cross-checks.
_LIBRARY_FIELDS: Final = {
    "tee_tcb_svn": "tee_tcb_svn",
    "mr_seam": "mr_seam",
    "mr_signer_seam": "mr_signer_seam",
    "seam_attributes": "seam_attributes",
    "td_attributes": "td_attributes",
    "xfam": "xfam",
    "mr_td": "mr_td",
    "mr_config_id": "mr_config_id",
    "mr_owner": "mr_owner",
    "mr_owner_config": "mr_owner_config",
    "rtmr0": "rt_mr0",
    "rtmr1": "rt_mr1",
    "rtmr2": "rt_mr2",
    "rtmr3": "rt_mr3",
    "report_data": "report_data",
}
_LIBRARY_FIELDS_15: Final = {"tee_tcb_svn2": "tee_tcb_svn2", "mr_service_td": "mr_service_td"}
_BINDING_SKIPPED: Final = "binding skipped (--no-binding)"
_NO_FMSPC: Final = "the quote carries no readable PCK certificate (FMSPC unknown)"


def verify_tdx(
    quote: bytes,
    collateral: str | Mapping[str, Any] | None,
    policy: TdxPolicy,
    *,
    now: datetime.datetime,
    expected_report_data: bytes | None,
) -> Verdict:
    """Verify a TDX quote and validate it against ``policy``; every check is one line of the returned verdict.

    ``collateral`` is the dcap-qvl ``QuoteCollateralV3`` JSON (a string, as carried in a bundle's
    ``certs["collateral"]``, or the decoded object). ``now`` (timezone-aware) is the verification time for the
    certificate chains, CRLs, TCB info and QE identity. ``expected_report_data`` is the 64-byte REPORTDATA the
    caller recomputed from the key configuration; ``None`` skips the binding (``--no-binding``) and says so.

    The verdict passes only if the quote verifies to the pinned Intel SGX Root CA at ``now`` with collateral valid at
    ``now``, its TCB status is in ``policy.allowed_status``, DEBUG is off (unless allowed), MRSERVICETD is zero, the
    measurements are in the allow list and REPORTDATA matches.

    Raises:
        EvidenceFormatError: the quote cannot be parsed as a TDX v4/v5 quote (including SGX quotes).
        ValueError: ``now`` is naive (a caller bug, not an evidence problem).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("verify_tdx: now must be timezone-aware")
    q = parse_quote(quote)
    v = Verdict(platform=PLATFORM)
    v.add(
        "quote format",
        True,
        expected="TDX quote v4/v5, ECDSA P-256, TEE type 0x81",
        found=f"v{q.version}, TD report {q.td_report_version}, {len(q.raw)} bytes "
        f"({len(q.raw) - q.structure_size} bytes zero padding)",
    )
    _check_library_parse(v, q)
    v.add(
        "QE vendor",
        hmac.compare_digest(q.qe_vendor_id, INTEL_QE_VENDOR_ID),
        expected=f"{INTEL_QE_VENDOR_ID.hex()} (Intel)",
        found=q.qe_vendor_id.hex(),
    )

    # verify: collateral, trust anchor, DCAP (go-sev-guest's `verify`)
    fmspc = _quote_fmspc(q)
    col = check_collateral(v, collateral, fmspc, tee="TDX", qe_id="TD_QE", no_fmspc=_NO_FMSPC)
    check_collateral_validity(v, col, now)
    root_der = check_trust_anchor(v, q.pck_chain_pem, col)
    status, advisories, dcap_error = check_dcap(
        v, q.raw, col, root_der, now, lambda report_json: _verified_report_differs(q, report_json)
    )

    # validate: the platform and workload policy (go-sev-guest's `validate`), on the parsed fields
    check_tcb_status(v, policy.allowed_status, status, advisories, dcap_error)
    _check_debug(v, q, policy)
    _check_service_td(v, q)
    _check_measurement(v, q, policy)
    _check_report_data(v, q, expected_report_data)

    v.measurement = q.mr_td
    v.report_data = q.report_data
    v.claims.update(
        {
            "quote_version": q.version,
            "td_report_version": q.td_report_version,
            "tcb_status": status,
            "advisory_ids": advisories,
            "fmspc": fmspc.hex() if fmspc is not None else None,
            "td_attributes": q.td_attributes.hex(),
            "xfam": q.xfam.hex(),
            "tee_tcb_svn": q.tee_tcb_svn.hex(),
            "mrtd": q.mr_td.hex(),
            "mrconfigid": q.mr_config_id.hex(),
            "rtmrs": [r.hex() for r in q.rtmrs],
        }
    )
    return v


# --- verify: the TDX quote format (collateral, trust anchor and DCAP are in ..dcap) ---------------------------------


def _check_library_parse(v: Verdict, q: TdxQuote) -> None:
    fields = dict(_LIBRARY_FIELDS)
    if q.mr_service_td is not None:
        fields.update(_LIBRARY_FIELDS_15)
    check_library_parse(v, q.raw, header=(q.version, q.att_key_type, q.tee_type, q.qe_vendor_id), ours=q,
                        fields=fields, what="TD report")


def _quote_fmspc(q: TdxQuote) -> bytes | None:
    if q.pck_chain_pem is None:
        return None
    ext, _ = call_library(dcap_qvl.parse_pck_extension_from_pem, q.pck_chain_pem)
    return bytes(ext.fmspc) if ext is not None else None


def _verified_report_differs(q: TdxQuote, report_json: str) -> list[str]:
    report = json_object(report_json).get("report")
    kind = "TD15" if q.mr_service_td is not None else "TD10"
    body = report.get(kind) if isinstance(report, dict) and len(report) == 1 else None
    if not isinstance(body, dict):
        return [f"report kind (expected {kind})"]
    base = body.get("base")
    if isinstance(base, dict):  # TD15 = {"base": <TD10 fields>, "tee_tcb_svn2": ..., "mr_service_td": ...}
        body = {**base, **{k: v for k, v in body.items() if k != "base"}}
    fields = dict(_LIBRARY_FIELDS)
    if q.mr_service_td is not None:
        fields.update(_LIBRARY_FIELDS_15)
    diffs = []
    for ours_name, theirs_name in fields.items():
        theirs = body.get(theirs_name)
        try:
            same = isinstance(theirs, str) and bytes.fromhex(theirs) == getattr(q, ours_name)
        except ValueError:
            same = False
        if not same:
            diffs.append(ours_name)
    return diffs


# --- validate: policy on verified fields ----------------------------------------------------------------------------


def _check_debug(v: Verdict, q: TdxQuote, policy: TdxPolicy) -> None:
    found = f"TDATTRIBUTES {q.td_attributes.hex()} (DEBUG={int(q.debug)})"
    if q.debug and policy.allow_debug:
        v.add("TD debug", True, expected="DEBUG=0 (debug allowed by policy)", found=found,
              detail="debug TD accepted by policy: the host can read its memory")
    else:
        v.add("TD debug", not q.debug, expected="DEBUG=0", found=found)


def _check_service_td(v: Verdict, q: TdxQuote) -> None:
    if q.mr_service_td is None:
        v.add("MRSERVICETD", True, expected="zero", found="absent", detail="TD report 1.0 has no MRSERVICETD")
    else:
        v.add("MRSERVICETD", not any(q.mr_service_td), expected="zero (no service TD bound)",
              found=q.mr_service_td.hex())


def _check_measurement(v: Verdict, q: TdxQuote, policy: TdxPolicy) -> None:
    """(MRTD, RTMR0, RTMR1, RTMR2) must equal one allow-list entry; only keys present in the entry are compared."""
    found = f"mrtd {q.mr_td.hex()}"
    if policy.any_measurement:
        v.add("measurement", True, expected="any (--any-measurement)", found=found,
              detail="any measurement was accepted (--any-measurement): the workload is NOT pinned")
        return
    expected = (f"one of {len(policy.measurements)} allow-list entries" if policy.measurements
                else "an allow-list entry (the list is empty: nothing is accepted)")
    notes: list[str] = []
    for i, entry in enumerate(policy.measurements):
        unknown = sorted(set(entry) - set(_MEASUREMENT_FIELDS))
        if unknown:
            notes.append(f"entry {i}: unknown keys {unknown} (never matches)")
            continue
        if "mrtd" not in entry:
            notes.append(f"entry {i}: no mrtd (never matches)")
            continue
        diffs = []
        for key, attr in _MEASUREMENT_FIELDS.items():
            if key not in entry:
                continue
            want = entry[key]
            if not isinstance(want, bytes) or not hmac.compare_digest(want, getattr(q, attr)):
                diffs.append(key)
        if not diffs:
            keys = ", ".join(k for k in _MEASUREMENT_FIELDS if k in entry)
            v.add("measurement", True, expected=expected, found=found, detail=f"matches entry {i} ({keys})")
            return
        notes.append(f"entry {i}: {', '.join(diffs)} differ")
    v.add("measurement", False, expected=expected, found=found, detail="; ".join(notes))


def _check_report_data(v: Verdict, q: TdxQuote, expected_report_data: bytes | None) -> None:
    if expected_report_data is None:
        v.add("REPORTDATA binding", True, found=q.report_data.hex(), detail=_BINDING_SKIPPED)
        return
    ok = len(expected_report_data) == len(q.report_data) and hmac.compare_digest(expected_report_data, q.report_data)
    v.add(
        "REPORTDATA binding",
        ok,
        expected=expected_report_data.hex(),
        found=q.report_data.hex(),
        detail="" if len(expected_report_data) == len(q.report_data)
        else f"expected value is {len(expected_report_data)} bytes, not {len(q.report_data)}",
    )
