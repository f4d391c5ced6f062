"""Verify NVIDIA Hopper GPU evidence offline: device chain to the pinned NVIDIA root, FWID binding, SPDM signature,
nonce, then the client's policy (CC mode, driver/VBIOS allow lists). One :class:`Check` per step per GPU.

Imports nothing from ``enclave`` outside ``attestation``. Time comes in as ``now``; nothing here touches the network,
so OCSP revocation is never checked and is reported as unknown (never as good).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.ocsp import OCSPResponse
from cryptography.x509.oid import ExtensionOID

from ..errors import EvidenceFormatError
from .policy import NvidiaPolicy
from ..result import Verdict
from .abi import (
    MAX_CHAIN_TEXT,
    MAX_GPUS,
    MAX_SWITCHES,
    NONCE_SIZE,
    GpuReport,
    OpaqueFieldId,
    parse_cert_fwid,
    parse_dice_tcb_info_fwid,
    parse_gpu_report,
    parse_switch_report,
)
from .rim import (
    NVIDIA_RIM_ROOT_SHA256,
    GoldenMeasurement,
    RimCheck,
    check_rim,
    driver_rim_id,
    gpu_chip,
    vbios_rim_id,
)

#: SHA-256 of the DER of "CN=NVIDIA Device Identity CA, O=NVIDIA" (P-384, 2021-11-05..9999), the root of every Hopper
#: device chain. Pinned by fingerprint: the root travels in the evidence, and only this exact certificate is accepted.
NVIDIA_DEVICE_ROOT_SHA256: Final = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"

#: The DICE TcbInfo extension carrying the firmware id (FWID) in the "GSP FMC LF" leaf.
OID_TCG_DICE_TCB_INFO: Final = x509.ObjectIdentifier("2.23.133.5.4.1")
#: Blackwell's leaf: a TCG DiceTcbInfo structure whose ``fwids[0]`` is the FWID (see ``parse_dice_tcb_info_fwid``).
OID_NVIDIA_BLACKWELL_TCB_INFO: Final = x509.ObjectIdentifier("2.23.133.5.4.1.1")

PLATFORM: Final = "nvidia"
NVDEC0_RIM_INDEX: Final = 35
NVDEC0_DISABLED: Final = 0x55
MAX_CHAIN_CERTS: Final = 8  # Hopper ships 5: FMC LF, BROM, Provisioner ICA, GH100 Identity, Device Identity CA
NO_BINDING_DETAIL: Final = "nonce not checked (--no-binding)"
SWITCH_NO_RIM_DETAIL: Final = "not compared: no LS10 RIM available"
REVOCATION_NOTE: Final = "revocation status unknown (offline): OCSP for the device chain was not checked"

_E = TypeVar("_E", bound=x509.ExtensionType)
_HANDLED_CRITICAL: Final = frozenset({ExtensionOID.KEY_USAGE, ExtensionOID.BASIC_CONSTRAINTS})
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+-----END CERTIFICATE-----")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainResult:
    """The outcome of :func:`check_chain` (root pinning is judged by the caller from ``root_fingerprint``)."""

    certs: tuple[x509.Certificate, ...]
    signatures_ok: bool
    signatures_detail: str
    validity_ok: bool
    validity_detail: str
    root_fingerprint: str

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]


def parse_cert_chain(pem: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM chain as NVIDIA ships it (leaf first, root last).

    Raises:
        EvidenceFormatError: not text, too long, text other than certificate blocks, or a certificate that does not
            parse.
    """
    if not isinstance(pem, str) or len(pem) > MAX_CHAIN_TEXT:
        raise EvidenceFormatError(f"certificate chain must be PEM text of at most {MAX_CHAIN_TEXT} characters")
    blocks = _PEM_CERT.findall(pem)
    # Stray text between blocks is not signed by anyone; refuse it rather than let it ride along in the bundle.
    if _PEM_CERT.sub("", pem).strip():
        raise EvidenceFormatError("certificate chain has text outside CERTIFICATE blocks")
    if not 2 <= len(blocks) <= MAX_CHAIN_CERTS:
        raise EvidenceFormatError(f"certificate chain has {len(blocks)} certificates, expected 2..{MAX_CHAIN_CERTS}")
    try:
        return tuple(x509.load_pem_x509_certificate(b.encode("ascii")) for b in blocks)
    except ValueError as exc:
        raise EvidenceFormatError(f"certificate does not parse: {exc}") from None


