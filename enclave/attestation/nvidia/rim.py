"""NVIDIA Reference Integrity Manifests (RIMs): parse, authenticate, select, compare.

A RIM is an ISO/IEC 19770-2 SWID tag (XML) signed with an enveloped XML-DSig signature (C14N 1.1, ECDSA P-384 /
SHA-384) whose ``KeyInfo`` carries the signer chain, leaf first. Its ``Payload`` lists 64 ``Resource`` elements, one per
measurement index; the active ones hold the golden SHA-384 values (``alternatives`` of them). RIM index ``i`` is SPDM
measurement block ``i + 1``. The driver RIM covers the driver's indices and the VBIOS RIM the VBIOS's; NVIDIA's
verifiers take the union of the two and refuse an index claimed by both.

Authentication (:func:`check_rim`), offline and at an explicit time:

1. the document parses with a hardened lxml parser (no DTD, no entities, no network) and has no DOCTYPE;
2. the enveloped signature verifies with ``signxml`` against the ``KeyInfo`` leaf (reference digest and
   ``SignedInfo`` signature, ECDSA-SHA384 and SHA-384 only). signxml's own chain building is not used: it goes through
   ``cryptography``'s path builder, which rejects every NVIDIA RIM chain (the L3/CA certificates encode 2023-2049 as
   GeneralizedTime). signxml is asked to verify at a time inside the leaf's window, so that an expired leaf is
   reported by the separate validity check as *expired*, not as a bad signature;
3. the chain is walked here: every embedded certificate but the last (the embedded root is never trusted) then the
   pinned NVIDIA CoRIM root (:data:`NVIDIA_RIM_ROOT_SHA256`), link by link (signature, names, CA constraints);
4. every certificate of that chain is valid at ``now`` (separate check: *expired* is not *invalid*).

The measurements are read from the element signxml returns as signed, never from the raw document, so content outside
the signed reference cannot be compared.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import EvidenceFormatError
from .attachment import decode_b64_list, encode_b64_list

#: SHA-256 of the DER of "CN=NVIDIA CoRIM signing Root CA, O=NVIDIA, C=US" (P-384, 2023-03-16..2053-03-08): the root
#: of every Hopper, Blackwell and NVSwitch RIM signing chain. A different CA from the device identity root.
NVIDIA_RIM_ROOT_SHA256: Final = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"

#: Where a bundle carries the RIMs: ``certs["nvidia_rims"]`` = :func:`encode_rim_list` of the documents.
RIMS_CERT_KEY: Final = "nvidia_rims"
MAX_RIM_SIZE: Final = 256 * 1024  # genuine RIMs are ~21 KB
MAX_RIMS: Final = 64
MAX_RIM_CERTS: Final = 8
RIM_INDICES: Final = 64
DIGEST_SIZE: Final = 48

SWID_NS: Final = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS: Final = "http://www.w3.org/2001/04/xmlenc#sha384"
DSIG_NS: Final = "http://www.w3.org/2000/09/xmldsig#"


@dataclass(frozen=True, slots=True, kw_only=True)
class GoldenMeasurement:
    """One active ``Resource`` of a RIM: the values a runtime measurement may take at RIM ``index``."""

    index: int
    name: str
    size: int
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RimDocument:
    """What a RIM says. From :func:`parse_rim` it is unauthenticated; from :class:`RimCheck` it is the signed part."""

    tag_id: str
    name: str  # SoftwareIdentity/@name: the chip (GH100, GB100, LS10)
    product: str  # Meta/@product
    version: str  # Meta/@colloquialVersion: driver version, or VBIOS version in upper-case hex
    edition: str  # Meta/@edition: GPU or SWITCH
    measurements: dict[int, GoldenMeasurement]  # active entries only, by RIM index


@dataclass(frozen=True, slots=True, kw_only=True)
class RimCheck:
    """The outcome of :func:`check_rim`. ``document`` is parsed from the signed element when the signature holds,
    otherwise from the raw bytes (for naming it in the verdict only: never compare against an unauthenticated one)."""

    raw: bytes
    sha256: str
    document: RimDocument
    certs: tuple[x509.Certificate, ...]  # as embedded, leaf first
    signature_ok: bool
    signature_detail: str
    chain_ok: bool
    chain_detail: str
    validity_ok: bool
    validity_detail: str

    @property
    def authentic(self) -> bool:
        """Signature, chain to the pinned root, and validity all hold: the measurements may be trusted."""
        return self.signature_ok and self.chain_ok and self.validity_ok

    @property
    def issued(self) -> str:
        """The signer certificate's notBefore: when this revision of the RIM was signed (NVIDIA re-issues RIMs under
        the same id, so a verdict names it)."""
        return f"{self.certs[0].not_valid_before_utc:%Y-%m-%d}" if self.certs else "unknown"


def _etree() -> Any:
    """lxml.etree (untyped: lxml ships no type information, and lxml-stubs is not a dependency)."""
    return importlib.import_module("lxml.etree")


def _parser() -> Any:
    return _etree().XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_comments=False, remove_pis=False)


def _root(data: bytes) -> Any:
    """Parse with entity resolution and DTDs off; a DOCTYPE (the carrier of entity tricks) is refused outright."""
    etree = _etree()

    if not isinstance(data, bytes) or not data:
        raise EvidenceFormatError("RIM must be non-empty bytes")
    if len(data) > MAX_RIM_SIZE:
        raise EvidenceFormatError(f"RIM is {len(data)} bytes (limit {MAX_RIM_SIZE})")
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise EvidenceFormatError(f"RIM is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise EvidenceFormatError("RIM has a DOCTYPE (refused: no DTDs or entities in a RIM)")
    return root


def parse_rim(data: bytes) -> RimDocument:
    """The RIM's identity and active golden measurements, **unauthenticated** (see :func:`check_rim`).

    Raises:
        EvidenceFormatError: not a SWID tag of the expected shape (root, Meta, Payload, 64 indexed Resources at most,
            hashes of 48 bytes, ``alternatives`` that match the hashes present).
    """
    return _document(_root(data))


def _document(root: Any) -> RimDocument:
    if root.tag != f"{{{SWID_NS}}}SoftwareIdentity":
        raise EvidenceFormatError(f"RIM root is {root.tag}, not SoftwareIdentity")
    metas = root.findall(f"{{{SWID_NS}}}Meta")
    payloads = root.findall(f"{{{SWID_NS}}}Payload")
    if len(metas) != 1 or len(payloads) != 1:
        raise EvidenceFormatError(f"RIM needs exactly one Meta and one Payload ({len(metas)}, {len(payloads)})")
    meta = metas[0]
    version = meta.get("colloquialVersion") or ""
    product = meta.get("product") or ""
    if not version or not product:
        raise EvidenceFormatError("RIM Meta lacks colloquialVersion or product")
    measurements: dict[int, GoldenMeasurement] = {}
    seen: set[int] = set()
    resources = payloads[0].findall(f"{{{SWID_NS}}}Resource")
    if len(resources) > RIM_INDICES:
        raise EvidenceFormatError(f"RIM has {len(resources)} Resources (at most {RIM_INDICES})")
    for res in resources:
        if res.get("type") != "Measurement":
            raise EvidenceFormatError(f"RIM Resource of type {res.get('type')!r}")
        try:
            index = int(res.get("index", ""))
            n_alt = int(res.get("alternatives", ""))
            size = int(res.get("size", ""))
        except ValueError:
            raise EvidenceFormatError("RIM Resource index, alternatives or size is not an integer") from None
        if not 0 <= index < RIM_INDICES or index in seen:
            raise EvidenceFormatError(f"RIM Resource index {index} out of range or repeated")
        seen.add(index)
        active = res.get("active")
        if active not in ("True", "False"):
            raise EvidenceFormatError(f"RIM Resource {index}: active={active!r}")
        if not 1 <= n_alt <= 16:
            raise EvidenceFormatError(f"RIM Resource {index}: {n_alt} alternatives")
        hashes: list[bytes] = []
        for k in range(n_alt):
            text = res.get(f"{{{SHA384_NS}}}Hash{k}")
            try:
                value = bytes.fromhex(text or "")
            except ValueError:
                raise EvidenceFormatError(f"RIM Resource {index}: Hash{k} is not hex") from None
            if len(value) != DIGEST_SIZE:
                raise EvidenceFormatError(f"RIM Resource {index}: Hash{k} is {len(value)} bytes, not {DIGEST_SIZE}")
            hashes.append(value)
        if res.get(f"{{{SHA384_NS}}}Hash{n_alt}") is not None:
            raise EvidenceFormatError(f"RIM Resource {index}: more hashes than alternatives={n_alt}")
        if active == "True":
            measurements[index] = GoldenMeasurement(index=index, name=res.get("name") or "", size=size,
                                                    alternatives=tuple(hashes))
    return RimDocument(
        tag_id=root.get("tagId") or "",
        name=root.get("name") or "",
        product=product,
        version=version,
        edition=meta.get("edition") or "",
        measurements=measurements,
    )


def _embedded_certs(root: Any) -> tuple[x509.Certificate, ...]:
    sigs = root.findall(f"{{{DSIG_NS}}}Signature")
    if len(sigs) != 1:
        raise EvidenceFormatError(f"RIM has {len(sigs)} enveloped Signature elements, expected 1")
    texts = sigs[0].findall(f"{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/{{{DSIG_NS}}}X509Certificate")
    if not 2 <= len(texts) <= MAX_RIM_CERTS:
        raise EvidenceFormatError(f"RIM KeyInfo has {len(texts)} certificates, expected 2..{MAX_RIM_CERTS}")
    try:
        return tuple(x509.load_der_x509_certificate(base64.b64decode("".join((t.text or "").split()), validate=True))
                     for t in texts)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceFormatError(f"RIM KeyInfo certificate does not parse: {exc}") from None


def check_rim(data: bytes, now: datetime.datetime, root_pem: bytes | None = None) -> RimCheck:
    """Authenticate one RIM at ``now`` (see the module docstring). ``root_pem`` replaces the pinned root in tests
    only; the pin itself (:data:`NVIDIA_RIM_ROOT_SHA256`) is checked on whatever root is used.

    Raises:
        EvidenceFormatError: the document does not parse as a RIM (shape, certificates).
    """
    from signxml.algorithms import DigestAlgorithm, SignatureMethod
    from signxml.exceptions import InvalidInput, SignXMLException
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    from .verify import check_chain  # the device-chain walker: per-link signature, names, CA constraints, validity

    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    root = _root(data)
    unsigned = _document(root)
    certs = _embedded_certs(root)
    leaf = certs[0]

    signed: RimDocument | None = None
    try:
        # Verify the signature at a time inside the leaf's window: validity is judged separately at ``now``.
        config = SignatureConfiguration(
            signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
            digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
            expect_references=1,
            verification_time=leaf.not_valid_before_utc,
        )
        result = XMLVerifier().verify(data, x509_cert=leaf, expect_config=config)
        if isinstance(result, list):  # only with expect_references > 1
            raise InvalidInput("more than one signed reference")
        signed_root: Any = result.signed_xml
        if signed_root is None or signed_root.tag != root.tag:
            raise InvalidInput("the signed reference is not the whole document")
        signed = _document(signed_root)
    except (SignXMLException, EvidenceFormatError, ValueError) as exc:
        sig_ok, sig_detail = False, f"{type(exc).__name__}: {exc}"
    else:
        sig_ok = True
        sig_detail = f"enveloped XML-DSig (ecdsa-sha384, sha384) by {_cn(leaf)}"

    pinned = _pinned_root(root_pem)
    chain = check_chain((*certs[:-1], pinned), now)
    fingerprint_ok = hmac.compare_digest(chain.root_fingerprint, NVIDIA_RIM_ROOT_SHA256)
    chain_ok = chain.signatures_ok and fingerprint_ok
    chain_detail = chain.signatures_detail
    if not fingerprint_ok:
        chain_detail += f"; root {chain.root_fingerprint} is not the pinned NVIDIA RIM root"
    return RimCheck(
        raw=data,
        sha256=hashlib.sha256(data).hexdigest(),
        document=signed if signed is not None else unsigned,
        certs=certs,
        signature_ok=sig_ok,
        signature_detail=sig_detail,
        chain_ok=chain_ok,
        chain_detail=chain_detail,
        validity_ok=chain.validity_ok,
        validity_detail=("" if chain.validity_ok else "expired or not yet valid: ") + chain.validity_detail,
    )


_ROOT_CACHE: dict[bytes, x509.Certificate] = {}


def _pinned_root(root_pem: bytes | None) -> x509.Certificate:
    pem = root_pem if root_pem is not None else NVIDIA_RIM_ROOT_PEM
    cert = _ROOT_CACHE.get(pem)
    if cert is None:
        cert = _ROOT_CACHE[pem] = x509.load_pem_x509_certificate(pem)
    return cert


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


# --- which RIMs a report needs ------------------------------------------------------------------------------------


def gpu_chip(chip_info: str | None, leaf_cn: str | None) -> str | None:
    """The chip a report comes from: opaque CHIP_INFO (Blackwell) or the first word of the authenticated device leaf's
    CN (``GH100 A01 GSP FMC LF`` -> ``GH100``; an early GB100 report has no CHIP_INFO)."""
    if chip_info:
        return chip_info
    if leaf_cn:
        word = leaf_cn.split()[0]
        if word.startswith(("GH", "GB")):
            return word
    return None


def driver_rim_id(chip: str, driver_version: str) -> str:
    """NVIDIA's RIM service id of a driver RIM: Hopper ``NV_GPU_DRIVER_GH100_<v>``, Blackwell
    ``NV_GPU_CC_DRIVER_<chip>_<v>``."""
    if chip.startswith("GH"):
        return f"NV_GPU_DRIVER_{chip}_{driver_version}"
    return f"NV_GPU_CC_DRIVER_{chip}_{driver_version}"


def vbios_rim_id(project: str | None, project_sku: str | None, chip_sku: str | None, vbios_version: str) -> str:
    """``NV_GPU_VBIOS_<PROJECT>_<PROJECT_SKU>_<CHIP_SKU>_<VBIOS without dots, upper case>``."""
    return (f"NV_GPU_VBIOS_{(project or '?').upper()}_{(project_sku or '?').upper()}_{(chip_sku or '?').upper()}_"
            f"{vbios_version.replace('.', '').upper()}")


def decode_rim_list(text: str) -> list[bytes]:
    """The bundle's ``certs["nvidia_rims"]``: a JSON list of base64 RIM documents.

    Raises:
        EvidenceFormatError: not such a list, or too many / too large entries.
    """
    return decode_b64_list(RIMS_CERT_KEY, text, MAX_RIMS, MAX_RIM_SIZE)


def encode_rim_list(rims: Sequence[bytes]) -> str:
    """The inverse of :func:`decode_rim_list` (order kept)."""
    return encode_b64_list(RIMS_CERT_KEY, rims, MAX_RIMS)


#: The pinned root itself (it does not travel in evidence: the embedded copy in every RIM is ignored).
NVIDIA_RIM_ROOT_PEM: Final = b"""-----BEGIN CERTIFICATE-----
MIICKTCCAbCgAwIBAgIQRdrjoA5QN73fh1N17LXicDAKBggqhkjOPQQDAzBFMQsw
CQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxOVklESUEgQ29S
SU0gc2lnbmluZyBSb290IENBMCAXDTIzMDMxNjE1MzczNFoYDzIwNTMwMzA4MTUz
NzM0WjBFMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGTlZJRElBMSUwIwYDVQQDDBxO
VklESUEgQ29SSU0gc2lnbmluZyBSb290IENBMHYwEAYHKoZIzj0CAQYFK4EEACID
YgAEuECyi9vNM+Iw2lfUzyBldHAwaC1HF7TCgp12QcEyUTm3Tagxwr48d55+K2VI
lWYIDk7NlAIQdcV/Ff7euGLI+Qauj93HsSI4WX298PpW54RTgz9tC+Q684caR/BX
WEeZo2MwYTAdBgNVHQ4EFgQUpaXrOPK4ZDAk08DBskn594zeZjAwHwYDVR0jBBgw
FoAUpaXrOPK4ZDAk08DBskn594zeZjAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8B
Af8EBAMCAQYwCgYIKoZIzj0EAwMDZwAwZAIwHGDyscDP6ihHqRvZlI3eqZ4YkvjE
1duaN84tAHRVgxVMvNrp5Tnom3idHYGW/dskAjATvjIx6VzHm/4e2GiZAyZEIUBD
OKPzp5ei/A0iUZpdvngenDwV8Qa/wGdiTmJ7Bp4=
-----END CERTIFICATE-----
"""
