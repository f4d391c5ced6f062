"""Verify an Azure confidential VM: HCL report (SNP report or TD quote inside) + vTPM quote, against policy.

The chain of trust, every link one check in the verdict::

    AMD ARK -> ASK -> VCEK -> SNP report                         (verify_snp: chain, signature, TCB, policy)
      or Intel root -> PCK -> TD quote                            (verify_tdx: DCAP with collateral; else FAIL)
    REPORT_DATA == hash(HCL runtime JSON) || zero padding         (the runtime JSON is hardware-bound)
    runtime JSON -> HCLAkPub (RSA)                                (the vTPM attestation key)
    HCLAkPub -> TPM quote signature (RSASSA-PKCS1-v1_5 / SHA-256 over TPMS_ATTEST)
    TPMS_ATTEST.pcrDigest == SHA-256(selected PCR values)          (the supplied PCRs are the quoted ones)
    TPMS_ATTEST.extraData == expected nonce                        (Veil's binding value, passed by the caller)
    PCR values in the [azure] allow list

Offline and clock-injected. Imports nothing from ``enclave`` outside ``enclave.attestation``.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import EvidenceFormatError
from ..snp.policy import SnpPolicy
from ..tdx.policy import TdxPolicy
from ..result import Check, Verdict
from . import tpm
from .hcl import HclReport, b64url_decode, parse_hcl_report
from .policy import AzurePolicy

PLATFORM_SNP: Final = "az-snp-vtpm"
PLATFORM_TDX: Final = "az-tdx-vtpm"
BINDING_SKIPPED: Final = "binding skipped (--no-binding)"
ANY_MEASUREMENT: Final = "any PCR values accepted (--any-measurement): the workload is NOT pinned"
MIN_AK_BITS: Final = 2048
RUNTIME_BINDING: Final = "runtime data binding"


@dataclass(frozen=True)
class AzureCvmEvidence:
    """The arguments of :func:`verify_azure_cvm`, as loaded from trustee's ``az-snp-vtpm`` / ``az-tdx-vtpm`` JSON."""

    tee: str  # PLATFORM_SNP or PLATFORM_TDX
    hcl_report: bytes
    tpm_quote: bytes
    tpm_signature: bytes
    pcrs: dict[int, bytes]
    certs: dict[str, str] = field(default_factory=dict)
    td_quote: bytes | None = None
    collateral: str | None = None
    version: int | None = None