def check_chain(certs: tuple[x509.Certificate, ...], now: datetime.datetime) -> ChainResult:
    """Check that ``certs[i]`` is issued by ``certs[i+1]`` and the last is self-signed, each with ECDSA-SHA384, CA
    constraints on every issuer, and that all are valid at ``now``. Pinning is separate (:attr:`root_fingerprint`)."""
    sig_errors: list[str] = []
    n = len(certs)
    for i, cert in enumerate(certs):
        issuer = certs[min(i + 1, n - 1)]
        if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            sig_errors.append(f"cert {i} ({_cn(cert)}) is signed with {cert.signature_algorithm_oid.dotted_string}")
            continue
        try:
            # Also checks issuer name == subject name of the next certificate.
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as exc:
            sig_errors.append(f"cert {i} ({_cn(cert)}) not issued by {_cn(issuer)}: {type(exc).__name__} {exc}")
        sig_errors.extend(_unhandled_critical(cert, i))
        if i > 0:
            sig_errors.extend(_ca_problems(cert, i, issued_below=i - 1))
    leaf_usage = _ext(certs[0], x509.KeyUsage)
    if leaf_usage is None or not leaf_usage.digital_signature:
        sig_errors.append("leaf key usage lacks digitalSignature")
    leaf_key = certs[0].public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or not isinstance(leaf_key.curve, ec.SECP384R1):
        sig_errors.append("leaf key is not ECDSA P-384")

    expired = [
        f"cert {i} ({_cn(c)}) valid {c.not_valid_before_utc:%Y-%m-%d}..{c.not_valid_after_utc:%Y-%m-%d}"
        for i, c in enumerate(certs)
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc
    ]
    return ChainResult(
        certs=certs,
        signatures_ok=not sig_errors,
        signatures_detail="; ".join(sig_errors) or " <- ".join(_cn(c) for c in certs),
        validity_ok=not expired,
        validity_detail="; ".join(expired) or f"all {n} certificates valid at {now.isoformat()}",
        root_fingerprint=hashlib.sha256(certs[-1].public_bytes(Encoding.DER)).hexdigest(),
    )


