"""Verify an SEV-SNP report with its certificates against a :class:`SnpPolicy` (go-sev-guest's verify + validate).

Offline and clock-injected: the caller passes ``now``. Imports nothing from ``enclave`` outside ``attestation``.
"""

from __future__ import annotations

import datetime
import hmac
from collections.abc import Mapping
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ..errors import EvidenceFormatError
from .policy import SnpPolicy
from ..result import Verdict
from .abi import Product, SigningKey, SnpReport, TcbParts, decode_tcb, parse_report
from .certs import (
    LEAF_ROLES,
    EndorsementExtensions,
    build_chain,
    ca_problem,
    common_name,
    endorsement_key_type,
    fingerprint,
    load_role_certs,
    p384_key,
    parse_extensions,
    pinned_product,
    self_issued,
    signed_by,
    unique_pool,
    validity_problem,
)

PLATFORM: Final = "sev-snp"
TCB_KEYS: Final = ("bootloader", "tee", "snp", "microcode", "fmc")
BINDING_SKIPPED: Final = "binding skipped (--no-binding)"
ANY_MEASUREMENT: Final = "any measurement accepted (--any-measurement)"


def verify_snp(
    report: bytes,
    certs: Mapping[str, str],
    policy: SnpPolicy,
    *,
    now: datetime.datetime,
    expected_report_data: bytes | None,
) -> Verdict:
    """Verify a raw SNP report and its certificate chain, then judge it against ``policy``.

    ``certs`` is the evidence bundle's ``certs`` field: role ("vcek" or "vlek", "ask" or "asvk", "ark") -> PEM; one
    PEM may hold several certificates, and issuers are found by name, not by role or position. One :class:`Check`
    is recorded per step, every step is attempted (so the document lists every violation), and ``Verdict.ok`` is
    true only if all of them passed. A step that cannot run because an earlier one had nothing to work with is
    recorded with ``ok=None`` (never a pass).

    ``expected_report_data=None`` is for auditing raw evidence whose binding preimage is unknown (``veil attest
    verify --no-binding``): the REPORT_DATA check is then recorded as passed with the detail "binding skipped
    (--no-binding)", so the document says the key binding was not established. Clients that encrypt to a key must
    always pass the expected 64 bytes.

    Cryptographic and policy failures are FAIL checks, never exceptions.

    Raises:
        EvidenceFormatError: the report or a certificate cannot be parsed at all.
        ValueError: ``now`` is naive or ``expected_report_data`` is not 64 bytes (caller bugs).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (certificate validity is in UTC)")
    if expected_report_data is not None and len(expected_report_data) != 64:
        raise ValueError(f"expected_report_data must be 64 bytes, not {len(expected_report_data)}")

    r = parse_report(report)
    roles = load_role_certs(certs)
    v = Verdict(platform=PLATFORM, measurement=r.measurement, report_data=r.report_data)
    v.add("parse", True, expected="SEV-SNP ATTESTATION_REPORT v2/v3/v5, reserved fields zero",
          found=f"v{r.version}, {len(r.raw)} bytes, signed by {r.signing_key.name}")

    # --- the certificate that claims to have signed the report ----------------------------------------------------
    leaf_role, leaf = _pick_leaf(roles, r.signing_key)
    ext: EndorsementExtensions | None = None
    ext_error = ""
    if leaf is not None:
        try:
            ext = parse_extensions(leaf)
        except EvidenceFormatError as exc:
            # The leaf is only a claim until the chain verifies; a malformed extension is a failed check, and the
            # signature/chain results are still worth reporting.
            ext_error = str(exc)
    pool = unique_pool(roles.values())

    # --- root, chain, validity ------------------------------------------------------------------------------------
    chain: list[x509.Certificate] = []
    chain_error: str | None = "no VCEK/VLEK certificate in the evidence"
    if leaf is not None:
        chain, chain_error = build_chain(leaf, pool)
    ark_product = _check_ark(v, chain, chain_error, pool)
    _check_chain(v, r.signing_key, leaf, chain, chain_error, ark_product)
    _check_validity(v, chain, chain_error, now)
    _check_signing_key(v, r, policy, leaf_role, leaf, ext, ext_error)

    # --- which product (TCB layout) -------------------------------------------------------------------------------
    cert_product = ext.product if ext is not None else None
    product = _check_product(v, r, ark_product, cert_product, ext)

    # --- the report signature and the certificate <-> report binding ----------------------------------------------
    _check_report_signature(v, r, leaf)
    reported = _reported_tcb(r, product)
    _check_tcb_binding(v, r, ext, product, reported)
    _check_chip_binding(v, r, leaf, ext, product)

    # --- policy ---------------------------------------------------------------------------------------------------
    _check_policy(v, r, policy, reported)
    _check_measurement(v, r, policy)
    _check_report_data(v, r, expected_report_data)

    v.claims = _claims(r, product, leaf_role, ext, reported)
    return v


def verify_snp_certs(certs: Mapping[str, str], *, now: datetime.datetime) -> Verdict:
    """Check only the certificates (no report): leaf type, pinned ARK, chain, validity at ``now``, product.

    For a gateway that wants to know at start-up that the host-provided VCEK/VLEK chain is usable, and for chains
    shipped without a report. The leaf's expected type comes from its role ("vcek" or "vlek").

    Raises:
        EvidenceFormatError: a certificate cannot be parsed at all.
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (certificate validity is in UTC)")
    roles = load_role_certs(certs)
    v = Verdict(platform=PLATFORM)
    wanted = SigningKey.VLEK if roles.get("vlek") and not roles.get("vcek") else SigningKey.VCEK
    leaf_role, leaf = _pick_leaf(roles, wanted)
    ext: EndorsementExtensions | None = None
    ext_error = "no VCEK/VLEK certificate in the evidence"
    if leaf is not None:
        try:
            ext = parse_extensions(leaf)
        except EvidenceFormatError as exc:
            ext_error = str(exc)
    actual = endorsement_key_type(leaf, ext) if leaf is not None and ext is not None else None
    v.add("signing key", actual is wanted and leaf_role == wanted.name.lower(),
          expected=f"{wanted.name} certificate in role {wanted.name.lower()!r}",
          found="none" if leaf is None else f"role {leaf_role!r}, CN={common_name(leaf)}, "
          f"{'unrecognised' if actual is None else actual.name}",
          detail="" if ext is not None else ext_error)
    pool = unique_pool(roles.values())
    chain: list[x509.Certificate] = []
    chain_error: str | None = "no VCEK/VLEK certificate in the evidence"
    if leaf is not None:
        chain, chain_error = build_chain(leaf, pool)
    ark_product = _check_ark(v, chain, chain_error, pool)
    _check_chain(v, wanted, leaf, chain, chain_error, ark_product)
    _check_validity(v, chain, chain_error, now)
    product = _check_product(v, None, ark_product, ext.product if ext is not None else None, ext)
    v.claims = {"product": str(product) if product is not None else None, "signing_key": wanted.name}
    if ext is not None:
        v.claims.update(cert_product_name=ext.product_name, certified_tcb=ext.spl_dict())
        if ext.hwid is not None:
            v.claims["hwid"] = ext.hwid.hex()
        if ext.csp_id is not None:
            v.claims["csp_id"] = ext.csp_id
    return v


