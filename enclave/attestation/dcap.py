"""Intel DCAP: the part shared by the TDX (``tdx.verify``) and SGX (``sgx.verify``) quote verifiers.

Both verify a quote with dcap-qvl against the same pinned Intel SGX Root CA, with the same ``QuoteCollateralV3``
collateral format, so the collateral handling (load, well-formedness for a TEE and FMSPC, validity at an explicit
time), the trust-anchor search, the dcap-qvl verification call and the library-call discipline live here. What is
specific to a quote format (parsing, the parser cross-check, comparing the report dcap-qvl verified with our own
parse, reading the FMSPC, the policy checks) stays in the platform's verifier and is passed in where needed.

Every step is a :class:`~.result.Check` added to the caller's verdict, never an exception. Imports nothing from
``enclave`` outside ``enclave.attestation``, and nothing from its policy or platform modules.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import dcap_qvl
from cryptography import x509

from .result import Verdict

__all__ = [
    "COLLATERAL_KEYS",
    "INTEL_SGX_ROOT_CA_SHA256",
    "ISSUER_CHAINS",
    "PEM_CERT",
    "Collateral",
    "call_library",
    "check_collateral",
    "check_collateral_validity",
    "check_dcap",
    "check_trust_anchor",
    "iso",
    "json_object",
    "load_collateral",
    "message",
    "parse_time",
    "pem_certificates",
]

#: SHA-256 of the DER of the Intel SGX Root CA (also the TDX DCAP root), CN=Intel SGX Root CA, P-256, 2018..2049.
#: dcap-qvl's ``verify`` uses a root embedded in the library; we never rely on it. The root handed to
#: ``verify_with_root_ca`` is a certificate found in the evidence (quote PCK chain or collateral issuer chains) whose
#: DER hashes to exactly this value, so the anchor is pinned without shipping the certificate.
INTEL_SGX_ROOT_CA_SHA256: Final = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

COLLATERAL_KEYS: Final = (
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
ISSUER_CHAINS: Final = ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain")
PEM_CERT: Final = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Collateral:
    """Collateral that passed :func:`load_collateral`: its string fields and dcap-qvl's parsed object."""

    fields: dict[str, str]
    library: Any  # dcap_qvl.QuoteCollateralV3


# --- library calls ---------------------------------------------------------------------------------------------------


def call_library(fn: Callable[..., _T], *args: Any) -> tuple[_T | None, str | None]:
    """Run a dcap-qvl call; any failure (including a Rust panic) becomes a message, never an exception."""
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - every library failure is a failed check
        return None, message(exc)
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        return None, f"dcap-qvl panicked: {message(exc)}"


def message(exc: BaseException) -> str:
    """An exception as one line (whitespace collapsed), or its type name when it says nothing."""
    return " ".join(str(exc).split()) or type(exc).__name__


# --- collateral ------------------------------------------------------------------------------------------------------


def check_collateral(
    v: Verdict,
    collateral: str | Mapping[str, Any] | None,
    fmspc: bytes | None,
    *,
    tee: str,
    qe_id: str,
    no_fmspc: str,
) -> Collateral | None:
    """Collateral present, well formed, for this TEE (tcbInfo ``tee``, QE identity ``qe_id``) and this FMSPC.

    TDX passes ``tee="TDX", qe_id="TD_QE"``, SGX ``tee="SGX", qe_id="QE"``; ``no_fmspc`` is the problem reported
    when the quote's FMSPC could not be read (``fmspc`` is ``None``).
    """
    expected = f"dcap-qvl collateral JSON: {tee} tcbInfo for the quote's FMSPC, {qe_id} identity, CRLs"
    col, problem = load_collateral(collateral)
    if col is None:
        v.add("collateral", False, expected=expected, found="missing" if problem is None else "unusable",
              detail=problem or "no collateral supplied: DCAP cannot be verified (fail closed)")
        return None
    problems = []
    tcb_info = json_object(col.fields["tcb_info"])
    qe_identity = json_object(col.fields["qe_identity"])
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