def _ca_problems(cert: x509.Certificate, i: int, *, issued_below: int) -> list[str]:
    """An issuer must be a CA allowed to sign certificates, and its path length must admit the certs below it."""
    problems: list[str] = []
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        problems.append(f"cert {i} ({_cn(cert)}) is not a CA")
    elif bc.path_length is not None and bc.path_length < issued_below:
        problems.append(f"cert {i} ({_cn(cert)}) path length {bc.path_length} < {issued_below} CAs below it")
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        problems.append(f"cert {i} ({_cn(cert)}) key usage lacks keyCertSign")
    return problems


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    """The extension's value; ``None`` when absent or when the extensions do not parse (callers treat both as
    failing)."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _unhandled_critical(cert: x509.Certificate, i: int) -> list[str]:
    """RFC 5280 4.2: a certificate with a critical extension the verifier does not process must be rejected."""
    try:
        extensions = list(cert.extensions)
    except ValueError as exc:  # duplicate or malformed extensions
        return [f"cert {i} ({_cn(cert)}) extensions do not parse: {exc}"]
    return [
        f"cert {i} ({_cn(cert)}) has unhandled critical extension {e.oid.dotted_string}"
        for e in extensions
        if e.critical and e.oid not in _HANDLED_CRITICAL
    ]


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def cert_fwid(cert: x509.Certificate) -> bytes:
    """The FWID from a leaf's TcbInfo extension.

    Raises:
        EvidenceFormatError: the extension is missing or malformed.
    """
    found = []
    for oid, parse in ((OID_TCG_DICE_TCB_INFO, parse_cert_fwid), (OID_NVIDIA_BLACKWELL_TCB_INFO,
                                                                   parse_dice_tcb_info_fwid)):
        try:
            ext = cert.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        except ValueError as exc:
            raise EvidenceFormatError(f"leaf certificate extensions do not parse: {exc}") from None
        if not isinstance(ext, x509.UnrecognizedExtension):
            raise EvidenceFormatError("unexpected TcbInfo extension type")
        found.append(parse(ext.value))
    # Exactly one: a leaf carrying both would let a verifier pick whichever FWID suits the report.
    if len(found) != 1:
        raise EvidenceFormatError(f"leaf certificate has {len(found)} TcbInfo extensions (2.23.133.5.4.1 on Hopper, "
                                  "2.23.133.5.4.1.1 on Blackwell), expected exactly one")
    return found[0]


def verify_report_signature(report: GpuReport, key: ec.EllipticCurvePublicKey) -> bool:
    """ECDSA P-384 / SHA-384 over :attr:`GpuReport.signed_bytes`; NVIDIA's r and s are big-endian (AMD's are not)."""
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_nvidia(
    gpus: list[tuple[bytes, str]],
    policy: NvidiaPolicy,
    *,
    now: datetime.datetime,
    expected_nonce: bytes | None,
    rims: Sequence[bytes] = (),
    ocsp_responses: Sequence[OCSPResponse] = (),
    switches: Sequence[tuple[bytes, str]] | None = None,
) -> Verdict:
    """Verify every GPU's evidence ``(report bytes, PEM chain)``; the verdict passes only if every check of every GPU
    passes. Checks are named ``gpu[i] <step>``; steps that span GPUs are named ``gpus <step>``.

    Per GPU: parse; cert chain (signatures, CA constraints) to a self-signed root; cert validity at ``now``; root
    pinned (:data:`NVIDIA_DEVICE_ROOT_SHA256`); FWID of the leaf == FWID in the report; report signature by the leaf
    key; nonce == ``expected_nonce`` (constant time; ``None`` = ``--no-binding``, recorded as such); CC mode;
    driver and VBIOS versions in the policy allow lists (unless ``policy.any_version``).

    Reference measurements (``rims``: NVIDIA RIM documents, any order, shared by all GPUs): each GPU takes the driver
    RIM whose version is its signed DRIVER_VERSION and the VBIOS RIM whose version is its signed VBIOS_VERSION (both of
    its chip); each is authenticated (:func:`.rim.check_rim`: XML-DSig, chain to the pinned NVIDIA RIM root,
    validity at ``now``), and every active index of the two is compared with the report's block (one check per index,
    ``gpu[i] measurement N (driver|vbios)``); index 35 is skipped only when the report says NVDEC0 is disabled.

    CC mode: reports carry no CC on/off/devtools field (FEATURE_FLAG is the multi-GPU mode). When RIMs are given, the
    check passes only if both RIMs are authentic and every measurement matches (NVIDIA's verifiers emit their
    secure-boot and debug-disabled claims on exactly that condition; those claims are added). Without RIMs the check
    is recorded as not checkable (``ok=None``) unless the policy accepts that visibly.

    ``switches``: NVSwitch evidence ``(report bytes, PEM chain)`` of a protected-PCIe system, checked as
    ``switch[i] <step>`` against the same ``expected_nonce`` (see :func:`_verify_switches`); ``policy.switch_count``,
    when set, is checked even when no switch evidence is given (0 switches). Revocation (OCSP) is never checked offline: it is listed in
    ``claims["notes"]`` as unknown and is never a passing check.

    Raises:
        ValueError: ``now`` is not timezone-aware (a naive time would silently shift every validity window).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    verdict = Verdict(platform=PLATFORM)
    notes: list[str] = []
    gpu_claims: list[dict[str, Any]] = []
    verdict.claims.update({"gpus": gpu_claims, "notes": notes, "revocation": "unknown"})

    if not verdict.add("gpus count", 1 <= len(gpus) <= MAX_GPUS, expected=f"1..{MAX_GPUS}", found=str(len(gpus))):
        return verdict

    if policy.gpu_count is not None:
        verdict.add("gpus policy count", len(gpus) == policy.gpu_count, expected=str(policy.gpu_count),
                    found=str(len(gpus)), detail="[nvidia] gpu_count")

    rim_checks: list[RimCheck] = []
    for k, data in enumerate(rims):
        try:
            rim_checks.append(check_rim(data, now))
        except EvidenceFormatError as exc:
            verdict.add(f"rim[{k}] parse", False, detail=str(exc))

    leaf_keys: list[bytes | None] = []
    modes: list[tuple[str, int | None] | None] = []
    for i, (raw, pem) in enumerate(gpus):
        claims, certs, leaf_key, mode = _verify_one(verdict, f"gpu[{i}] ", raw, pem, policy, now, expected_nonce,
                                                    rim_checks if rims else None)
        gpu_claims.append(claims)
        leaf_keys.append(leaf_key)
        modes.append(mode)
        if ocsp_responses or policy.require_ocsp:
            claims["revocation"] = _check_revocation(verdict, f"gpu[{i}] ", certs, claims, rim_checks,
                                                     ocsp_responses, policy, now)
        else:
            notes.append(f"gpu[{i}] {REVOCATION_NOTE}; reported as unknown, never as good")
    if ocsp_responses or policy.require_ocsp:
        states = {c["revocation"] for c in gpu_claims}
        verdict.claims["revocation"] = ("revoked" if "revoked" in states else "good" if states == {"good"}
                                        else "unknown")

    if len(gpus) > 1:
        # N copies of one GPU's evidence would otherwise pass as N GPUs: the device keys must differ.
        _distinct(verdict, "gpus distinct devices", leaf_keys)
        # All GPUs of one VM must be in the same multi-GPU mode; a mixed set means the host reconfigured some.
        distinct_modes = {m for m in modes if m is not None}
        verdict.add(
            "gpus consistent mode",
            None not in modes and len(distinct_modes) == 1,
            expected="one (FEATURE_FLAG, PROTECTED_PCIE_STATUS) for all GPUs",
            found=", ".join(sorted(f"{m}/{_hex(p)}" for m, p in distinct_modes)) or "none parsed",
        )
    if switches is not None or policy.switch_count is not None:
        _verify_switches(verdict, list(switches or ()), policy, now, expected_nonce, notes, modes)
    return verdict