# --- steps ---------------------------------------------------------------------------------------------------------


def _pick_leaf(
    roles: Mapping[str, list[x509.Certificate]], signing_key: SigningKey
) -> tuple[str | None, x509.Certificate | None]:
    """The leaf whose role matches SIGNING_KEY if present, else whatever leaf the bundle carries (it then fails)."""
    preferred = {SigningKey.VCEK: "vcek", SigningKey.VLEK: "vlek"}.get(signing_key)
    order = [preferred] if preferred else []
    order += [role for role in LEAF_ROLES if role != preferred]
    for role in order:
        if role is None:
            continue
        # Some sources ship the leaf PEM with its ASK and ARK appended (trustee's Azure vcek.pem); the leaf is the one
        # certificate in the role that is not a CA, the others only join the pool the chain is built from.
        leaves = [c for c in roles.get(role, []) if ca_problem(c) is not None]
        if len(leaves) > 1:
            raise EvidenceFormatError(
                f"certificate role {role!r} holds {len(leaves)} end-entity certificates; expected one"
            )
        if leaves:
            return role, leaves[0]
        if roles.get(role):
            raise EvidenceFormatError(f"certificate role {role!r} holds only CA certificates, no {role.upper()}")
    return None, None


def _check_signing_key(
    v: Verdict, r: SnpReport, policy: SnpPolicy, leaf_role: str | None, leaf: x509.Certificate | None,
    ext: EndorsementExtensions | None, ext_error: str,
) -> None:
    name = "signing key"
    wanted = r.signing_key
    allowed = "VCEK or VLEK" if policy.allow_vlek else "VCEK (VLEK not allowed by policy)"
    expected = f"{wanted.name} certificate; report key {allowed}"
    if wanted is SigningKey.NONE:
        v.add(name, False, expected=expected, found="SIGNING_KEY=none", detail="the report is not signed")
        return
    if wanted is SigningKey.VLEK and not policy.allow_vlek:
        v.add(name, False, expected=expected, found="VLEK", detail="policy allow_vlek = false")
        return
    if leaf is None:
        v.add(name, False, expected=expected, found="no VCEK/VLEK certificate",
              detail=f"the evidence carries no {wanted.name} (fail closed: nothing to verify the report with)")
        return
    if ext is None:
        v.add(name, False, expected=expected, found=f"{leaf_role}: {common_name(leaf)}", detail=ext_error)
        return
    actual = endorsement_key_type(leaf, ext)
    found = f"role {leaf_role!r}, subject CN={common_name(leaf)}, {'unrecognised' if actual is None else actual.name}"
    ok = actual is wanted and leaf_role == wanted.name.lower()
    v.add(name, ok, expected=expected, found=found,
          detail="" if ok else "certificate type does not match KEY_INFO.SIGNING_KEY")


