"""Verify an Intel SGX DCAP quote v3 (dcap-qvl, pinned Intel root, explicit time), then validate the enclave report
against an :class:`SgxPolicy`. One :class:`~..result.Check` per step.

The quote's fields are read here at fixed offsets (:func:`parse_quote`), cross-checked against dcap-qvl's parser and
against the report dcap-qvl verified, so policy never rests on a library's parse alone. The Intel DCAP part
(collateral loading and validity, the pinned-root trust anchor, the dcap-qvl call and the library-call wrapper) is
shared with the TDX verifier in :mod:`..dcap`. Imports nothing from ``enclave`` outside ``enclave.attestation``.

Layout (little-endian; Intel SGX ECDSA Quote Library API, "Quote Format" v3)::

    header (48)          version u16 (3) · att_key_type u16 (2 = ECDSA-256-with-P-256) · reserved u32 (0)
                         · qe_svn u16 · pce_svn u16 · qe_vendor_id[16] · user_data[20]
    report body (384)    CPUSVN[16] MISCSELECT u32 reserved[12] ISVEXTPRODID[16] ATTRIBUTES[16] (flags u64 ‖ xfrm u64)
                         MRENCLAVE[32] reserved[32] MRSIGNER[32] reserved[32] CONFIGID[64] ISVPRODID u16 ISVSVN u16
                         CONFIGSVN u16 reserved[42] ISVFAMILYID[16] REPORTDATA[64]
    signature data       sig_data_len u32 · ISV report signature[64] (r‖s over header‖body) · attestation key[64]
                         · QE report[384] · QE report signature[64] · qe_auth_len u16 · qe_auth[qe_auth_len]
                         · cert data: type u16 (5 = PCK chain PEM) · size u32 · data
    padding              zero bytes only; never covered by any signature
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
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
from .._bytes import ByteReader
from ..errors import EvidenceFormatError
from ..result import Verdict
from .policy import SgxPolicy

__all__ = ["INTEL_SGX_ROOT_CA_SHA256", "PLATFORM", "SgxQuote", "parse_quote", "verify_sgx"]

PLATFORM: Final = "sgx"
QUOTE_VERSION: Final = 3
ATT_KEY_ECDSA_P256: Final = 2
HEADER_SIZE: Final = 48
REPORT_BODY_SIZE: Final = 384
REPORT_DATA_SIZE: Final = 64
CERT_DATA_PCK_CHAIN: Final = 5
#: Far above any real quote (~4.6 KB); bounds the work done on hostile input.
MAX_QUOTE_SIZE: Final = 1 << 16
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: ATTRIBUTES.FLAGS bit 1: the enclave was launched in debug mode (its memory is readable with EDBGRD).
SGX_FLAGS_DEBUG: Final = 1 << 1
#: Never acceptable, whatever the policy says.
REVOKED: Final = "Revoked"
_BINDING_SKIPPED: Final = "binding skipped (--no-binding)"

#: SgxQuote attribute -> the verified report's JSON key (dcap-qvl ``SgxEnclave``).
_VERIFIED_FIELDS: Final = {
    "cpu_svn": "cpu_svn",
    "attributes": "attributes",
    "mr_enclave": "mr_enclave",
    "mr_signer": "mr_signer",
    "report_data": "report_data",
}
_VERIFIED_INTS: Final = {"misc_select": "misc_select", "isv_prod_id": "isv_prod_id", "isv_svn": "isv_svn"}
#: SgxQuote attribute -> dcap-qvl's parsed report attribute.
_LIBRARY_FIELDS: Final = ("cpu_svn", "attributes", "mr_enclave", "mr_signer", "report_data")


@dataclass(frozen=True, slots=True, kw_only=True)
class SgxQuote:
    """A structurally valid SGX quote v3. Bytes fields are slices of ``raw``; nothing here is verified yet."""

    raw: bytes
    version: int
    att_key_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    # ISV enclave report body
    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    # signature data
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    #: Bytes up to the end of the signature data; ``raw`` beyond it is zero padding.
    structure_size: int

    @property
    def flags(self) -> int:
        """ATTRIBUTES.FLAGS (the first 8 bytes of ATTRIBUTES, little-endian)."""
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        return bool(self.flags & SGX_FLAGS_DEBUG)



def parse_quote(raw: bytes) -> SgxQuote:
    """Parse an SGX DCAP quote v3 strictly.

    Raises:
        EvidenceFormatError: not a v3 ECDSA-P256 SGX quote (a TDX quote included), truncation, certification data
            other than a PCK chain, or non-zero trailing bytes.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EvidenceFormatError(f"SGX quote must be bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_QUOTE_SIZE:
        raise EvidenceFormatError(f"SGX quote too large: {len(raw)} bytes (limit {MAX_QUOTE_SIZE})")
    r = ByteReader(raw, "SGX quote")
    version = r.u16("header.version")
    att_key_type = r.u16("header.att_key_type")
    reserved = r.u32("header.reserved")  # the TEE type in v4+ quotes (0x81 = TDX)
    if version != QUOTE_VERSION:
        raise EvidenceFormatError(f"unsupported SGX quote version {version} (supported: 3)")
    if reserved != 0:
        raise EvidenceFormatError(f"not an SGX quote: header word 0x{reserved:08x} at offset 4 (TEE type) is not 0")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise EvidenceFormatError(f"unsupported attestation key type {att_key_type} (supported: 2 = ECDSA P-256)")
    qe_svn = r.u16("header.qe_svn")
    pce_svn = r.u16("header.pce_svn")
    qe_vendor_id = r.take(16, "header.qe_vendor_id")
    r.take(20, "header.user_data")

    cpu_svn = r.take(16, "CPUSVN")
    misc_select = r.u32("MISCSELECT")
    r.take(12, "reserved1")
    isv_ext_prod_id = r.take(16, "ISVEXTPRODID")
    attributes = r.take(16, "ATTRIBUTES")
    mr_enclave = r.take(32, "MRENCLAVE")
    r.take(32, "reserved2")
    mr_signer = r.take(32, "MRSIGNER")
    r.take(32, "reserved3")
    config_id = r.take(64, "CONFIGID")
    isv_prod_id = r.u16("ISVPRODID")
    isv_svn = r.u16("ISVSVN")
    config_svn = r.u16("CONFIGSVN")
    r.take(42, "reserved4")
    isv_family_id = r.take(16, "ISVFAMILYID")
    report_data = r.take(REPORT_DATA_SIZE, "REPORTDATA")

    sig_data_len = r.u32("signature_data_len")
    sig_data = r.take(sig_data_len, "signature data")
    structure_size = r.pos
    if any(raw[structure_size:]):
        raise EvidenceFormatError(f"SGX quote has {len(raw) - structure_size} trailing bytes that are not zero padding")

    s = ByteReader(sig_data, "SGX quote")
    signature = s.take(64, "ISV report signature")
    attestation_key = s.take(64, "attestation key")
    qe_report = s.take(REPORT_BODY_SIZE, "QE report")
    qe_report_signature = s.take(64, "QE report signature")
    qe_auth_data = s.take(s.u16("QE auth data size"), "QE auth data")
    cert_type = s.u16("certification data type")
    cert_data = s.take(s.u32("certification data size"), "certification data")
    if cert_type != CERT_DATA_PCK_CHAIN:
        raise EvidenceFormatError(
            f"unsupported certification data type {cert_type} (supported: {CERT_DATA_PCK_CHAIN} = PCK chain PEM)"
        )
    if s.pos != len(sig_data):
        raise EvidenceFormatError(f"{len(sig_data) - s.pos} unexpected bytes after the certification data")

    return SgxQuote(
        raw=raw,
        version=version,
        att_key_type=att_key_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=qe_vendor_id,
        cpu_svn=cpu_svn,
        misc_select=misc_select,
        isv_ext_prod_id=isv_ext_prod_id,
        attributes=attributes,
        mr_enclave=mr_enclave,
        mr_signer=mr_signer,
        config_id=config_id,
        isv_prod_id=isv_prod_id,
        isv_svn=isv_svn,
        config_svn=config_svn,
        isv_family_id=isv_family_id,
        report_data=report_data,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=cert_data,
        structure_size=structure_size,
    )


def verify_sgx(
    quote: bytes,
    collateral: str | Mapping[str, Any] | None,
    policy: SgxPolicy,
    *,
    now: datetime.datetime,
    expected_report_data: bytes | None,
) -> Verdict:
    """Verify an SGX quote v3 and validate it against ``policy``; every check is one line of the returned verdict.

    ``collateral`` is the dcap-qvl ``QuoteCollateralV3`` JSON (a string, or the decoded object) with the SGX tcbInfo
    for the quote's FMSPC and the SGX QE identity. ``now`` (timezone-aware) is the verification time for the chains,
    CRLs, TCB info and QE identity. ``expected_report_data`` is the 64-byte REPORTDATA the caller recomputed; ``None``
    skips the binding (``--no-binding``) and says so.

    The verdict passes only if the quote verifies to the pinned Intel SGX Root CA at ``now`` with collateral valid at
    ``now``, its TCB status is in ``policy.allowed_status`` (never "Revoked"), DEBUG is off (unless allowed), the
    enclave identity is in the allow list (an MRENCLAVE, or MRSIGNER + ISVPRODID with ISVSVN >= the minimum) and
    REPORTDATA matches.

    Raises:
        EvidenceFormatError: the quote cannot be parsed as an SGX v3 quote (including TDX quotes).
        ValueError: ``now`` is naive or ``expected_report_data`` is not 64 bytes (caller bugs).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("verify_sgx: now must be timezone-aware")
    if expected_report_data is not None and len(expected_report_data) != REPORT_DATA_SIZE:
        raise ValueError(f"expected_report_data must be {REPORT_DATA_SIZE} bytes, not {len(expected_report_data)}")
    q = parse_quote(quote)
    v = Verdict(platform=PLATFORM)
    v.add(
        "quote format",
        True,
        expected="SGX quote v3, ECDSA P-256, PCK chain certification data",
        found=f"v{q.version}, {len(q.raw)} bytes ({len(q.raw) - q.structure_size} bytes zero padding)",
    )
    _check_library_parse(v, q)
    v.add(
        "QE vendor",
        hmac.compare_digest(q.qe_vendor_id, INTEL_QE_VENDOR_ID),
        expected=f"{INTEL_QE_VENDOR_ID.hex()} (Intel)",
        found=q.qe_vendor_id.hex(),
    )

    # verify: collateral, trust anchor, DCAP
    ext, _ = call_library(dcap_qvl.parse_pck_extension_from_pem, q.pck_chain_pem)
    fmspc = bytes(ext.fmspc) if ext is not None else None
    col = check_collateral(v, collateral, fmspc, tee="SGX", qe_id="QE",
                           no_fmspc="the quote's PCK certificate has no readable FMSPC")
    check_collateral_validity(v, col, now)
    root_der = check_trust_anchor(v, q.pck_chain_pem, col)
    status, advisories, dcap_error = check_dcap(
        v, q.raw, col, root_der, now, lambda report_json: _verified_report_differs(q, report_json)
    )

    # validate: platform and enclave policy, on the parsed (and cross-checked) fields
    check_tcb_status(v, [s for s in policy.allowed_status if s != REVOKED], status, advisories, dcap_error)
    _check_debug(v, q, policy)
    _check_measurement(v, q, policy)
    _check_report_data(v, q, expected_report_data)

    v.measurement = q.mr_enclave
    v.report_data = q.report_data
    v.claims.update(
        {
            "quote_version": q.version,
            "tcb_status": status,
            "advisory_ids": advisories,
            "fmspc": fmspc.hex() if fmspc is not None else None,
            "mrenclave": q.mr_enclave.hex(),
            "mrsigner": q.mr_signer.hex(),
            "isv_prod_id": q.isv_prod_id,
            "isv_svn": q.isv_svn,
            "attributes": q.attributes.hex(),
            "cpu_svn": q.cpu_svn.hex(),
            "misc_select": q.misc_select,
            "config_id": q.config_id.hex(),
            "config_svn": q.config_svn,
            "isv_ext_prod_id": q.isv_ext_prod_id.hex(),
            "isv_family_id": q.isv_family_id.hex(),
        }
    )
    return v


# --- verify: the SGX quote format (collateral, trust anchor and DCAP are in ..dcap) ---------------------------------


def _check_library_parse(v: Verdict, q: SgxQuote) -> None:
    check_library_parse(v, q.raw, header=(q.version, q.att_key_type, 0, q.qe_vendor_id), ours=q,
                        fields={name: name for name in _LIBRARY_FIELDS}, what="enclave report",
                        is_expected_kind=lambda lib: bool(lib.is_sgx()))


def _verified_report_differs(q: SgxQuote, report_json: str) -> list[str]:
    """dcap-qvl reports the enclave report it verified; it must be the one policy reads."""
    report = json_object(report_json).get("report")
    body = report.get("SgxEnclave") if isinstance(report, dict) and len(report) == 1 else None
    if not isinstance(body, dict):
        return ["report kind (expected SgxEnclave)"]
    diffs = []
    for ours, theirs in _VERIFIED_FIELDS.items():
        value = body.get(theirs)
        try:
            same = isinstance(value, str) and bytes.fromhex(value) == getattr(q, ours)
        except ValueError:
            same = False
        if not same:
            diffs.append(ours)
    for ours, theirs in _VERIFIED_INTS.items():
        value = body.get(theirs)
        if type(value) is not int or value != getattr(q, ours):
            diffs.append(ours)
    return diffs


# --- validate: policy on verified fields ----------------------------------------------------------------------------


def _check_debug(v: Verdict, q: SgxQuote, policy: SgxPolicy) -> None:
    found = f"ATTRIBUTES {q.attributes.hex()} (DEBUG={int(q.debug)})"
    if q.debug and policy.allow_debug:
        v.add("enclave debug", True, expected="DEBUG=0 (debug allowed by policy)", found=found,
              detail="debug enclave accepted by policy: the host can read its memory")
    else:
        v.add("enclave debug", not q.debug, expected="DEBUG=0", found=found)


def _check_measurement(v: Verdict, q: SgxQuote, policy: SgxPolicy) -> None:
    """MRENCLAVE in the allow list, or (MRSIGNER, ISVPRODID) in the signer list with ISVSVN >= its minimum."""
    found = (f"mrenclave {q.mr_enclave.hex()}, mrsigner {q.mr_signer.hex()}, "
             f"isv_prod_id {q.isv_prod_id}, isv_svn {q.isv_svn}")
    if policy.any_measurement:
        v.add("measurement", True, expected="any (--any-measurement)", found=found,
              detail="any measurement was accepted (--any-measurement): the enclave is NOT pinned")
        return
    n = len(policy.mrenclaves) + len(policy.signers)
    expected = (f"one of {len(policy.mrenclaves)} MRENCLAVE and {len(policy.signers)} signer entries" if n
                else "an allow-list entry (the list is empty: nothing is accepted)")
    for i, want in enumerate(policy.mrenclaves):
        if isinstance(want, bytes) and hmac.compare_digest(want, q.mr_enclave):
            v.add("measurement", True, expected=expected, found=found, detail=f"MRENCLAVE matches mrenclaves[{i}]")
            return
    notes = [f"MRENCLAVE not among {len(policy.mrenclaves)} entries"] if policy.mrenclaves else []
    for i, s in enumerate(policy.signers):
        if not isinstance(s.mrsigner, bytes) or not hmac.compare_digest(s.mrsigner, q.mr_signer):
            notes.append(f"signers[{i}]: MRSIGNER differs")
        elif s.isv_prod_id != q.isv_prod_id:
            notes.append(f"signers[{i}]: ISVPRODID {q.isv_prod_id} != {s.isv_prod_id}")
        elif q.isv_svn < s.min_isv_svn:
            notes.append(f"signers[{i}]: ISVSVN {q.isv_svn} < {s.min_isv_svn}")
        else:
            v.add("measurement", True, expected=expected, found=found,
                  detail=f"matches signers[{i}] (MRSIGNER, ISVPRODID {s.isv_prod_id}, ISVSVN >= {s.min_isv_svn})")
            return
    v.add("measurement", False, expected=expected, found=found, detail="; ".join(notes))


def _check_report_data(v: Verdict, q: SgxQuote, expected_report_data: bytes | None) -> None:
    if expected_report_data is None:
        v.add("REPORTDATA binding", True, found=q.report_data.hex(), detail=_BINDING_SKIPPED)
        return
    v.add("REPORTDATA binding", hmac.compare_digest(expected_report_data, q.report_data),
          expected=expected_report_data.hex(), found=q.report_data.hex())