def _check_fwid(v: Verdict, prefix: str, chain: ChainResult | None, fwid: bytes | None) -> None:
    """The leaf certificate's TcbInfo FWID against the report's: ties the leaf (the firmware identity it was issued
    to) to the firmware that produced the report, so a leaf of another firmware build cannot vouch for it."""
    if chain is None or fwid is None:
        v.add(prefix + "fwid", False, detail="no leaf certificate")
        return
    try:
        cfwid = cert_fwid(chain.leaf)
    except EvidenceFormatError as exc:
        v.add(prefix + "fwid", False, found=fwid.hex(), detail=str(exc))
    else:
        v.add(prefix + "fwid", hmac.compare_digest(cfwid, fwid), expected=cfwid.hex(), found=fwid.hex(),
              detail="leaf TcbInfo FWID vs report opaque FWID")


def _verify_switches(
    v: Verdict,
    switches: list[tuple[bytes, str]],
    policy: NvidiaPolicy,
    now: datetime.datetime,
    expected_nonce: bytes | None,
    notes: list[str],
    gpu_modes: Sequence[tuple[str, int | None] | None] = (),
) -> None:
    """NVSwitch (LS10) evidence of a protected-PCIe system: per switch ``switch[i] <step>``: parse (switch field
    sizes), chain to the pinned NVIDIA device root, validity, FWID (only when the report carries one: LS10 reports do
    not), SPDM signature by the leaf key, nonce == ``expected_nonce`` (the same key-derived nonce as the GPUs).
    Measurements are never compared (no LS10 RIM is available) and say so as a not-checked line, never a pass.
    With switches, every GPU's signed FEATURE_FLAG (``gpu_modes``) must say protected PCIe: switch evidence beside
    GPUs in another mode does not describe the system those GPUs run in."""
    switch_claims: list[dict[str, Any]] = []
    v.claims["switches"] = switch_claims
    if policy.switch_count is not None:
        v.add("switches policy count", len(switches) == policy.switch_count, expected=str(policy.switch_count),
              found=str(len(switches)), detail="[nvidia] switch_count")
    if not switches:
        return
    found = [m[0] if m is not None else "unparsed" for m in gpu_modes]
    v.add("switches gpus in protected-pcie mode", bool(found) and all(m == "PPCIE" for m in found),
          expected="FEATURE_FLAG PPCIE in every GPU report", found=", ".join(sorted(set(found))) or "no GPUs")
    if not v.add("switches count", len(switches) <= MAX_SWITCHES, expected=f"1..{MAX_SWITCHES}",
                 found=str(len(switches))):
        return
    leaf_keys: list[bytes | None] = []
    for i, (raw, pem) in enumerate(switches):
        prefix = f"switch[{i}] "
        claims: dict[str, Any] = {"revocation": "unknown"}
        switch_claims.append(claims)
        notes.append(f"switch[{i}] {REVOCATION_NOTE}; reported as unknown, never as good")
        report: GpuReport | None = None
        try:
            report = parse_switch_report(raw)
        except EvidenceFormatError as exc:
            v.add(prefix + "parse", False, detail=str(exc))
        else:
            v.add(prefix + "parse", True, found=f"SPDM 1.1, {len(report.blocks)} measurement blocks, "
                  f"{len(report.opaque_fields)} opaque fields")
            pdi = report.opaque(OpaqueFieldId.SWITCH_PDI)
            claims.update(vbios_version=report.vbios_version, nonce=report.nonce.hex(),
                          switch_pdi=None if pdi is None else pdi.hex())
        _, _, leaf_der = _verify_device(v, prefix, report, pem, now, expected_nonce, claims, fwid_required=False,
                                        nonce_detail="requester nonce in GET_MEASUREMENTS (the GPUs' nonce)")
        if report is None:
            leaf_keys.append(None)
            continue
        if report.fwid is None:
            notes.append(f"switch[{i}] fwid not compared: the report carries no FWID opaque field (LS10)")
        v.add(prefix + "measurements", None, found=f"{len(report.blocks)} blocks",
              detail=SWITCH_NO_RIM_DETAIL)
        leaf_keys.append(leaf_der)
    if len(switches) > 1:
        _distinct(v, "switches distinct devices", leaf_keys)