def _check_ark(
    v: Verdict, chain: list[x509.Certificate], chain_error: str | None, pool: list[x509.Certificate]
) -> Product | None:
    """The chain's root (or, with no chain, any self-issued certificate) must be a pinned ARK, byte for byte."""
    name = "ARK pinned"
    expected = "SHA-256(DER) of a pinned AMD ARK (Milan, Genoa, Turin)"
    if chain_error is None or chain and chain[-1].subject == chain[-1].issuer:
        candidates = [chain[-1]]
    else:
        candidates = self_issued(pool)
    if not candidates:
        v.add(name, False, expected=expected, found="no self-signed root in the evidence")
        return None
    for root in candidates:
        product = pinned_product(root)
        if product is not None:
            v.add(name, True, expected=expected, found=f"ARK-{product} {fingerprint(root)}")
            return product
    v.add(name, False, expected=expected,
          found=", ".join(f"{common_name(c)} {fingerprint(c)}" for c in candidates),
          detail="the root is not a pinned AMD ARK")
    return None


def _check_chain(
    v: Verdict, signing_key: SigningKey, leaf: x509.Certificate | None, chain: list[x509.Certificate],
    chain_error: str | None, ark_product: Product | None,
) -> None:
    name = "certificate chain"
    want_leaf = "VLEK" if signing_key is SigningKey.VLEK else "VCEK"
    want_mid = "ASVK" if signing_key is SigningKey.VLEK else "ASK"
    expected = f"ARK (self-signed) -> {want_mid} -> {want_leaf}, RSASSA-PSS SHA-384 MGF1-SHA-384 salt 48"
    if leaf is None:
        v.add(name, None, expected=expected, detail="not checked: no VCEK/VLEK certificate")
        return
    found = " <- ".join(common_name(c) for c in reversed(chain))
    if chain_error is not None:
        v.add(name, False, expected=expected, found=found, detail=chain_error)
        return
    leaf_c, mid, ark = chain
    problems = [p for p in (signed_by(ark, ark), signed_by(mid, ark), signed_by(leaf_c, mid)) if p]
    problems += [p for p in (ca_problem(ark), ca_problem(mid)) if p]
    if ark_product is None:
        problems.append("root is not a pinned ARK")
    else:
        # Names as AMD issues them; a VCEK must hang off the ASK and a VLEK off the ASVK of the pinned product.
        mid_cn = f"SEV-VLEK-{ark_product}" if signing_key is SigningKey.VLEK else f"SEV-{ark_product}"
        if common_name(ark) != f"ARK-{ark_product}":
            problems.append(f"root CN {common_name(ark)!r} is not 'ARK-{ark_product}'")
        if common_name(mid) != mid_cn:
            problems.append(f"intermediate CN {common_name(mid)!r} is not {mid_cn!r} for a {want_leaf}")
    if p384_key(leaf_c) is None:
        problems.append(f"{common_name(leaf_c)} key is not EC P-384")
    v.add(name, not problems, expected=expected, found=found, detail="; ".join(problems))


