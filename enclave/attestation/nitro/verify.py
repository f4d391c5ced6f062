"""Verify an AWS Nitro Enclaves attestation document offline against a :class:`NitroPolicy`: pinned AWS root, chain,
COSE signature, debug mode, PCR allow list, key binding, nonce. One :class:`~..result.Check` per step.

Imports nothing from ``enclave`` outside ``enclave.attestation``. Time comes in as ``now`` (or is the document's own
timestamp); nothing here touches the network (AWS publishes no revocation for the Nitro PKI; leaves live 3 hours).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from typing import Final, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtensionOID

from ..result import Verdict
from .abi import SIGNATURE_SIZE, NitroDocument, parse_document
from .policy import BINDING_FIELDS, NitroPolicy

__all__ = ["AWS_NITRO_ROOT_G1_SHA256", "PLATFORM", "verify_nitro"]

PLATFORM: Final = "aws-nitro"
#: SHA-256 of the DER of the AWS Nitro Enclaves Root-G1 (CN=aws.nitro-enclaves, P-384, 2019-10-28..2049-10-28), the
#: value AWS publishes. cabundle[0] travels in the document and is accepted only if it hashes to exactly this; no
#: certificate is shipped here.
AWS_NITRO_ROOT_G1_SHA256: Final = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
BINDING_SKIPPED: Final = "binding skipped (--no-binding)"

_E = TypeVar("_E", bound=x509.ExtensionType)
_HANDLED_CRITICAL: Final = frozenset({ExtensionOID.KEY_USAGE, ExtensionOID.BASIC_CONSTRAINTS})


def verify_nitro(
    document: bytes,
    policy: NitroPolicy,
    *,
    now: datetime.datetime | None,
    expected_user_data: bytes | None,
    expected_nonce: bytes | None = None,
) -> Verdict:
    """Verify a Nitro attestation document (COSE_Sign1 bytes as the NSM returns them) and judge it against ``policy``.

    ``now`` (timezone-aware) is when the certificates must be valid; ``None`` verifies at the document's own
    ``timestamp``, which proves the document was genuine when made, not that it is fresh (the document says so).
    ``expected_user_data`` is the binding value the caller recomputed (compared with ``user_data``, or with
    ``public_key`` when ``policy.binding_field == "public_key"``); ``None`` skips the binding (``--no-binding``) and
    says so. ``expected_nonce``, when given, must equal the document's ``nonce``.

    The verdict passes only if cabundle[0] is the pinned AWS root, the chain root -> cabundle[1..] -> certificate
    verifies (ECDSA P-384/SHA-384, CA constraints) and is valid at ``now``, the document's timestamp lies inside the
    leaf's validity, the COSE signature verifies under the leaf key, the enclave is not in debug mode (unless
    allowed), the PCRs match an allow-list entry and the binding and nonce match. Every step is attempted, so the
    document lists every violation; cryptographic and policy failures are FAIL checks, never exceptions.

    Raises:
        EvidenceFormatError: the document or one of its certificates cannot be parsed.
        ValueError: ``now`` is naive, or ``policy.binding_field`` is unknown (caller bugs).
    """
    if now is not None and (now.tzinfo is None or now.utcoffset() is None):
        raise ValueError("verify_nitro: now must be timezone-aware (certificate validity is in UTC)")
    if policy.binding_field not in BINDING_FIELDS:
        raise ValueError(f"verify_nitro: binding_field must be one of {BINDING_FIELDS}, not {policy.binding_field!r}")
    doc = parse_document(document)
    leaf, cabundle = doc.certificates()
    v = Verdict(platform=PLATFORM)
    v.add(
        "parse",
        True,
        expected="COSE_Sign1, protected {1: -35} (ES384), Nitro attestation document, minimal CBOR",
        found=f"{'tagged' if doc.tagged else 'untagged'}, {len(doc.raw)} bytes, {len(doc.pcrs)} PCRs, "
        f"{len(doc.cabundle)} CA certificates",
    )
    when = now if now is not None else doc.timestamp

    pinned = _check_root(v, doc.cabundle[0], cabundle[0])
    _check_chain(v, pinned, cabundle, leaf)
    _check_validity(v, (*cabundle, leaf), when, now is None)
    _check_timestamp(v, doc, leaf)
    _check_signature(v, doc, leaf)

    _check_debug(v, doc, policy)
    _check_measurement(v, doc, policy)
    bound = doc.public_key if policy.binding_field == "public_key" else doc.user_data
    _check_binding(v, policy.binding_field, bound, expected_user_data)
    _check_nonce(v, doc, expected_nonce)

    v.measurement = doc.pcr0
    v.report_data = bound
    v.claims.update(
        {
            "module_id": doc.module_id,
            "timestamp": doc.timestamp_ms,
            "timestamp_iso": _iso(doc.timestamp),
            "digest": doc.digest,
            "pcrs": {str(i): p.hex() for i, p in doc.pcrs.items()},
            "public_key": _hex(doc.public_key),
            "user_data": _hex(doc.user_data),
            "nonce": _hex(doc.nonce),
            "debug": doc.debug,
            "leaf_subject": _subject(leaf),
            "verified_at": _iso(when),
        }
    )
    return v


# --- verify: root, chain, validity, COSE signature ------------------------------------------------------------------


def _check_root(v: Verdict, root_der: bytes, root: x509.Certificate) -> bool:
    """cabundle[0] must be the pinned AWS root byte for byte; the document's claim that it is a root means nothing."""
    found = hashlib.sha256(root_der).hexdigest()
    ok = hmac.compare_digest(found, AWS_NITRO_ROOT_G1_SHA256)
    v.add(
        "root pinned",
        ok,
        expected=f"cabundle[0] = AWS Nitro Enclaves Root-G1 sha256 {AWS_NITRO_ROOT_G1_SHA256}",
        found=f"sha256 {found} ({_cn(root)})",
        detail="" if ok else "cabundle[0] is not the pinned AWS root: the document is not anchored in AWS's PKI",
    )
    return ok


