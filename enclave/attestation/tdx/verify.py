"""Verify a TDX quote (DCAP via dcap-qvl, pinned Intel root, explicit time), then validate it against a TdxPolicy.

Parse (``abi``) raises on malformed bytes; everything after that is a :class:`~..result.Check` in the verdict, so a
failed signature, missing collateral or "No matching TCB level" is a FAIL line, never an exception. Imports nothing
from ``enclave`` outside ``enclave.attestation``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import dcap_qvl
from cryptography import x509

from ..policy import TdxPolicy
from ..result import Verdict
from .abi import INTEL_QE_VENDOR_ID, TdxQuote, parse_quote

__all__ = ["INTEL_SGX_ROOT_CA_SHA256", "PLATFORM", "verify_tdx"]

PLATFORM: Final = "tdx"
#: SHA-256 of the DER of the Intel SGX Root CA (also the TDX DCAP root), CN=Intel SGX Root CA, P-256, 2018..2049.
#: dcap-qvl's ``verify`` uses a root embedded in the library; we never rely on it. The root handed to
#: ``verify_with_root_ca`` is a certificate found in the evidence (quote PCK chain or collateral issuer chains) whose
#: DER hashes to exactly this value, so the anchor is pinned without shipping the certificate.
INTEL_SGX_ROOT_CA_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

_COLLATERAL_KEYS: Final = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
_ISSUER_CHAINS: Final = ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain")
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
_PEM_CERT: Final = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)
_NO_TCB_LEVEL: Final = "No matching TCB level"
_BINDING_SKIPPED: Final = "binding skipped (--no-binding)"

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Collateral:
    fields: dict[str, str]
    library: Any  # dcap_qvl.QuoteCollateralV3


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
    col = _check_collateral(v, collateral, fmspc)
    _check_collateral_validity(v, col, now)
    root_der = _check_trust_anchor(v, q.pck_chain_pem, col)
    status, advisories, dcap_error = _check_dcap(
        v, q.raw, col, root_der, now, lambda report_json: _verified_report_differs(q, report_json)
    )

    # validate: the platform and workload policy (go-sev-guest's `validate`), on the parsed fields
    _check_tcb_status(v, policy, status, advisories, dcap_error)
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


# --- verify: DCAP, collateral, trust anchor -------------------------------------------------------------------------


def _call_library(fn: Callable[..., _T], *args: Any) -> tuple[_T | None, str | None]:
    """Run a dcap-qvl call; any failure (including a Rust panic) becomes a message, never an exception."""
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - every library failure is a failed check
        return None, _message(exc)
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        return None, f"dcap-qvl panicked: {_message(exc)}"


def _message(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_library_parse(v: Verdict, q: TdxQuote) -> None:
    """Our fixed-offset parse and dcap-qvl's must agree on every field policy reads (no parser differential)."""
    lib, err = _call_library(dcap_qvl.parse_quote, q.raw)
    if lib is None:
        v.add("parser cross-check", False, expected="dcap-qvl parses the same fields", detail=f"dcap-qvl: {err}")
        return
    header = lib.header
    diffs = [
        name
        for name, ours, theirs in (
            ("version", q.version, header.version),
            ("att_key_type", q.att_key_type, header.attestation_key_type),
            ("tee_type", q.tee_type, header.tee_type),
            ("qe_vendor_id", q.qe_vendor_id, bytes(header.qe_vendor_id)),
        )
        if ours != theirs
    ]
    fields = dict(_LIBRARY_FIELDS)
    if q.mr_service_td is not None:
        fields.update(_LIBRARY_FIELDS_15)
    report = lib.report
    for ours_name, theirs_name in fields.items():
        theirs = getattr(report, theirs_name, None)
        if theirs is None or bytes(theirs) != getattr(q, ours_name):
            diffs.append(ours_name)
    v.add(
        "parser cross-check",
        not diffs,
        expected="dcap-qvl parses the same header and TD report",
        found="agree" if not diffs else "differ: " + ", ".join(diffs),
    )


def _quote_fmspc(q: TdxQuote) -> bytes | None:
    if q.pck_chain_pem is None:
        return None
    ext, _ = _call_library(dcap_qvl.parse_pck_extension_from_pem, q.pck_chain_pem)
    return bytes(ext.fmspc) if ext is not None else None