def _check_validity(
    v: Verdict, chain: list[x509.Certificate], chain_error: str | None, now: datetime.datetime
) -> None:
    name = "certificate validity"
    expected = f"every certificate valid at {now.astimezone(datetime.UTC).isoformat()}"
    if not chain:
        v.add(name, None, expected=expected, detail="not checked: no VCEK/VLEK certificate")
        return
    problems = [p for p in (validity_problem(c, now) for c in chain) if p]
    found = "; ".join(
        f"{common_name(c)} {c.not_valid_before_utc.date()}..{c.not_valid_after_utc.date()}" for c in chain
    )
    if chain_error is not None and not problems:
        v.add(name, None, expected=expected, found=found, detail="not checked: incomplete chain")
        return
    v.add(name, not problems, expected=expected, found=found, detail="; ".join(problems))


def _check_product(
    v: Verdict, r: SnpReport | None, ark_product: Product | None, cert_product: Product | None,
    ext: EndorsementExtensions | None,
) -> Product | None:
    """ARK, VCEK productName and (v3+) CPUID must name one product; the first known of them decides the TCB layout."""
    name = "product"
    sources = {"ARK": ark_product, "productName": cert_product}
    if r is not None and r.version >= 3:
        sources["CPUID"] = r.cpuid_product
    found = ", ".join(f"{k} {val or 'unknown'}" for k, val in sources.items())
    if ext is not None:
        found += f" (productName {ext.product_name!r})"
    if r is not None and r.version >= 3:
        found += f" (CPUID family 0x{r.cpuid_fam_id:02x} model 0x{r.cpuid_mod_id:02x})"
    known = {p for p in sources.values() if p is not None}
    product = ark_product or cert_product or (r.cpuid_product if r is not None else None)
    ok = len(known) == 1 and all(p is not None for p in sources.values())
    detail = "" if ok else ("sources disagree" if len(known) > 1 else "product not established by every source")
    v.add(name, ok, expected="ARK, VCEK/VLEK productName and CPUID name the same product", found=found, detail=detail)
    return product