def _check_chain(
    v: Verdict, pinned: bool, cabundle: tuple[x509.Certificate, ...], leaf: x509.Certificate
) -> None:
    """root -> cabundle[1] -> ... -> cabundle[-1] -> certificate: each issued and ECDSA-P384/SHA-384-signed by the one
    before it, every issuer a CA whose path length admits the CAs below it, the leaf an end entity that may sign."""
    chain = (*cabundle, leaf)
    problems: list[str] = []
    for i, cert in enumerate(chain):
        problems += _unhandled_critical(cert, i)
        if _p384_key(cert) is None:
            problems.append(f"cert {i} ({_cn(cert)}) key is not ECDSA P-384")
        if i == 0:
            continue  # the root is trusted by its pinned fingerprint, not by its self-signature
        issuer = chain[i - 1]
        if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            problems.append(f"cert {i} ({_cn(cert)}) is signed with {cert.signature_algorithm_oid.dotted_string}")
            continue
        try:
            # Also checks that the issuer name equals the subject name of the certificate before it.
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError) as exc:
            problems.append(f"cert {i} ({_cn(cert)}) not issued by {_cn(issuer)}: {type(exc).__name__} {exc}".rstrip())
    for i, cert in enumerate(cabundle):
        problems += _ca_problems(cert, i, cas_below=len(cabundle) - 1 - i)
    problems += _leaf_problems(leaf, len(chain) - 1)
    names = " -> ".join(_cn(c) for c in chain)
    if not pinned:
        problems.insert(0, "not anchored: cabundle[0] is not the pinned AWS root")
    v.add(
        "certificate chain",
        not problems,
        expected="pinned root -> cabundle[1..] -> certificate, ECDSA P-384/SHA-384, CA constraints",
        found=f"{len(chain)} certificates: {names}",
        detail="; ".join(problems),
    )


def _ca_problems(cert: x509.Certificate, i: int, *, cas_below: int) -> list[str]:
    problems: list[str] = []
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        problems.append(f"cert {i} ({_cn(cert)}) is not a CA")
    elif bc.path_length is not None and bc.path_length < cas_below:
        problems.append(f"cert {i} ({_cn(cert)}) path length {bc.path_length} < {cas_below} CAs below it")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None or not ku.key_cert_sign:
        problems.append(f"cert {i} ({_cn(cert)}) key usage lacks keyCertSign")
    return problems


def _leaf_problems(leaf: x509.Certificate, i: int) -> list[str]:
    problems: list[str] = []
    try:
        bc: x509.BasicConstraints | None = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    except ValueError as exc:
        return [f"cert {i} ({_cn(leaf)}) extensions do not parse: {exc}"]
    if bc is not None and bc.ca:
        problems.append(f"cert {i} ({_cn(leaf)}) signs the document but is a CA")
    ku = _ext(leaf, x509.KeyUsage)
    if ku is None or not ku.digital_signature:
        problems.append(f"cert {i} ({_cn(leaf)}) key usage lacks digitalSignature")
    return problems


def _check_validity(
    v: Verdict, chain: tuple[x509.Certificate, ...], when: datetime.datetime, at_document_time: bool
) -> None:
    """Every certificate, the root included, valid at ``when``."""
    expired = [
        f"cert {i} ({_cn(c)}) valid {_iso(c.not_valid_before_utc)}..{_iso(c.not_valid_after_utc)}"
        for i, c in enumerate(chain)
        if not c.not_valid_before_utc <= when <= c.not_valid_after_utc
    ]
    leaf = chain[-1]
    v.add(
        "certificate validity",
        not expired,
        expected=f"all {len(chain)} certificates valid at {_iso(when)}"
        + (" (the document's own timestamp)" if at_document_time else ""),
        found=f"leaf valid {_iso(leaf.not_valid_before_utc)}..{_iso(leaf.not_valid_after_utc)}",
        detail="; ".join(expired) if expired else (
            "verified at the document's timestamp: genuine when made, freshness not established"
            if at_document_time else ""),
    )


def _check_timestamp(v: Verdict, doc: NitroDocument, leaf: x509.Certificate) -> None:
    """The NSM signs with a leaf issued for this document; a timestamp outside the leaf's life is inconsistent."""
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    v.add(
        "document timestamp",
        start <= doc.timestamp <= end,
        expected=f"inside the leaf's validity {_iso(start)}..{_iso(end)}",
        found=_iso(doc.timestamp),
    )