def _verify_one(
    v: Verdict,
    prefix: str,
    raw: bytes,
    pem: str,
    policy: NvidiaPolicy,
    now: datetime.datetime,
    expected_nonce: bytes | None,
    rim_checks: list[RimCheck] | None,
) -> tuple[dict[str, Any], tuple[x509.Certificate, ...], bytes | None, tuple[str, int | None] | None]:
    claims: dict[str, Any] = {"revocation": "unknown"}
    report: GpuReport | None = None
    try:
        report = parse_gpu_report(raw)
    except EvidenceFormatError as exc:
        v.add(prefix + "parse", False, detail=str(exc))
    else:
        padding = f"{report.padding} trailing zero byte(s) ignored, outside the signed range" if report.padding else ""
        v.add(
            prefix + "parse",
            True,
            found=f"SPDM 1.1, {len(report.blocks)} measurement blocks, {len(report.opaque_fields)} opaque fields",
            detail=padding,
        )
        claims.update(
            driver_version=report.driver_version,
            vbios_version=report.vbios_version,
            fwid=report.fwid.hex() if report.fwid else None,
            nonce=report.nonce.hex(),
            mode=report.mode,
            protected_pcie_status=_hex(report.protected_pcie_status),
            project=report.project,
            project_sku=report.project_sku,
            chip_sku=report.chip_sku,
        )

    certs, chain, leaf_der = _verify_device(v, prefix, report, pem, now, expected_nonce, claims,
                                            fwid_required=True, nonce_detail="requester nonce in GET_MEASUREMENTS")
    if chain is not None:
        claims["hwmodel"] = _cn(chain.certs[1]) if len(chain.certs) > 1 else None
    if report is None:
        return claims, certs, None, None

    if rim_checks is not None:
        leaf_cn = _cn(chain.leaf) if chain is not None and chain.signatures_ok else None
        full_match = _check_rims(v, prefix, report, leaf_cn, rim_checks, policy, claims)
        v.add(
            prefix + "cc mode",
            full_match,
            expected="every measurement equal to NVIDIA's signed reference values",
            found="all matched" if full_match else "not all matched (see above)",
            detail=("proven as far as evidence allows: secure boot and debug disabled (NVIDIA's claims on a full "
                    "RIM match); CC on / devtools off are what the gateway's NVML check reported, in the bound "
                    "configuration" if full_match else "not proven: reference measurements did not all verify"),
        )
        if full_match:
            claims.update(secboot=True, dbgstat="disabled")
    else:
        unverifiable = ("not present in evidence: reports carry no CC on/off/devtools field (FEATURE_FLAG is the "
                        "multi-GPU mode); devtools shows only as changed measurements, and no RIMs were given")
        v.add(
            prefix + "cc mode",
            True if policy.accept_unverifiable_cc_mode else None,
            expected="on",
            found=f"FEATURE_FLAG {report.mode}",
            detail=("NOT VERIFIED, accepted by policy (accept_unverifiable_cc_mode): " + unverifiable
                    if policy.accept_unverifiable_cc_mode else unverifiable),
        )
    _check_version(v, prefix + "driver version", report.driver_version, policy.allowed_driver_versions,
                   policy.any_version, fold_case=False)
    _check_version(v, prefix + "vbios version", report.vbios_version, policy.allowed_vbios_versions,
                   policy.any_version, fold_case=True)

    return claims, certs, leaf_der, (report.mode, report.protected_pcie_status)


