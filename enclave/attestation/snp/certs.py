"""AMD SEV-SNP certificates: VCEK/VLEK extensions, the ARK -> ASK/ASVK -> VCEK/VLEK chain, pinned ARKs (go-sev-guest
``kds`` + ``verify/trust``). Offline, ``cryptography`` only.

The ARK travels inside the evidence bundle; it is trusted only if SHA-256 of its DER equals a constant below.
Those constants were computed from the AMD ARK certificates that google/go-sev-guest ships in ``verify/trust/``
(``ask_ark_{milan,genoa,turin_vcek}.pem``) and agree with the trustee and virtee copies; no PEM is stored here.

Extensions under 1.3.6.1.4.1.3704.1 (AMD KDS spec)::

    .1 structVersion INTEGER   .2 productName IA5String ("Milan-B0", "Genoa", "Turin", ...)
    .3.1 blSPL .3.2 teeSPL .3.3 snpSPL .3.4-.3.7 spl4-7 .3.8 ucodeSPL .3.9 fmcSPL (Turin)   all INTEGER 0..255
    .4 hwID (VCEK only): raw bytes, or a DER OCTET STRING of them; 64 bytes, 8 on Turin
    .5 cspID IA5String (VLEK only), e.g. "CN=cc-us-east-2.amazonaws.com"
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from ..errors import EvidenceFormatError
from .abi import Product, SigningKey

#: SHA-256 of the DER of each AMD Root Key (self-signed, RSA-4096, RSASSA-PSS).
ARK_SHA256_MILAN: Final = "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"
ARK_SHA256_GENOA: Final = "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"
ARK_SHA256_TURIN: Final = "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"
PINNED_ARK_SHA256: Final[Mapping[str, Product]] = {
    ARK_SHA256_MILAN: Product.MILAN,
    ARK_SHA256_GENOA: Product.GENOA,
    ARK_SHA256_TURIN: Product.TURIN,
}

#: The certificate roles an evidence bundle's ``certs`` may carry.
LEAF_ROLES: Final = {"vcek": SigningKey.VCEK, "vlek": SigningKey.VLEK}
CERT_ROLES: Final = frozenset({"vcek", "vlek", "ask", "asvk", "ark"})

_AMD: Final = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION: Final = x509.ObjectIdentifier(f"{_AMD}.1")
OID_PRODUCT_NAME: Final = x509.ObjectIdentifier(f"{_AMD}.2")
OID_BL_SPL: Final = x509.ObjectIdentifier(f"{_AMD}.3.1")
OID_TEE_SPL: Final = x509.ObjectIdentifier(f"{_AMD}.3.2")
OID_SNP_SPL: Final = x509.ObjectIdentifier(f"{_AMD}.3.3")
OID_SPL4: Final = x509.ObjectIdentifier(f"{_AMD}.3.4")
OID_SPL5: Final = x509.ObjectIdentifier(f"{_AMD}.3.5")
OID_SPL6: Final = x509.ObjectIdentifier(f"{_AMD}.3.6")
OID_SPL7: Final = x509.ObjectIdentifier(f"{_AMD}.3.7")
OID_UCODE_SPL: Final = x509.ObjectIdentifier(f"{_AMD}.3.8")
OID_FMC_SPL: Final = x509.ObjectIdentifier(f"{_AMD}.3.9")
OID_HWID: Final = x509.ObjectIdentifier(f"{_AMD}.4")
OID_CSP_ID: Final = x509.ObjectIdentifier(f"{_AMD}.5")

#: AMD signs every certificate in the chain with these parameters; we impose them rather than read them from the
#: certificate, so a certificate cannot choose weaker ones.
PSS_PADDING: Final = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_TAG_INTEGER: Final = 0x02
_TAG_OCTET_STRING: Final = 0x04
_TAG_IA5STRING: Final = 0x16


@dataclass(frozen=True, slots=True, kw_only=True)
class EndorsementExtensions:
    """The AMD extensions of a VCEK or VLEK certificate."""

    struct_version: int | None
    product_name: str
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None
    hwid: bytes | None
    csp_id: str | None

    @property
    def product(self) -> Product | None:
        """The product line ("Milan-B0" -> Milan); None if AMD names one we do not know."""
        try:
            return Product(self.product_name.split("-", 1)[0])
        except ValueError:
            return None

    def spl_dict(self) -> dict[str, int]:
        d = {"bootloader": self.bl_spl, "tee": self.tee_spl, "snp": self.snp_spl, "microcode": self.ucode_spl}
        if self.fmc_spl is not None:
            d["fmc"] = self.fmc_spl
        return d


# --- loading -------------------------------------------------------------------------------------------------------


def load_pem_certs(role: str, pem: str) -> list[x509.Certificate]:
    """Every certificate in one PEM string (a KDS ``cert_chain`` holds two or three).

    Raises:
        EvidenceFormatError: not PEM, or no certificate in it.
    """
    if not isinstance(pem, str):
        raise EvidenceFormatError(f"certificate {role!r} must be a PEM string, not {type(pem).__name__}")
    try:
        # AMD KDS issues VCEK/VLEK certificates with serial number 0; cryptography 50 loads them with a deprecation
        # warning and a later release may refuse them (the ValueError path below then says so).
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise EvidenceFormatError(f"certificate {role!r} is not a parsable PEM certificate: {exc}") from None
    return certs


def load_role_certs(certs: Mapping[str, str]) -> dict[str, list[x509.Certificate]]:
    """Parse the bundle's ``certs`` field: role -> certificates.

    Raises:
        EvidenceFormatError: an unknown role or an unparsable PEM.
    """
    if not isinstance(certs, Mapping):
        raise EvidenceFormatError(f"certs must be a mapping of role to PEM, not {type(certs).__name__}")
    unknown = set(certs) - CERT_ROLES
    if unknown:
        raise EvidenceFormatError(f"unknown certificate roles {sorted(unknown)}; expected some of {sorted(CERT_ROLES)}")
    return {role: load_pem_certs(role, pem) for role, pem in certs.items()}


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def common_name(cert_or_name: x509.Certificate | x509.Name) -> str:
    name = cert_or_name.subject if isinstance(cert_or_name, x509.Certificate) else cert_or_name
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def pinned_product(cert: x509.Certificate) -> Product | None:
    """The product whose pinned ARK this certificate is, byte for byte; None if it is not a pinned ARK."""
    return PINNED_ARK_SHA256.get(fingerprint(cert))


# --- strict DER for extension values ------------------------------------------------------------------------------


def _der_single(value: bytes, tag: int, what: str) -> bytes:
    """The content of the one TLV that makes up ``value`` (definite, minimal length; nothing after it)."""
    if len(value) < 2 or value[0] != tag:
        raise EvidenceFormatError(f"{what}: expected DER tag 0x{tag:02x}, found {value[:2].hex() or 'nothing'}")
    first = value[1]
    if first < 0x80:
        length, header = first, 2
    elif first in (0x81, 0x82):
        n = first - 0x80
        if len(value) < 2 + n:
            raise EvidenceFormatError(f"{what}: truncated DER length")
        length, header = int.from_bytes(value[2 : 2 + n], "big"), 2 + n
        if length < 0x80 or (n == 2 and length < 0x100):
            raise EvidenceFormatError(f"{what}: non-minimal DER length encoding")
    else:
        raise EvidenceFormatError(f"{what}: unsupported DER length form 0x{first:02x}")
    if len(value) != header + length:
        raise EvidenceFormatError(f"{what}: DER length {length} but {len(value) - header} content bytes")
    return value[header:]


def _der_u8(value: bytes, what: str) -> int:
    content = _der_single(value, _TAG_INTEGER, what)
    if not content:
        raise EvidenceFormatError(f"{what}: empty INTEGER")
    if len(content) > 1 and (content[0] == 0 and content[1] < 0x80 or content[0] == 0xFF and content[1] >= 0x80):
        raise EvidenceFormatError(f"{what}: non-minimal INTEGER encoding {content.hex()}")
    number = int.from_bytes(content, "big", signed=True)
    if not 0 <= number <= 255:
        raise EvidenceFormatError(f"{what}: {number} is outside 0..255")
    return number


def _der_ia5(value: bytes, what: str) -> str:
    content = _der_single(value, _TAG_IA5STRING, what)
    if any(b > 0x7F for b in content):
        raise EvidenceFormatError(f"{what}: IA5String holds non-ASCII bytes")
    return content.decode("ascii")


def _hwid(value: bytes) -> bytes:
    """hwID is raw bytes (64, or 8 on Turin) in older KDS certificates and a DER OCTET STRING in newer ones.

    The two are told apart by length alone (a raw value is 8 or 64 bytes, a wrapped one 10 or 66), so no raw value
    can be mistaken for a wrapped one.
    """
    if len(value) in (8, 64):
        return value
    if len(value) in (10, 66):
        content = _der_single(value, _TAG_OCTET_STRING, "hwID")
        if len(content) in (8, 64):
            return content
    raise EvidenceFormatError(
        f"hwID extension is {len(value)} bytes: neither 8/64 raw bytes nor an OCTET STRING of them"
    )


def parse_extensions(cert: x509.Certificate) -> EndorsementExtensions:
    """The AMD extensions of a VCEK/VLEK.

    Raises:
        EvidenceFormatError: a required extension is missing or an extension is malformed.
    """
    raw: dict[str, bytes] = {}
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if oid.startswith(_AMD + "."):
            if not isinstance(ext.value, x509.UnrecognizedExtension):
                raise EvidenceFormatError(f"AMD extension {oid} decoded unexpectedly as {type(ext.value).__name__}")
            raw[oid] = ext.value.value

    def need(oid: x509.ObjectIdentifier, what: str) -> bytes:
        try:
            return raw[oid.dotted_string]
        except KeyError:
            raise EvidenceFormatError(
                f"{common_name(cert)} certificate lacks the {what} extension ({oid.dotted_string})"
            ) from None

    def opt_u8(oid: x509.ObjectIdentifier, what: str) -> int | None:
        v = raw.get(oid.dotted_string)
        return None if v is None else _der_u8(v, what)

    hwid_raw = raw.get(OID_HWID.dotted_string)
    csp_raw = raw.get(OID_CSP_ID.dotted_string)
    return EndorsementExtensions(
        struct_version=opt_u8(OID_STRUCT_VERSION, "structVersion"),
        product_name=_der_ia5(need(OID_PRODUCT_NAME, "productName"), "productName"),
        bl_spl=_der_u8(need(OID_BL_SPL, "blSPL"), "blSPL"),
        tee_spl=_der_u8(need(OID_TEE_SPL, "teeSPL"), "teeSPL"),
        snp_spl=_der_u8(need(OID_SNP_SPL, "snpSPL"), "snpSPL"),
        ucode_spl=_der_u8(need(OID_UCODE_SPL, "ucodeSPL"), "ucodeSPL"),
        fmc_spl=opt_u8(OID_FMC_SPL, "fmcSPL"),
        hwid=None if hwid_raw is None else _hwid(hwid_raw),
        csp_id=None if csp_raw is None else _der_ia5(csp_raw, "cspID"),
    )


def endorsement_key_type(cert: x509.Certificate, ext: EndorsementExtensions) -> SigningKey | None:
    """VCEK or VLEK as the certificate itself says (subject CN and the hwID/cspID extension must agree)."""
    cn = common_name(cert)
    if cn == "SEV-VCEK" and ext.hwid is not None and ext.csp_id is None:
        return SigningKey.VCEK
    if cn == "SEV-VLEK" and ext.csp_id is not None and ext.hwid is None:
        return SigningKey.VLEK
    return None


# --- chain ---------------------------------------------------------------------------------------------------------


def unique_pool(groups: Iterable[list[x509.Certificate]]) -> list[x509.Certificate]:
    """All certificates, duplicates (same DER) removed, order kept."""
    seen: set[str] = set()
    pool: list[x509.Certificate] = []
    for group in groups:
        for c in group:
            fp = fingerprint(c)
            if fp not in seen:
                seen.add(fp)
                pool.append(c)
    return pool


def signed_by(child: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None if ``issuer``'s RSA-4096 key made ``child``'s RSASSA-PSS SHA-384 (MGF1-SHA-384, salt 48) signature, else
    why not."""
    if child.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return f"{common_name(child)} is signed with {child.signature_algorithm_oid.dotted_string}, not RSASSA-PSS"
    try:
        declared = child.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        return f"{common_name(child)}: unsupported signature hash ({exc})"
    if not isinstance(declared, hashes.SHA384):
        return f"{common_name(child)} declares hash {getattr(declared, 'name', None)}, not SHA-384"
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return f"{common_name(issuer)} key is {type(key).__name__}, not RSA"
    if key.key_size != 4096:
        return f"{common_name(issuer)} key is RSA-{key.key_size}, not RSA-4096"
    try:
        key.verify(child.signature, child.tbs_certificate_bytes, PSS_PADDING, hashes.SHA384())
    except InvalidSignature:
        return f"{common_name(child)} signature does not verify under {common_name(issuer)}"
    return None