def _check_signature(v: Verdict, doc: NitroDocument, leaf: x509.Certificate) -> None:
    """ECDSA P-384 / SHA-384 over Sig_structure = ["Signature1", protected, b"", payload]; r and s big-endian."""
    expected = f"ES384 over the COSE Sig_structure ({len(doc.signed_bytes)} bytes) under the certificate's key"
    key = _p384_key(leaf)
    if key is None:
        v.add("COSE signature", False, expected=expected, found="certificate key is not ECDSA P-384")
        return
    half = SIGNATURE_SIZE // 2
    r = int.from_bytes(doc.signature[:half], "big")
    s = int.from_bytes(doc.signature[half:], "big")
    try:
        key.verify(encode_dss_signature(r, s), doc.signed_bytes, ec.ECDSA(hashes.SHA384()))
        ok = True
    except (InvalidSignature, ValueError):
        ok = False
    v.add("COSE signature", ok, expected=expected, found="valid" if ok else "invalid")


# --- validate: debug, measurement, binding, nonce -------------------------------------------------------------------


def _check_debug(v: Verdict, doc: NitroDocument, policy: NitroPolicy) -> None:
    found = "PCR0, PCR1, PCR2 all zero (debug mode)" if doc.debug else "PCR0/1/2 set (production enclave)"
    if doc.debug and policy.allow_debug:
        v.add("debug mode", True, expected="not debug (debug allowed by policy)", found=found,
              detail="debug enclave accepted by policy: its console is readable and its PCRs prove nothing")
    else:
        v.add("debug mode", not doc.debug, expected="not debug (PCR0, PCR1, PCR2 not all zero)", found=found)


def _check_measurement(v: Verdict, doc: NitroDocument, policy: NitroPolicy) -> None:
    """The PCRs must equal one allow-list entry; only the PCRs an entry lists are compared, and PCR0 is mandatory."""
    found = f"pcr0 {doc.pcr0.hex()}"
    if policy.any_measurement:
        v.add("measurement", True, expected="any (--any-measurement)", found=found,
              detail="any measurement was accepted (--any-measurement): the workload is NOT pinned")
        return
    expected = (f"one of {len(policy.pcrs)} PCR allow-list entries" if policy.pcrs
                else "a PCR allow-list entry (the list is empty: nothing is accepted)")
    notes: list[str] = []
    for i, entry in enumerate(policy.pcrs):
        if 0 not in entry:
            notes.append(f"entry {i}: no PCR0 (never matches)")
            continue
        diffs = []
        for index, want in sorted(entry.items()):
            have = doc.pcrs.get(index)
            if not isinstance(want, bytes) or have is None or not hmac.compare_digest(want, have):
                diffs.append(f"PCR{index}" + (" absent" if have is None else ""))
        if not diffs:
            v.add("measurement", True, expected=expected, found=found,
                  detail=f"matches entry {i} ({', '.join(f'PCR{k}' for k in sorted(entry))})")
            return
        notes.append(f"entry {i}: {', '.join(diffs)} differ")
    v.add("measurement", False, expected=expected, found=found, detail="; ".join(notes))


def _check_binding(v: Verdict, field: str, bound: bytes | None, expected: bytes | None) -> None:
    found = f"{field} " + ("null" if bound is None else bound.hex() or "(empty)")
    if expected is None:
        v.add("key binding", True, found=found, detail=BINDING_SKIPPED)
        return
    ok = bound is not None and hmac.compare_digest(expected, bound)
    v.add("key binding", ok, expected=f"{field} = {expected.hex()}", found=found,
          detail="" if ok or bound is None or len(bound) == len(expected)
          else f"{field} is {len(bound)} bytes, the expected value {len(expected)}")


def _check_nonce(v: Verdict, doc: NitroDocument, expected: bytes | None) -> None:
    found = "null" if doc.nonce is None else doc.nonce.hex()
    if expected is None:
        v.add("nonce", True, found=found, detail="no nonce requested")
        return
    ok = doc.nonce is not None and hmac.compare_digest(expected, doc.nonce)
    v.add("nonce", ok, expected=expected.hex(), found=found)


# --- helpers --------------------------------------------------------------------------------------------------------


def _ext(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    """The extension's value; ``None`` when absent or when the extensions do not parse (callers treat both as
    failing)."""
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _p384_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    """The certificate's key if it is ECDSA P-384; ``None`` for any other or unparsable key."""
    try:
        key = cert.public_key()
    except (UnsupportedAlgorithm, ValueError):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1) else None


def _unhandled_critical(cert: x509.Certificate, i: int) -> list[str]:
    """RFC 5280 §4.2: a certificate with a critical extension the verifier does not process must be rejected."""
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
    try:
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except (ValueError, TypeError):
        return "?"
    return str(names[0].value) if names else _subject(cert)


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()
    except (ValueError, TypeError):
        return "?"


def _hex(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _iso(t: datetime.datetime) -> str:
    return t.astimezone(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