def _check_collateral(
    v: Verdict,
    collateral: str | Mapping[str, Any] | None,
    fmspc: bytes | None,
    *,
    tee: str = "TDX",
    qe_id: str = "TD_QE",
    no_fmspc: str = "the quote carries no readable PCK certificate (FMSPC unknown)",
) -> _Collateral | None:
    """Collateral present, well formed, for this TEE (tcbInfo ``tee``, QE identity ``qe_id``) and this FMSPC.

    Shared with the SGX verifier, which passes ``tee="SGX", qe_id="QE"``.
    """
    expected = f"dcap-qvl collateral JSON: {tee} tcbInfo for the quote's FMSPC, {qe_id} identity, CRLs"
    col, problem = _load_collateral(collateral)
    if col is None:
        v.add("collateral", False, expected=expected, found="missing" if problem is None else "unusable",
              detail=problem or "no collateral supplied: DCAP cannot be verified (fail closed)")
        return None
    problems = []
    tcb_info = _json_object(col.fields["tcb_info"])
    qe_identity = _json_object(col.fields["qe_identity"])
    tcb_fmspc = str(tcb_info.get("fmspc", "")).lower()
    if tcb_info.get("id") != tee:
        problems.append(f"tcbInfo.id is {tcb_info.get('id')!r}, not {tee!r}")
    if qe_identity.get("id") != qe_id:
        problems.append(f"qeIdentity.id is {qe_identity.get('id')!r}, not {qe_id!r}")
    if fmspc is None:
        problems.append(no_fmspc)
    elif tcb_fmspc != fmspc.hex():
        problems.append(f"tcbInfo is for FMSPC {tcb_fmspc or '?'}, the quote's PCK is {fmspc.hex()}")
    v.add(
        "collateral",
        not problems,
        expected=expected,
        found=f"tcbInfo {tcb_info.get('id')} v{tcb_info.get('version')} FMSPC {tcb_fmspc}, "
        f"qeIdentity {qe_identity.get('id')}",
        detail="; ".join(problems),
    )
    return col


def _load_collateral(collateral: str | Mapping[str, Any] | None) -> tuple[_Collateral | None, str | None]:
    """(collateral, None), or (None, why); (None, None) when nothing was supplied."""
    if collateral is None or (isinstance(collateral, (str, Mapping)) and not collateral):
        return None, None
    try:
        obj: Any = json.loads(collateral) if isinstance(collateral, str) else dict(collateral)
    except (ValueError, TypeError) as exc:
        return None, f"collateral is not JSON: {_message(exc)}"
    if not isinstance(obj, dict):
        return None, f"collateral must be a JSON object, not {type(obj).__name__}"
    missing = [k for k in _COLLATERAL_KEYS if not isinstance(obj.get(k), str) or not obj[k]]
    if missing:
        return None, f"collateral lacks (or has non-string) {', '.join(missing)}"
    for key in ("tcb_info", "qe_identity"):
        if not _json_object(obj[key]):
            return None, f"collateral {key} is not a JSON object"
    try:
        text = collateral if isinstance(collateral, str) else json.dumps(obj)
    except (TypeError, ValueError) as exc:
        return None, f"collateral is not JSON-serializable: {_message(exc)}"
    library, err = _call_library(dcap_qvl.QuoteCollateralV3.from_json, text)
    if library is None:
        return None, f"dcap-qvl refuses the collateral: {err}"
    return _Collateral(fields={k: obj[k] for k in _COLLATERAL_KEYS}, library=library), None