def verify_azure_cvm(
    hcl_report: bytes,
    tpm_quote: bytes,
    tpm_signature: bytes,
    pcrs: dict[int, bytes],
    certs: dict[str, str] | None,
    collateral: str | None,
    policy: AzurePolicy,
    *,
    now: datetime.datetime,
    expected_nonce: bytes | None,
    td_quote: bytes | None = None,
    snp_policy: SnpPolicy | None = None,
    tdx_policy: TdxPolicy | None = None,
) -> Verdict:
    """Verify an Azure CVM's HCL report and vTPM quote; every step is one check of the returned verdict.

    ``certs``: for SNP CVMs the VCEK/ASK/ARK PEMs by role, as for :func:`~..snp.verify_snp` (None: no certificates,
    which fails). ``collateral``: for TDX CVMs the dcap-qvl collateral JSON for the TD quote (None: the TD quote is
    not verified and a check FAILs, "collateral unavailable"). ``td_quote``: the TD quote of a TDX CVM (the HCL
    report holds only the TD report, which a remote party cannot verify). ``pcrs``: index -> SHA-256 PCR value.

    ``snp_policy`` / ``tdx_policy`` judge the hardware report (launch measurement of the Azure paravisor, TCB,
    debug, VMPL); None means the defaults, whose empty measurement allow list accepts nothing. ``policy`` judges
    the PCRs. ``expected_nonce`` is the value the TPM quote's extraData must equal (Veil's binding value); None
    records a passing check that says "binding skipped (--no-binding)".

    Raises:
        EvidenceFormatError: the HCL report, the hardware report, the TD quote or the TPM quote cannot be parsed.
        ValueError: ``now`` is naive (a caller bug).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("verify_azure_cvm: now must be timezone-aware")
    hcl = parse_hcl_report(hcl_report)
    quote = tpm.parse_quote(tpm_quote)
    v = Verdict(platform=PLATFORM_SNP if hcl.is_snp else PLATFORM_TDX)
    v.add("HCL report", True, expected="HCLA v1/v2, SNP or TDX report, runtime JSON",
          found=f"v{hcl.version}, {hcl.type_name} report, runtime data {len(hcl.runtime_data)} bytes "
          f"({hcl.hash_label} in REPORT_DATA)")

    hw_claims: dict[str, Any]
    if hcl.is_snp:
        hw_claims = _check_snp(v, hcl, certs, snp_policy or SnpPolicy(), now)
    else:
        hw_claims = _check_tdx(v, hcl, td_quote, collateral, tdx_policy or TdxPolicy(), now)

    ak = _check_ak(v, hcl)
    _check_tpm_signature(v, quote, tpm_signature, ak)
    _check_pcr_digest(v, quote, pcrs)
    _check_nonce(v, quote, hcl, expected_nonce)
    _check_pcr_policy(v, quote, pcrs, policy)

    user_data = _user_data(hcl)
    v.claims = {
        "hardware": "sev-snp" if hcl.is_snp else "tdx",
        "hcl_version": hcl.version,
        "vm_configuration": hcl.vm_configuration,
        "hcl_user_data": user_data.hex() if user_data is not None else None,
        "tpm": {
            "nonce": quote.extra_data.hex(),
            "pcr_selection": quote.selection_text(),
            "pcrs": {str(i): pcrs[i].hex() for _, i in quote.selected if i in pcrs},
            "clock": quote.clock,
            "reset_count": quote.reset_count,
            "restart_count": quote.restart_count,
            "safe": bool(quote.safe),
            "firmware_version": f"0x{quote.firmware_version:016x}",
            "qualified_signer": quote.qualified_signer.hex(),
        },
        "sev-snp" if hcl.is_snp else "tdx": hw_claims,
    }
    return v


# --- the hardware report ------------------------------------------------------------------------------------------


def _check_snp(
    v: Verdict, hcl: HclReport, certs: Mapping[str, str] | None, policy: SnpPolicy, now: datetime.datetime
) -> dict[str, Any]:
    from ..snp.verify import verify_snp

    expected = hcl.expected_report_data()
    snp = verify_snp(hcl.snp_report, dict(certs or {}), policy, now=now, expected_report_data=expected)
    for c in snp.checks:
        if c.name == "REPORT_DATA binding":
            v.checks.append(_runtime_binding_check(c, hcl, "SNP REPORT_DATA"))
        else:
            v.checks.append(Check("SNP: " + c.name, c.ok, c.expected, c.found, c.detail))
    v.measurement, v.report_data = snp.measurement, snp.report_data
    return dict(snp.claims)


def _check_tdx(
    v: Verdict, hcl: HclReport, td_quote: bytes | None, collateral: str | None, policy: TdxPolicy,
    now: datetime.datetime,
) -> dict[str, Any]:
    from ..tdx.abi import parse_quote
    from ..tdx.verify import verify_tdx

    if td_quote is None:
        v.add("TDX: TD quote", False, expected="the TD quote for the HCL report's TD report", found="none",
              detail="the HCL report's TD report alone cannot be verified remotely (fail closed)")
        return {}
    q = parse_quote(td_quote)
    expected = hcl.expected_report_data()
    claims: dict[str, Any] = {}
    if collateral:
        tdx = verify_tdx(td_quote, collateral, policy, now=now, expected_report_data=expected)
        for c in tdx.checks:
            if c.name == "REPORTDATA binding":
                v.checks.append(_runtime_binding_check(c, hcl, "TD quote REPORTDATA"))
            else:
                v.checks.append(Check("TDX: " + c.name, c.ok, c.expected, c.found, c.detail))
        claims = dict(tdx.claims)
    else:
        v.add("TDX: DCAP verification", False, expected="TD quote verified to the Intel root with collateral",
              found="collateral unavailable",
              detail="no Intel collateral (TCB info, QE identity, CRLs) for this platform: the quote signature, "
                     "QE report and TCB level are not verified, and measurement/debug policy is not evaluated "
                     "(fail closed)")
        ok = hmac.compare_digest(q.report_data, expected)
        v.add(f"{RUNTIME_BINDING} (TD quote REPORTDATA)", ok,
              expected=f"{hcl.hash_label}(runtime JSON) || zero padding = {expected.hex()}",
              found=q.report_data.hex(),
              detail="" if ok else "the TD quote does not bind this HCL runtime data (vTPM key)")
        claims = {"mrtd": q.mr_td.hex(), "td_attributes": q.td_attributes.hex(), "quote_version": q.version}
    # The HCL's TD report is what the paravisor got from the TDX module; the quote must be of that very report.
    td = hcl.td_report_fields()
    differ = [name for name, value in td.items() if not hmac.compare_digest(value, getattr(q, name))]
    v.add("TDX: TD report matches the quote", not differ,
          expected="HCL TD report fields (TEE_TCB_INFO, TDINFO, REPORTDATA) == TD quote body",
          found="identical" if not differ else f"{', '.join(differ)} differ",
          detail="" if not differ else "the TD quote is not of the TD report in this HCL report")
    v.measurement, v.report_data = q.mr_td, q.report_data
    return claims


def _runtime_binding_check(c: Check, hcl: HclReport, where: str) -> Check:
    detail = c.detail
    if c.ok is False:
        detail = "the hardware report does not bind this HCL runtime data (vTPM key, user-data)"
    return Check(f"{RUNTIME_BINDING} ({where})", c.ok,
                 f"{hcl.hash_label}(runtime JSON) || zero padding = {c.expected}", c.found, detail)


# --- the vTPM ------------------------------------------------------------------------------------------------------


def _check_ak(v: Verdict, hcl: HclReport) -> rsa.RSAPublicKey | None:
    name = "vTPM attestation key"
    expected = f"HCLAkPub RSA (>= {MIN_AK_BITS} bits) in the HCL runtime JSON"
    try:
        ak = hcl.ak_public_key()
    except EvidenceFormatError as exc:
        v.add(name, False, expected=expected, found="unusable", detail=str(exc))
        return None
    ok = ak.key_size >= MIN_AK_BITS
    v.add(name, ok, expected=expected, found=f"RSA-{ak.key_size}, e={ak.public_numbers().e}",
          detail="" if ok else "key too small")
    return ak if ok else None


def _check_tpm_signature(
    v: Verdict, quote: tpm.TpmQuote, signature: bytes, ak: rsa.RSAPublicKey | None
) -> None:
    name = "TPM quote signature"
    expected = "RSASSA-PKCS1-v1_5 / SHA-256 over TPMS_ATTEST under HCLAkPub"
    if ak is None:
        v.add(name, None, expected=expected, detail="not checked: no usable attestation key")
        return
    sig = tpm.parse_signature(signature, ak)
    why = tpm.verify_signature(quote, sig, ak)
    form = "TPMT_SIGNATURE" if sig.structured else "raw RSA signature"
    v.add(name, why is None, expected=expected, found="valid" if why is None else "invalid",
          detail=f"{form}, {len(sig.signature)} bytes" + (f": {why}" if why else ""))


def _check_pcr_digest(v: Verdict, quote: tpm.TpmQuote, pcrs: Mapping[int, bytes]) -> None:
    ok, detail = tpm.digest_matches(quote, dict(pcrs))
    v.add("PCR digest", ok, expected=f"SHA-256 of the selected PCR values ({quote.selection_text()})",
          found=quote.pcr_digest.hex(), detail=detail)


def _check_nonce(v: Verdict, quote: tpm.TpmQuote, hcl: HclReport, expected_nonce: bytes | None) -> None:
    name = "TPM nonce binding"
    if expected_nonce is None:
        v.add(name, True, found=quote.extra_data.hex(), detail=BINDING_SKIPPED)
        return
    ok = hmac.compare_digest(quote.extra_data, expected_nonce)
    detail = "" if ok else "the TPM quote does not bind this key configuration / nonce"
    user_data = _user_data(hcl)
    if ok and user_data is not None and expected_nonce and user_data.startswith(expected_nonce) \
            and not any(user_data[len(expected_nonce):]):
        detail = "also in the HCL runtime user-data (bound by the hardware report)"
    v.add(name, ok, expected=f"extraData {expected_nonce.hex()}", found=quote.extra_data.hex(), detail=detail)


def _check_pcr_policy(v: Verdict, quote: tpm.TpmQuote, pcrs: Mapping[int, bytes], policy: AzurePolicy) -> None:
    name = "PCR policy"
    quoted = {i for alg, i in quote.selected if alg == tpm.TPM_ALG_SHA256}
    found = f"quoted {quote.selection_text()}"
    if policy.any_measurement:
        v.add(name, True, expected="any", found=found, detail=ANY_MEASUREMENT)
        return
    if not policy.pcrs:
        v.add(name, False, expected="an allow-list entry (the list is empty: nothing is accepted)", found=found)
        return
    notes = []
    for n, entry in enumerate(policy.pcrs):
        unquoted = sorted(i for i in entry if i not in quoted)
        if unquoted:
            notes.append(f"entry {n}: PCR {unquoted} not covered by the quote (never matches)")
            continue
        differ = [i for i, want in sorted(entry.items())
                  if i not in pcrs or not hmac.compare_digest(pcrs[i], want)]
        if not differ:
            v.add(name, True, expected=f"one of {len(policy.pcrs)} allow-list entries", found=found,
                  detail=f"matches entry {n} (PCR {sorted(entry)})")
            return
        notes.append(f"entry {n}: PCR {differ} differ")
    v.add(name, False, expected=f"one of {len(policy.pcrs)} allow-list entries", found=found, detail="; ".join(notes))


def _user_data(hcl: HclReport) -> bytes | None:
    try:
        return hcl.user_data
    except EvidenceFormatError:
        return None


# --- loaders ---------------------------------------------------------------------------------------------------------

_SNP_KEYS: Final = {"version", "hcl_report", "tpm_quote", "vcek"}
_TDX_KEYS: Final = {"version", "hcl_report", "tpm_quote", "td_quote"}
_LEGACY_KEYS: Final = {"report", "quote", "vcek"}  # trustee's older az-snp-vtpm shape (byte arrays)


def load_trustee_evidence(
    data: str | bytes | Mapping[str, Any], *, amd_chain_pem: str | None = None
) -> AzureCvmEvidence:
    """Trustee's ``az-snp-vtpm`` / ``az-tdx-vtpm`` evidence JSON -> the arguments of :func:`verify_azure_cvm`.

    Shapes: ``{"version", "hcl_report": b64url, "tpm_quote": {...}, "vcek": b64url DER}`` (SNP),
    ``{"version", "hcl_report", "tpm_quote", "td_quote": b64url}`` (TDX), and the older SNP
    ``{"report": [bytes], "quote": {...}, "vcek": PEM}``; ``tpm_quote``/``quote`` is as :func:`load_tpm_quote`.
    The evidence carries only the VCEK: ``amd_chain_pem`` (ASK + ARK, e.g. ``roots/amd_milan_ask_ark.pem``) is added
    as ``certs["ask"]``; the ARK is pinned by the SNP verifier whatever is supplied.

    Raises:
        EvidenceFormatError: not one of these shapes, or a field that does not decode.
    """
    obj = _json_object(data, "Azure vTPM evidence")
    keys = set(obj)
    if keys <= _TDX_KEYS and "td_quote" in keys:
        tee, hcl_field, quote_field = PLATFORM_TDX, "hcl_report", "tpm_quote"
    elif keys <= _SNP_KEYS and "hcl_report" in keys:
        tee, hcl_field, quote_field = PLATFORM_SNP, "hcl_report", "tpm_quote"
    elif keys <= _LEGACY_KEYS and "report" in keys:
        tee, hcl_field, quote_field = PLATFORM_SNP, "report", "quote"
    else:
        raise EvidenceFormatError(f"not az-snp-vtpm / az-tdx-vtpm evidence: keys {sorted(keys)}")
    missing = {hcl_field, quote_field} - keys
    if missing:
        raise EvidenceFormatError(f"Azure vTPM evidence lacks {sorted(missing)}")
    version = obj.get("version")
    if version is not None and (not isinstance(version, int) or version not in (1, 2)):
        raise EvidenceFormatError(f"Azure vTPM evidence version {version!r} is not 1 or 2")
    hcl = _blob(obj[hcl_field], hcl_field)
    message, signature, pcrs = load_tpm_quote(obj[quote_field])
    certs: dict[str, str] = {}
    if "vcek" in obj:
        certs["vcek"] = _pem(obj["vcek"])
    if amd_chain_pem is not None and tee == PLATFORM_SNP:
        certs["ask"] = amd_chain_pem
    td_quote = _blob(obj["td_quote"], "td_quote") if tee == PLATFORM_TDX else None
    return AzureCvmEvidence(tee=tee, hcl_report=hcl, tpm_quote=message, tpm_signature=signature, pcrs=pcrs,
                            certs=certs, td_quote=td_quote, version=version)


def load_tpm_quote(data: str | bytes | Mapping[str, Any]) -> tuple[bytes, bytes, dict[int, bytes]]:
    """``{"message", "signature", "pcrs": [PCR0, PCR1, ...]}`` (hex strings or byte arrays) -> (TPMS_ATTEST,
    signature, {index: value}). The PCR list is indexed from 0 (trustee's ``tpm-quote-v1.json`` shape)."""
    obj = _json_object(data, "TPM quote")
    if set(obj) != {"message", "signature", "pcrs"}:
        raise EvidenceFormatError(f"TPM quote JSON must have message, signature, pcrs; has {sorted(obj)}")
    message = _hex_or_array(obj["message"], "tpm_quote.message")
    signature = _hex_or_array(obj["signature"], "tpm_quote.signature")
    raw_pcrs = obj["pcrs"]
    if not isinstance(raw_pcrs, list) or len(raw_pcrs) > 24:
        raise EvidenceFormatError("tpm_quote.pcrs must be a list of at most 24 PCR values")
    pcrs = {i: _hex_or_array(p, f"tpm_quote.pcrs[{i}]") for i, p in enumerate(raw_pcrs)}
    return message, signature, pcrs


def _json_object(data: str | bytes | Mapping[str, Any], what: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvidenceFormatError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EvidenceFormatError(f"{what} is not a JSON object")
    return obj


def _hex_or_array(value: Any, what: str) -> bytes:
    if isinstance(value, list):
        return _array(value, what)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise EvidenceFormatError(f"{what} is not hex") from None
    raise EvidenceFormatError(f"{what} must be hex or a byte array")


def _blob(value: Any, what: str) -> bytes:
    """Base64url text (trustee's wire format) or a JSON byte array (its older test data)."""
    if isinstance(value, list):
        return _array(value, what)
    try:
        return b64url_decode(value)
    except (TypeError, ValueError) as exc:
        raise EvidenceFormatError(f"{what}: {exc}") from None


def _array(value: list[Any], what: str) -> bytes:
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
        raise EvidenceFormatError(f"{what} is not a byte array")
    return bytes(value)


def _pem(value: Any) -> str:
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        return value
    der = _blob(value, "vcek")
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