def load_collateral(collateral: str | Mapping[str, Any] | None) -> tuple[Collateral | None, str | None]:
    """(collateral, None), or (None, why); (None, None) when nothing was supplied."""
    if collateral is None or (isinstance(collateral, (str, Mapping)) and not collateral):
        return None, None
    try:
        obj: Any = json.loads(collateral) if isinstance(collateral, str) else dict(collateral)
    except (ValueError, TypeError) as exc:
        return None, f"collateral is not JSON: {message(exc)}"
    if not isinstance(obj, dict):
        return None, f"collateral must be a JSON object, not {type(obj).__name__}"
    missing = [k for k in COLLATERAL_KEYS if not isinstance(obj.get(k), str) or not obj[k]]
    if missing:
        return None, f"collateral lacks (or has non-string) {', '.join(missing)}"
    for key in ("tcb_info", "qe_identity"):
        if not json_object(obj[key]):
            return None, f"collateral {key} is not a JSON object"
    try:
        text = collateral if isinstance(collateral, str) else json.dumps(obj)
    except (TypeError, ValueError) as exc:
        return None, f"collateral is not JSON-serializable: {message(exc)}"
    library, err = call_library(dcap_qvl.QuoteCollateralV3.from_json, text)
    if library is None:
        return None, f"dcap-qvl refuses the collateral: {err}"
    return Collateral(fields={k: obj[k] for k in COLLATERAL_KEYS}, library=library), None


def json_object(text: str) -> dict[str, Any]:
    """``text`` decoded as a JSON object; ``{}`` when it is not JSON or not an object."""
    try:
        obj = json.loads(text)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def check_collateral_validity(v: Verdict, col: Collateral | None, now: datetime.datetime) -> None:
    """Every dated piece of collateral (tcbInfo, QE identity, both CRLs) must be valid at ``now``."""
    expected = f"tcbInfo, QE identity, PCK and root CRLs all valid at {iso(now)}"
    if col is None:
        v.add("collateral validity", False, expected=expected, detail="no usable collateral")
        return
    windows: list[tuple[str, datetime.datetime | None, datetime.datetime | None]] = []
    for name, key in (("tcbInfo", "tcb_info"), ("qeIdentity", "qe_identity")):
        obj = json_object(col.fields[key])
        windows.append((name, parse_time(obj.get("issueDate")), parse_time(obj.get("nextUpdate"))))
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
            problems.append(f"{name} not valid before {iso(start)}")
        elif now > end:
            problems.append(f"{name} expired {iso(end)}")
    starts = [s for _, s, _ in windows if s is not None]
    ends = [e for _, _, e in windows if e is not None]
    found = f"valid {iso(max(starts))}..{iso(min(ends))}" if starts and ends else "no validity window"
    v.add("collateral validity", not problems, expected=expected, found=found, detail="; ".join(problems))


def parse_time(value: Any) -> datetime.datetime | None:
    """An ISO 8601 timestamp with a zone (Intel's ``issueDate`` / ``nextUpdate``); ``None`` otherwise."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.datetime.fromisoformat(value)  # Intel writes "2026-01-12T16:03:13Z"
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


def iso(t: datetime.datetime) -> str:
    """``t`` in UTC as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- trust anchor and DCAP -------------------------------------------------------------------------------------------


def check_trust_anchor(v: Verdict, pck_chain_pem: bytes | None, col: Collateral | None) -> bytes | None:
    """Find the certificate whose DER hashes to the pinned Intel root; it becomes dcap-qvl's only trust anchor."""
    expected = f"Intel SGX Root CA sha256 {INTEL_SGX_ROOT_CA_SHA256}"
    sources: list[tuple[str, bytes]] = []
    if pck_chain_pem is not None:
        sources.append(("the quote's PCK chain", pck_chain_pem))
    if col is not None:
        sources += [(f"collateral {k}", col.fields[k].encode()) for k in ISSUER_CHAINS]
    for where, pem in sources:
        for der in pem_certificates(pem):
            if hmac.compare_digest(hashlib.sha256(der).hexdigest(), INTEL_SGX_ROOT_CA_SHA256):
                v.add("trust anchor", True, expected=expected, found=f"found in {where}")
                return der
    v.add("trust anchor", False, expected=expected, found="not found",
          detail="no certificate in the quote or collateral matches the pinned Intel root")
    return None