def _verify_device(
    v: Verdict,
    prefix: str,
    report: GpuReport | None,
    pem: str,
    now: datetime.datetime,
    expected_nonce: bytes | None,
    claims: dict[str, Any],
    *,
    fwid_required: bool,
    nonce_detail: str,
) -> tuple[tuple[x509.Certificate, ...], ChainResult | None, bytes | None]:
    """The steps a GPU and an NVSwitch share, in this order: cert chain, cert validity, root pinned (sets
    ``claims["device"]``); then, when the report parsed: fwid (when the report carries one; else a failed check only
    if ``fwid_required``), signature by the P-384 leaf key, nonce. Returns the parsed certificates (empty when the PEM
    did not parse), the chain (None when it did not load) and the leaf's public key DER (None when the report did not
    parse or there is no usable P-384 leaf key)."""
    certs: tuple[x509.Certificate, ...] = ()
    chain: ChainResult | None = None
    try:
        certs = parse_cert_chain(pem)
        chain = check_chain(certs, now)
    except (EvidenceFormatError, UnsupportedAlgorithm, ValueError) as exc:  # a key or curve cryptography cannot load
        v.add(prefix + "cert chain", False, detail=str(exc))
        v.add(prefix + "cert validity", False, detail="no chain")
        v.add(prefix + "root pinned", False, expected=NVIDIA_DEVICE_ROOT_SHA256, detail="no chain")
    else:
        v.add(prefix + "cert chain", chain.signatures_ok, detail=chain.signatures_detail)
        v.add(prefix + "cert validity", chain.validity_ok, detail=chain.validity_detail)
        v.add(
            prefix + "root pinned",
            hmac.compare_digest(chain.root_fingerprint, NVIDIA_DEVICE_ROOT_SHA256),
            expected=NVIDIA_DEVICE_ROOT_SHA256,
            found=chain.root_fingerprint,
            detail="SHA-256 of the root certificate's DER",
        )
        claims["device"] = chain.leaf.subject.rfc4514_string()

    if report is None:
        return certs, chain, None

    leaf_key: ec.EllipticCurvePublicKey | None = None
    if chain is not None:
        key = chain.leaf.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
            leaf_key = key

    if report.fwid is not None:
        _check_fwid(v, prefix, chain, report.fwid)
    elif fwid_required:
        v.add(prefix + "fwid", False,
              detail="no leaf certificate" if chain is None else "report has no FWID opaque field")

    if leaf_key is None:
        v.add(prefix + "signature", False, detail="no usable P-384 leaf key")
    else:
        v.add(prefix + "signature", verify_report_signature(report, leaf_key),
              detail=f"ECDSA P-384/SHA-384 over {len(report.signed_bytes)} bytes (request || response - signature)")

    if expected_nonce is None:
        v.add(prefix + "nonce", True, found=report.nonce.hex(), detail=NO_BINDING_DETAIL)
    else:
        v.add(
            prefix + "nonce",
            len(expected_nonce) == NONCE_SIZE and hmac.compare_digest(expected_nonce, report.nonce),
            expected=expected_nonce.hex(),
            found=report.nonce.hex(),
            detail=nonce_detail,
        )
    return certs, chain, (None if leaf_key is None
                          else leaf_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _distinct(v: Verdict, name: str, keys: Sequence[bytes | None]) -> None:
    """N copies of one device's evidence would otherwise pass as N devices: every device key must be present (its
    evidence parsed, with a usable leaf key) and differ from the others."""
    present = [k for k in keys if k is not None]
    v.add(name, len(present) == len(keys) and len(set(present)) == len(present),
          expected=f"{len(keys)} distinct device keys", found=f"{len(set(present))} distinct of {len(present)} parsed")


def _check_rims(
    v: Verdict,
    prefix: str,
    report: GpuReport,
    leaf_cn: str | None,
    rim_checks: list[RimCheck],
    policy: NvidiaPolicy,
    claims: dict[str, Any],
) -> bool:
    """Select, authenticate and compare this GPU's driver and VBIOS RIMs; True only on a complete match."""
    try:
        chip = gpu_chip(report.chip_info, leaf_cn)
    except EvidenceFormatError as exc:
        chip = None
        v.add(prefix + "chip", False, detail=f"CHIP_INFO: {exc}")
    ok = chip is not None
    golden: dict[str, dict[int, GoldenMeasurement]] = {}
    rim_claims: dict[str, Any] = {}
    claims["rims"] = rim_claims
    roles = (
        ("driver", report.driver_version, False,
         None if chip is None or report.driver_version is None else driver_rim_id(chip, report.driver_version)),
        ("vbios", report.vbios_version, True,
         None if report.vbios_version is None
         else vbios_rim_id(report.project, report.project_sku, report.chip_sku, report.vbios_version)),
    )
    for role, version, fold, rim_id in roles:
        name = f"{prefix}{role} rim"
        if version is None or rim_id is None or chip is None:
            v.add(name, False, detail="the report lacks the version or chip the RIM is chosen by")
            ok = False
            continue
        want = version.upper() if fold else version
        same = [c for c in rim_checks if (c.document.version.upper() if fold else c.document.version) == want]
        # A mixed fleet may ship RIMs of one version for two chips: prefer this chip's, else report the other's.
        found = [c for c in same if c.document.product == chip] or same
        given = ", ".join(f"{c.document.product} {c.document.version}" for c in rim_checks) or "none"
        if len(found) != 1:
            v.add(name, False, expected=f"{rim_id} (version {version}, product {chip})",
                  found=f"{len(found)} RIMs of that version; given: {given}",
                  detail="exactly one RIM per GPU component must be given")
            ok = False
            continue
        rim = found[0]
        doc = rim.document
        allowed_id = not policy.allowed_rim_ids or rim_id in policy.allowed_rim_ids
        allowed_sha = not policy.allowed_rim_sha256 or rim.sha256 in policy.allowed_rim_sha256
        identity_ok = doc.product == chip and doc.edition == "GPU" and allowed_id and allowed_sha
        problems = [p for p, bad in (
            (f"RIM product {doc.product} is not the GPU's chip {chip}", doc.product != chip),
            (f"RIM edition {doc.edition!r} is not GPU", doc.edition != "GPU"),
            ("id not in [nvidia] allowed_rim_ids", not allowed_id),
            ("file not in [nvidia] allowed_rim_sha256", not allowed_sha),
        ) if bad]
        v.add(name, identity_ok, expected=f"{rim_id} (version {version}, product {chip})",
              found=f"product {doc.product}, version {doc.version}, sha256 {rim.sha256[:16]}…, issued {rim.issued}",
              detail="; ".join(problems))
        v.add(name + " signature", rim.signature_ok, detail=rim.signature_detail)
        v.add(name + " chain", rim.chain_ok, expected=f"pinned NVIDIA RIM root {NVIDIA_RIM_ROOT_SHA256[:16]}…",
              detail=rim.chain_detail)
        v.add(name + " validity", rim.validity_ok, detail=rim.validity_detail)
        rim_claims[role] = {"id": rim_id, "version": doc.version, "sha256": rim.sha256, "issued": rim.issued}
        ok = ok and identity_ok and rim.authentic
        if rim.signature_ok and rim.chain_ok:
            golden[role] = doc.measurements  # an expired RIM is compared too; its validity check already fails

    for role in ("driver", "vbios"):
        if role not in golden:
            v.add(f"{prefix}measurements ({role})", None, detail=f"not compared: no authentic {role} RIM")
            ok = False
    if len(golden) == 2:
        overlap = sorted(set(golden["driver"]) & set(golden["vbios"]))
        ok = v.add(prefix + "rim index overlap", not overlap, expected="none",
                   found=", ".join(map(str, overlap)) or "none",
                   detail="an index active in both the driver and the VBIOS RIM is ambiguous") and ok

    runtime = report.measurements
    compared = matched = 0
    skipped: list[int] = []
    for index, role, g in sorted((i, r, g) for r, ms in golden.items() for i, g in ms.items()):
        name = f"{prefix}measurement {index} ({role})"
        value = runtime.get(index + 1)  # RIM index i is SPDM block i + 1
        if index == NVDEC0_RIM_INDEX and report.nvdec0_status == NVDEC0_DISABLED:
            v.add(name, True, found="not compared",
                  detail="skipped: the signed report says NVDEC0 is disabled (opaque field 11 = 0x55)")
            skipped.append(index)
            continue
        compared += 1
        alts = [k for k, a in enumerate(g.alternatives) if hmac.compare_digest(a, value or b"")]
        hit = value is not None and bool(alts) and g.size == len(value)
        matched += hit
        rim = rim_claims[role]
        v.add(
            name,
            hit,
            expected=(g.alternatives[alts[0]] if hit else g.alternatives[0]).hex()
            + ("" if hit or len(g.alternatives) == 1 else f" (or {len(g.alternatives) - 1} other alternatives)"),
            found="no such block" if value is None else value.hex(),
            detail=(f"alternative {alts[0] + 1} of {len(g.alternatives)}" if hit
                    else f"MISMATCH against {rim['id']} issued {rim['issued']}"),
        )
        ok = ok and hit
    rim_claims.update(compared=compared, matched=matched, skipped=skipped)
    return ok


def _check_revocation(v: Verdict, prefix: str, device: tuple[x509.Certificate, ...], claims: dict[str, Any],
                      rim_checks: list[RimCheck], responses: Sequence[OCSPResponse], policy: NvidiaPolicy,
                      now: datetime.datetime) -> str:
    """Stapled OCSP for the device chain (every certificate of ``device`` but the leaf and the root, as nvtrust does;
    ``device`` is the chain :func:`_verify_device` parsed, empty when it did not parse) and for each RIM this GPU used
    (every certificate but the root). Returns the GPU's overall revocation claim."""
    from .ocsp import check_ocsp, ocsp_ok
    from .rim import _pinned_root

    seen: list[str] = []
    chains: list[tuple[str, list[tuple[x509.Certificate, x509.Certificate]]]] = [
        ("device chain", [(device[i], device[i + 1]) for i in range(1, len(device) - 1)])]
    used = {r.get("sha256") for r in (claims.get("rims") or {}).values() if isinstance(r, dict)}
    for rc in rim_checks:
        if rc.sha256 in used:
            chain = [*rc.certs[:-1], _pinned_root(None)]
            chains.append((f"rim {rc.document.version}", [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]))
    for label, pairs in chains:
        statuses = [(c, check_ocsp(c, issuer, responses, now)) for c, issuer in pairs]
        ok = bool(pairs) and all(ocsp_ok(st, policy.require_ocsp) for _, st in statuses)
        v.add(f"{prefix}ocsp {label}", ok,
              expected="good" + ("" if policy.require_ocsp else " (missing/unknown tolerated: require_ocsp off)"),
              found="; ".join(f"{_cn(c)}: {st.status}" for c, st in statuses) or "no certificates",
              detail="; ".join(f"{_cn(c)}: {st.detail}" for c, st in statuses if st.status != "good"))
        seen += [st.status for _, st in statuses]
    if "revoked" in seen:
        return "revoked"
    return "good" if seen and all(s == "good" for s in seen) else "unknown"


def _check_version(
    v: Verdict, name: str, found: str | None, allowed: tuple[str, ...], any_version: bool, *, fold_case: bool
) -> None:
    if found is None:
        v.add(name, False, detail="not present in report")
    elif any_version:
        v.add(name, True, found=found, detail="any version accepted (--any-version)")
    else:
        # VBIOS versions are hex digits: "96.00.9f.00.01" (nvtrust) and "96.00.9F.00.01" are the same version.
        ok = found.upper() in {a.upper() for a in allowed} if fold_case else found in allowed
        v.add(name, ok, expected=" | ".join(allowed) or "(empty allow list)", found=found)


def _hex(value: int | None) -> str | None:
    return None if value is None else f"0x{value:02x}"


# --- golden measurements (RIM): diagnostics only -----------------------------------------------------------------

_SWID_NS: Final = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
_SHA384_NS: Final = "{http://www.w3.org/2001/04/xmlenc#sha384}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RimComparison:
    """Active RIM measurements against the report's blocks (RIM index ``i`` is SPDM block ``i + 1``)."""

    matched: tuple[int, ...]  # RIM indices
    mismatched: tuple[int, ...]
    missing: tuple[int, ...]  # active in the RIM, no such block in the report


def compare_rim_measurements(report: GpuReport, rim_xml: bytes) -> RimComparison:
    """Compare a RIM's active golden measurements with ``report``'s measurement blocks.

    **Diagnostics only, not a verification step:** the RIM's XML-DSig signature and its signer chain (to the NVIDIA
    RIM root) are NOT checked here, so a match proves nothing about an unauthenticated RIM. ``verify_nvidia`` does not
    call this; it exists to cross-check the block parser against NVIDIA's published golden values.

    Raises:
        EvidenceFormatError: the XML does not parse or a Resource is malformed.
    """
    import xml.etree.ElementTree as ET  # local: only this diagnostic needs it

    try:
        root = ET.fromstring(rim_xml)
    except ET.ParseError as exc:
        raise EvidenceFormatError(f"RIM is not XML: {exc}") from None
    blocks = report.measurements
    matched: list[int] = []
    mismatched: list[int] = []
    missing: list[int] = []
    for res in root.iter(f"{_SWID_NS}Resource"):
        if res.get("type") != "Measurement" or res.get("active") != "True":
            continue
        try:
            index = int(res.get("index", ""))
            n_alt = int(res.get("alternatives", "1"))
            golden = {bytes.fromhex(res.get(f"{_SHA384_NS}Hash{k}", "")) for k in range(n_alt)}
        except ValueError as exc:
            raise EvidenceFormatError(f"RIM Resource malformed: {exc}") from None
        value = blocks.get(index + 1)
        if value is None:
            missing.append(index)
        elif value in golden:
            matched.append(index)
        else:
            mismatched.append(index)
    return RimComparison(matched=tuple(matched), mismatched=tuple(mismatched), missing=tuple(missing))
