"""Stapled OCSP responses for NVIDIA's device and RIM chains, judged offline at the client's own clock.

The gateway staples DER OCSP responses into the bundle (``certs["nvidia_ocsp"]``: a JSON list of base64 DER); the
client looks up, for each certificate it wants a status for, a response whose CertID names that certificate under its
issuer, checks the response's signature (by the issuer itself, or by a responder certificate the issuer signed for
OCSP signing), and the window ``thisUpdate <= now <= nextUpdate``. No network here.

Statuses: ``good``, ``revoked``, ``unknown`` (the responder does not know the certificate), ``missing`` (no usable
response: none stapled, or none that verifies). Policy (:func:`ocsp_ok`): revoked always fails; unknown and missing
fail only when ``[nvidia] require_ocsp`` is set (nvtrust refuses them by default; NVIDIA's own OCSP has not been
exercised here: no recorded response could be obtained, so the tests sign responses under a test CA).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..errors import EvidenceFormatError
from .attachment import decode_b64_list, encode_b64_list

OCSP_CERT_KEY: Final = "nvidia_ocsp"
MAX_OCSP: Final = 256
MAX_OCSP_SIZE: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class OcspStatus:
    status: str  # good | revoked | unknown | missing
    detail: str


def decode_ocsp_list(text: str) -> list[ocsp.OCSPResponse]:
    """The bundle's stapled responses. Raises EvidenceFormatError on anything but a list of base64 DER responses."""
    out: list[ocsp.OCSPResponse] = []
    for i, der in enumerate(decode_b64_list(OCSP_CERT_KEY, text, MAX_OCSP, MAX_OCSP_SIZE)):
        try:
            out.append(ocsp.load_der_ocsp_response(der))
        except ValueError as exc:
            raise EvidenceFormatError(f"{OCSP_CERT_KEY}[{i}] is not a DER OCSP response: {exc}") from None
    return out


def encode_ocsp_list(responses: Sequence[bytes]) -> str:
    return encode_b64_list(OCSP_CERT_KEY, responses, MAX_OCSP)


def check_ocsp(cert: x509.Certificate, issuer: x509.Certificate, responses: Sequence[ocsp.OCSPResponse],
               now: datetime.datetime) -> OcspStatus:
    """The status of ``cert`` (issued by ``issuer``) from the first stapled response that names it and verifies."""
    problems: list[str] = []
    for resp in responses:
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            continue
        for single in resp.responses:
            if single.serial_number != cert.serial_number or not _names_issuer(single, issuer):
                continue
            why = _response_problem(resp, issuer, now, single)
            if why:
                problems.append(why)
                continue
            status = single.certificate_status
            if status == ocsp.OCSPCertStatus.GOOD:
                return OcspStatus("good", f"good at {now:%Y-%m-%dT%H:%MZ} (thisUpdate {single.this_update_utc:%Y-%m-%d})")
            if status == ocsp.OCSPCertStatus.REVOKED:
                when = single.revocation_time_utc
                return OcspStatus("revoked", f"revoked {when:%Y-%m-%d}" if when else "revoked")
            return OcspStatus("unknown", "the responder does not know this certificate")
    return OcspStatus("missing", "; ".join(problems) or "no stapled response for this certificate")


def _names_issuer(single: ocsp.OCSPSingleResponse, issuer: x509.Certificate) -> bool:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    algo = single.hash_algorithm
    try:
        h = hashes.Hash(algo)
    except (UnsupportedAlgorithm, TypeError):
        return False
    h.update(issuer.subject.public_bytes())
    name_hash = h.finalize()
    # The key hash is over the BIT STRING contents of the SubjectPublicKeyInfo: for EC and RSA keys that is the
    # encoded point / RSAPublicKey, i.e. the DER SPKI minus its algorithm header.
    spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    key_bits = _spki_bits(spki)
    h = hashes.Hash(algo)
    h.update(key_bits)
    return single.issuer_name_hash == name_hash and single.issuer_key_hash == h.finalize()


def _spki_bits(spki: bytes) -> bytes:
    from .abi import _der_expect

    start, end = _der_expect(spki, 0, 0x30, "SPKI", whole=True)
    _, alg_end = _der_expect(spki, start, 0x30, "SPKI algorithm")
    bits_start, bits_end = _der_expect(spki, alg_end, 0x03, "SPKI key")
    return spki[bits_start + 1 : bits_end]  # skip the unused-bits byte


def _response_problem(resp: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime,
                      single: ocsp.OCSPSingleResponse) -> str:
    if not single.this_update_utc <= now:
        return "response not yet valid"
    if single.next_update_utc is None or now > single.next_update_utc:
        return "response outside its validity window (no nextUpdate, or expired)"
    signer = issuer
    if not _signed_by(resp, issuer):
        delegated = [c for c in resp.certificates if _is_delegated(c, issuer, now)]
        if not delegated or not _signed_by(resp, delegated[0]):
            return "response signature does not verify (neither the issuer nor a responder it authorized)"
        signer = delegated[0]
    del signer
    return ""


def _is_delegated(cert: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _signed_by(resp: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    key = cert.public_key()
    algo = resp.signature_hash_algorithm
    if algo is None:
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algo))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(resp.signature, resp.tbs_response_bytes, PKCS1v15(), algo)
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


def ocsp_ok(status: OcspStatus, require_ocsp: bool) -> bool:
    """Revoked never passes; unknown and missing pass only when the policy does not require OCSP."""
    if status.status == "revoked":
        return False
    if status.status == "good":
        return True
    return not require_ocsp