def _json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _check_collateral_validity(v: Verdict, col: _Collateral | None, now: datetime.datetime) -> None:
    """Every dated piece of collateral (tcbInfo, QE identity, both CRLs) must be valid at ``now``."""
    expected = f"tcbInfo, QE identity, PCK and root CRLs all valid at {_iso(now)}"
    if col is None:
        v.add("collateral validity", False, expected=expected, detail="no usable collateral")
        return
    windows: list[tuple[str, datetime.datetime | None, datetime.datetime | None]] = []
    for name, key in (("tcbInfo", "tcb_info"), ("qeIdentity", "qe_identity")):
        obj = _json_object(col.fields[key])
        windows.append((name, _parse_time(obj.get("issueDate")), _parse_time(obj.get("nextUpdate"))))
    for name, key in (("root CA CRL", "root_ca_crl"), ("PCK CRL", "pck_crl")):
        try:
            crl = x509.load_der_x509_crl(bytes.fromhex(col.fields[key]))
            windows.append((name, crl.last_update_utc, crl.next_update_utc))
        except ValueError:
            windows.append((name, None, None))
    problems = []
    for name, start, end in windows:
        if start is None or end is None:
            problems.append(f"{name}: no readable validity window")
        elif now < start:
            problems.append(f"{name} not valid before {_iso(start)}")
        elif now > end:
            problems.append(f"{name} expired {_iso(end)}")
    starts = [s for _, s, _ in windows if s is not None]
    ends = [e for _, _, e in windows if e is not None]
    found = f"valid {_iso(max(starts))}..{_iso(min(ends))}" if starts and ends else "no validity window"
    v.add("collateral validity", not problems, expected=expected, found=found, detail="; ".join(problems))


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.datetime.fromisoformat(value)  # Intel writes "2026-01-12T16:03:13Z"
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def _iso(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_trust_anchor(v: Verdict, pck_chain_pem: bytes | None, col: _Collateral | None) -> bytes | None:
    """Find the certificate whose DER hashes to the pinned Intel root; it becomes dcap-qvl's only trust anchor.

    Shared with the SGX verifier (same root, same collateral format).
    """
    expected = f"Intel SGX Root CA sha256 {INTEL_SGX_ROOT_CA_SHA256}"
    sources: list[tuple[str, bytes]] = []
    if pck_chain_pem is not None:
        sources.append(("the quote's PCK chain", pck_chain_pem))
    if col is not None:
        sources += [(f"collateral {k}", col.fields[k].encode()) for k in _ISSUER_CHAINS]
    for where, pem in sources:
        for der in _pem_certificates(pem):
            if hmac.compare_digest(hashlib.sha256(der).hexdigest(), INTEL_SGX_ROOT_CA_SHA256):
                v.add("trust anchor", True, expected=expected, found=f"found in {where}")
                return der
    v.add("trust anchor", False, expected=expected, found="not found",
          detail="no certificate in the quote or collateral matches the pinned Intel root")
    return None


def _pem_certificates(pem: bytes) -> list[bytes]:
    out = []
    for m in _PEM_CERT.finditer(pem):
        try:
            out.append(base64.b64decode(b"".join(m.group(1).split()), validate=True))
        except binascii.Error:
            continue
    return out


def _check_dcap(
    v: Verdict,
    raw_quote: bytes,
    col: _Collateral | None,
    root_der: bytes | None,
    now: datetime.datetime,
    report_differs: Callable[[str], list[str]],
) -> tuple[str | None, list[str], str | None]:
    """dcap-qvl: PCK chain + CRLs to the pinned root, QE report signature and identity, quote signature, TCB level.

    ``report_differs`` compares the report dcap-qvl says it verified with the caller's own parse. Shared with the
    SGX verifier. Returns (TCB status, advisory ids, error message).
    """
    expected = f"quote, QE report and PCK chain verify to the pinned Intel root at {_iso(now)}"
    if col is None or root_der is None:
        why = "no usable collateral" if col is None else "no pinned trust anchor"
        v.add("DCAP verification", False, expected=expected, found="not run", detail=f"{why} (fail closed)")
        return None, [], why
    result, err = _call_library(dcap_qvl.verify_with_root_ca, raw_quote, col.library, root_der, int(now.timestamp()))
    if result is None:
        v.add("DCAP verification", False, expected=expected, found="error", detail=f"dcap-qvl: {err}")
        return None, [], err
    status = str(result.status)
    advisories = sorted(str(a) for a in result.advisory_ids)
    # dcap-qvl reports the report it verified; it must be the one policy reads.
    differs = report_differs(str(result.to_json()))
    v.add(
        "DCAP verification",
        not differs,
        expected=expected,
        found=f"verified, TCB status {status}",
        detail=f"verified report differs from the parsed quote in {', '.join(differs)}" if differs else "",
    )
    return status, advisories, None


def _verified_report_differs(q: TdxQuote, report_json: str) -> list[str]:
    report = _json_object(report_json).get("report")
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


def _check_tcb_status(
    v: Verdict, policy: TdxPolicy, status: str | None, advisories: list[str], dcap_error: str | None
) -> None:
    expected = "one of " + (", ".join(policy.allowed_status) or "(none: the policy allows no status)")
    if status is not None:
        detail = f"advisories: {', '.join(advisories)}" if advisories else "no advisories"
        v.add("TCB status", status in policy.allowed_status, expected=expected, found=status, detail=detail)
    elif dcap_error is not None and _NO_TCB_LEVEL.lower() in dcap_error.lower():
        v.add("TCB status", False, expected=expected, found="no matching TCB level", detail=f"dcap-qvl: {dcap_error}")
    else:
        v.add("TCB status", None, expected=expected, detail="not evaluated: DCAP verification did not complete")


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