def pem_certificates(pem: bytes) -> list[bytes]:
    """The DER of every well-formed PEM certificate block in ``pem``, in order; malformed blocks are skipped."""
    out = []
    for m in PEM_CERT.finditer(pem):
        try:
            out.append(base64.b64decode(b"".join(m.group(1).split()), validate=True))
        except binascii.Error:
            continue
    return out


def check_dcap(
    v: Verdict,
    raw_quote: bytes,
    col: Collateral | None,
    root_der: bytes | None,
    now: datetime.datetime,
    report_differs: Callable[[str], list[str]],
) -> tuple[str | None, list[str], str | None]:
    """dcap-qvl: PCK chain + CRLs to the pinned root, QE report signature and identity, quote signature, TCB level.

    ``report_differs`` compares the report dcap-qvl says it verified (its JSON) with the caller's own parse and
    returns the names of the fields that differ. Returns (TCB status, advisory ids, error message).
    """
    expected = f"quote, QE report and PCK chain verify to the pinned Intel root at {iso(now)}"
    if col is None or root_der is None:
        why = "no usable collateral" if col is None else "no pinned trust anchor"
        v.add("DCAP verification", False, expected=expected, found="not run", detail=f"{why} (fail closed)")
        return None, [], why
    result, err = call_library(dcap_qvl.verify_with_root_ca, raw_quote, col.library, root_der, int(now.timestamp()))
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


def check_library_parse(v: Verdict, raw: bytes, *, header: tuple[int, int, int, bytes], ours: object,
                        fields: Mapping[str, str], what: str,
                        is_expected_kind: Callable[[Any], bool] | None = None) -> None:
    """Our fixed-offset parse and dcap-qvl's must agree on every field policy reads (no parser differential).

    ``header`` is our (version, attestation key type, TEE type, QE vendor id); ``fields`` maps our attribute names
    on ``ours`` to dcap-qvl's report attribute names; ``what`` names the report in the document."""
    lib, err = call_library(dcap_qvl.parse_quote, raw)
    if lib is None:
        v.add("parser cross-check", False, expected="dcap-qvl parses the same fields", detail=f"dcap-qvl: {err}")
        return
    theirs_header = lib.header
    version, att_key_type, tee_type, qe_vendor_id = header
    diffs = [
        name
        for name, mine, theirs in (
            ("version", version, theirs_header.version),
            ("att_key_type", att_key_type, theirs_header.attestation_key_type),
            ("tee_type", tee_type, theirs_header.tee_type),
            ("qe_vendor_id", qe_vendor_id, bytes(theirs_header.qe_vendor_id)),
        )
        if mine != theirs
    ]
    if is_expected_kind is not None and not is_expected_kind(lib):
        diffs.append("quote type")
    for ours_name, theirs_name in fields.items():
        theirs = getattr(lib.report, theirs_name, None)
        if theirs is None or bytes(theirs) != getattr(ours, ours_name):
            diffs.append(ours_name)
    v.add(
        "parser cross-check",
        not diffs,
        expected=f"dcap-qvl parses the same header and {what}",
        found="agree" if not diffs else "differ: " + ", ".join(diffs),
    )


#: dcap-qvl's error when the collateral's TCB info has no level for this platform (a failure, not "unknown").
NO_TCB_LEVEL: Final = "No matching TCB level"


def check_tcb_status(v: Verdict, allowed: Sequence[str], status: str | None, advisories: list[str],
                     dcap_error: str | None) -> None:
    """The TCB status dcap-qvl derived is one the policy allows; no matching TCB level fails; no result is SKIP."""
    expected = "one of " + (", ".join(allowed) or "(none: the policy allows no status)")
    if status is not None:
        detail = f"advisories: {', '.join(advisories)}" if advisories else "no advisories"
        v.add("TCB status", status in allowed, expected=expected, found=status, detail=detail)
    elif dcap_error is not None and NO_TCB_LEVEL.lower() in dcap_error.lower():
        v.add("TCB status", False, expected=expected, found="no matching TCB level", detail=f"dcap-qvl: {dcap_error}")
    else:
        v.add("TCB status", None, expected=expected, detail="not evaluated: DCAP verification did not complete")