def build_chain(leaf: x509.Certificate, pool: list[x509.Certificate]) -> tuple[list[x509.Certificate], str | None]:
    """Walk leaf -> issuer -> ... by subject/issuer *name* (never by position in the bundle) to a self-issued root.

    Where several certificates carry the wanted subject (a forged ARK-Milan beside the real one), a pinned ARK wins,
    then one whose key verifies the child; so an extra certificate cannot displace the genuine one.
    Returns the chain (leaf first) and None, or the partial chain and why it stopped.
    """
    chain = [leaf]
    current = leaf
    while current.subject != current.issuer:
        if len(chain) >= 3:
            return chain, "chain is longer than ARK -> ASK/ASVK -> leaf"
        candidates = [c for c in pool if c.subject == current.issuer and fingerprint(c) != fingerprint(current)]
        if not candidates:
            return chain, f"no certificate named {current.issuer.rfc4514_string()!r} (issuer of {common_name(current)})"
        candidates.sort(key=lambda c: (pinned_product(c) is None, signed_by(current, c) is not None))
        current = candidates[0]
        chain.append(current)
    if len(chain) != 3:
        return chain, f"chain has {len(chain)} certificates; AMD chains are ARK -> ASK/ASVK -> VCEK/VLEK"
    return chain, None


def self_issued(pool: list[x509.Certificate]) -> list[x509.Certificate]:
    return [c for c in pool if c.subject == c.issuer]


def ca_problem(cert: x509.Certificate) -> str | None:
    """None if ``cert`` is marked as a CA (basicConstraints cA=TRUE), else why not."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return f"{common_name(cert)} has no basicConstraints"
    return None if bc.ca else f"{common_name(cert)} is not a CA (basicConstraints cA=FALSE)"


def validity_problem(cert: x509.Certificate, now: datetime.datetime) -> str | None:
    """None if ``now`` lies in [notBefore, notAfter], else which bound it misses."""
    if now < cert.not_valid_before_utc:
        return f"{common_name(cert)} not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"{common_name(cert)} expired {cert.not_valid_after_utc.isoformat()}"
    return None


def p384_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    """The leaf's EC P-384 key, or None if it has another key type."""
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1):
        return key
    return None