def _check_report_signature(v: Verdict, r: SnpReport, leaf: x509.Certificate | None) -> None:
    name = "report signature"
    expected = "ECDSA P-384 / SHA-384 over report bytes [0x000, 0x2A0) under the VCEK/VLEK key"
    if leaf is None:
        v.add(name, None, expected=expected, detail="not checked: no VCEK/VLEK certificate")
        return
    key = p384_key(leaf)
    if key is None:
        v.add(name, False, expected=expected, found=f"{type(leaf.public_key()).__name__} key")
        return
    # R and S are little-endian in the report; DER wants the integers.
    der = encode_dss_signature(r.signature_r, r.signature_s)
    try:
        key.verify(der, r.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        v.add(name, False, expected=expected, found="invalid", detail=f"under {common_name(leaf)}")
        return
    v.add(name, True, expected=expected, found="valid")


def _reported_tcb(r: SnpReport, product: Product | None) -> TcbParts | None:
    if product is None:
        return None
    try:
        return decode_tcb(r.reported_tcb, product, field="REPORTED_TCB")
    except EvidenceFormatError:
        return None


def _check_tcb_binding(
    v: Verdict, r: SnpReport, ext: EndorsementExtensions | None, product: Product | None, reported: TcbParts | None
) -> None:
    name = "TCB binding"
    expected = "certificate SPL extensions == REPORTED_TCB"
    if ext is None:
        v.add(name, None, expected=expected, detail="not checked: no usable VCEK/VLEK certificate")
        return
    if product is None:
        v.add(name, None, expected=expected, found=f"REPORTED_TCB {r.reported_tcb.hex()}",
              detail="not checked: product (TCB layout) unknown")
        return
    if reported is None:
        v.add(name, False, expected=expected, found=f"REPORTED_TCB {r.reported_tcb.hex()}",
              detail=f"reserved bytes of the {product} TCB layout are not zero")
        return
    certified = ext.spl_dict()
    if product is Product.TURIN and ext.fmc_spl is None:
        v.add(name, False, expected=expected, found=f"cert {certified}", detail="Turin certificate lacks fmcSPL")
        return
    if product is not Product.TURIN and ext.fmc_spl is not None:
        v.add(name, False, expected=expected, found=f"cert {certified}",
              detail=f"{product} has no FMC, the certificate has fmcSPL")
        return
    got = reported.as_dict()
    ok = certified == got
    v.add(name, ok, expected=f"{expected} ({product} layout)", found=f"cert {certified}, report {got}",
          detail="" if ok else "the certificate was issued for a different TCB")


def _check_chip_binding(
    v: Verdict, r: SnpReport, leaf: x509.Certificate | None, ext: EndorsementExtensions | None,
    product: Product | None,
) -> None:
    name = "chip binding"
    if leaf is None or ext is None:
        v.add(name, None, expected="VCEK hwID == CHIP_ID", detail="not checked: no usable VCEK/VLEK certificate")
        return
    if ext.hwid is None:
        # A VLEK is endorsed per cloud provider, not per chip; the report's CHIP_ID is zero. Its key type was already
        # matched against SIGNING_KEY, so what remains is to say whom it binds to.
        ok = ext.csp_id is not None and r.signing_key is SigningKey.VLEK
        v.add(name, ok, expected="VLEK: bound to a cloud provider (cspID), no hwID",
              found=f"cspID {ext.csp_id!r}, CHIP_ID {'zero' if not any(r.chip_id) else r.chip_id.hex()}",
              detail="VLEK reports carry no chip identity" if ok else "certificate has neither hwID nor a VLEK cspID")
        return
    if product is Product.TURIN or len(ext.hwid) == 8:
        # Turin: 8 significant CHIP_ID bytes, then 56 zero bytes; the VCEK's hwID holds only the 8.
        expected = "Turin: hwID (8 bytes) == CHIP_ID[0:8] and CHIP_ID[8:64] zero"
        ok = (product is Product.TURIN and len(ext.hwid) == 8 and hmac.compare_digest(ext.hwid, r.chip_id[:8])
              and not any(r.chip_id[8:]))
    else:
        expected = "hwID (64 bytes) == CHIP_ID"
        ok = len(ext.hwid) == 64 and hmac.compare_digest(ext.hwid, r.chip_id)
    detail = ""
    if not ok:
        detail = "CHIP_ID masked (MASK_CHIP_KEY=1): no chip binding" if r.mask_chip_key else "different chip"
    v.add(name, ok, expected=expected, found=f"hwID {ext.hwid.hex()[:32]}..., CHIP_ID {r.chip_id.hex()[:32]}...",
          detail=detail)


def _check_policy(v: Verdict, r: SnpReport, policy: SnpPolicy, reported: TcbParts | None) -> None:
    p = r.policy
    if policy.allow_debug:
        v.add("debug", True, expected="DEBUG=0 unless allowed", found=f"DEBUG={int(p.debug)}",
              detail="debug allowed by policy (allow_debug = true)" if p.debug else "")
    else:
        v.add("debug", not p.debug, expected="DEBUG=0", found=f"DEBUG={int(p.debug)}",
              detail="the host can read and write guest memory" if p.debug else "")
    if policy.allow_migration_agent:
        v.add("migration agent", True, expected="MIGRATE_MA=0 unless allowed", found=f"MIGRATE_MA={int(p.migrate_ma)}",
              detail="migration agent allowed by policy" if p.migrate_ma else "")
    else:
        v.add("migration agent", not p.migrate_ma, expected="MIGRATE_MA=0", found=f"MIGRATE_MA={int(p.migrate_ma)}")
    v.add("VMPL", r.vmpl in policy.vmpl, expected=f"one of {list(policy.vmpl)}", found=str(r.vmpl))

    name = "minimum TCB"
    unknown = sorted(set(policy.min_tcb) - set(TCB_KEYS))
    expected = ", ".join(f"{k} >= {val}" for k, val in sorted(policy.min_tcb.items())) or "no minimums configured"
    if unknown:
        # A typo must not silently drop a minimum.
        v.add(name, False, expected=expected, detail=f"unknown min_tcb keys {unknown}; known: {list(TCB_KEYS)}")
        return
    if reported is None:
        v.add(name, None, expected=expected, found=f"REPORTED_TCB {r.reported_tcb.hex()}",
              detail="not checked: product (TCB layout) unknown")
        return
    got = reported.as_dict()
    below = []
    notes = []
    for key, minimum in sorted(policy.min_tcb.items()):
        if key not in got:
            notes.append(f"{key}: not part of this product's TCB")
            continue
        if got[key] < minimum:
            below.append(f"{key} {got[key]} < {minimum}")
    v.add(name, not below, expected=expected, found=f"REPORTED_TCB {got}", detail="; ".join(below + notes))


def _check_measurement(v: Verdict, r: SnpReport, policy: SnpPolicy) -> None:
    found = r.measurement.hex()
    if policy.any_measurement:
        v.add("measurement", True, expected="any", found=found, detail=ANY_MEASUREMENT)
        return
    allowed = policy.measurements
    ok = any(hmac.compare_digest(r.measurement, m) for m in allowed)
    detail = "" if ok else ("allow list is empty: nothing is accepted" if not allowed else "not in the allow list")
    v.add("measurement", ok, expected=f"one of {len(allowed)} allowed measurements", found=found, detail=detail)


def _check_report_data(v: Verdict, r: SnpReport, expected_report_data: bytes | None) -> None:
    name = "REPORT_DATA binding"
    if expected_report_data is None:
        v.add(name, True, found=r.report_data.hex(), detail=BINDING_SKIPPED)
        return
    ok = hmac.compare_digest(r.report_data, expected_report_data)
    v.add(name, ok, expected=expected_report_data.hex(), found=r.report_data.hex(),
          detail="" if ok else "the report does not bind this key configuration / nonce")


def _claims(
    r: SnpReport, product: Product | None, leaf_role: str | None, ext: EndorsementExtensions | None,
    reported: TcbParts | None,
) -> dict[str, Any]:
    raw_tcb = {"current": r.current_tcb, "committed": r.committed_tcb, "launch": r.launch_tcb}

    def tcb(which: str) -> dict[str, int] | str:
        # Decoded when the layout is known and well-formed, else the raw hex (never a guess).
        if product is None:
            return raw_tcb[which].hex()
        try:
            return r.tcb(which, product).as_dict()
        except EvidenceFormatError:
            return raw_tcb[which].hex()

    claims: dict[str, Any] = {
        "version": r.version,
        "guest_svn": r.guest_svn,
        "vmpl": r.vmpl,
        "policy": r.policy.as_dict(),
        "platform_info": r.platform_info.as_dict(),
        "reported_tcb": reported.as_dict() if reported is not None else r.reported_tcb.hex(),
        "current_tcb": tcb("current"),
        "committed_tcb": tcb("committed"),
        "launch_tcb": tcb("launch"),
        "current_firmware": str(r.current_version),
        "committed_firmware": str(r.committed_version),
        "product": str(product) if product is not None else None,
        "signing_key": r.signing_key.name,
        "certificate_role": leaf_role,
        "mask_chip_key": r.mask_chip_key,
        "author_key_en": r.author_key_en,
        "chip_id": r.chip_id.hex(),
        "host_data": r.host_data.hex(),
        "family_id": r.family_id.hex(),
        "image_id": r.image_id.hex(),
        "id_key_digest": r.id_key_digest.hex(),
        "author_key_digest": r.author_key_digest.hex(),
        "report_id": r.report_id.hex(),
    }
    if r.version >= 3:
        claims["cpuid"] = {"family": r.cpuid_fam_id, "model": r.cpuid_mod_id, "stepping": r.cpuid_step}
    if r.version >= 5:
        claims["launch_mit_vector"] = r.launch_mit_vector
        claims["current_mit_vector"] = r.current_mit_vector
    if ext is not None:
        claims["cert_product_name"] = ext.product_name
        if ext.csp_id is not None:
            claims["csp_id"] = ext.csp_id
    return claims
