"""AWS Nitro Enclaves attestation document: COSE_Sign1 bytes to a frozen :class:`NitroDocument`. No crypto, no policy.

Layout (AWS ``aws-nitro-enclaves-nsm-api`` docs/attestation_process.md; RFC 8152 §4.2)::

    COSE_Sign1 = [                          ; CBOR array of 4, untagged or tag 18
        protected:   bstr .cbor {1: -35},   ; alg ES384, exactly a1 01 38 22
        unprotected: {},
        payload:     bstr .cbor AttestationDocument,   ; 1..16384 bytes
        signature:   bstr .size 96,         ; raw r ‖ s, P-384
    ]
    AttestationDocument = {
        module_id: tstr (non-empty), digest: "SHA384", timestamp: uint (ms since the epoch, > 0),
        pcrs: {+ uint (0..31) => bstr .size 48},   ; 1..32 entries; Nitro always reports PCR0..15 (+ PCR16.. if used)
        certificate: bstr (DER, 1..1024), cabundle: [+ bstr (DER, 1..1024)],   ; cabundle[0] claims to be the root
        ? public_key: bstr (1..1024) / null, ? user_data: bstr (0..512) / null, ? nonce: bstr (0..512) / null,
    }

Strictness: the document must re-encode to exactly the bytes received (so no duplicate keys, no indefinite lengths,
no non-minimal integers, no trailing bytes, no unknown tags); any other shape is an :class:`EvidenceFormatError`.
Real NSM output is in that form (checked on every sample in ``shared/data/evidence/aws-nitro``).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import cbor2
from cryptography import x509

from ..errors import EvidenceFormatError

__all__ = [
    "COSE_ALG_ES384",
    "PROTECTED_ES384",
    "NitroDocument",
    "parse_document",
    "sig_structure",
]

#: COSE algorithm id for ECDSA P-384 / SHA-384 (RFC 8152 §8.1).
COSE_ALG_ES384: Final = -35
COSE_HEADER_ALG: Final = 1
COSE_SIGN1_TAG: Final = 18
#: The only protected header Nitro emits: ``{1: -35}``, in its one minimal encoding.
PROTECTED_ES384: Final = bytes.fromhex("a1013822")
SIGNATURE_SIZE: Final = 96
PCR_SIZE: Final = 48
MAX_PCR_INDEX: Final = 31
DIGEST_SHA384: Final = "SHA384"
MAX_PAYLOAD_SIZE: Final = 16384
#: Far above any real document (~4.5 KB); bounds the work done on hostile input.
MAX_DOCUMENT_SIZE: Final = 1 << 16
#: 9999-12-31T23:59:59.999Z, the last instant a datetime can hold; the CDDL allows any uint64.
MAX_TIMESTAMP_MS: Final = 253402300799999
MAX_CERT_SIZE: Final = 1024
MAX_PUBLIC_KEY_SIZE: Final = 1024
MAX_USER_DATA_SIZE: Final = 512
MAX_NONCE_SIZE: Final = 512
#: Real bundles hold 4 (root, regional, zonal, instance); a generous bound on chain work.
MAX_CABUNDLE: Final = 8
#: The PCRs that are all zero when the enclave was started with ``--debug-mode``.
DEBUG_PCRS: Final = (0, 1, 2)

_REQUIRED: Final = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL: Final = ("public_key", "user_data", "nonce")


@dataclass(frozen=True, slots=True, kw_only=True)
class NitroDocument:
    """A structurally valid Nitro attestation document. Nothing here is verified yet."""

    raw: bytes
    tagged: bool
    protected: bytes
    payload: bytes
    signature: bytes
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    @property
    def timestamp(self) -> datetime.datetime:
        """The document's ``timestamp`` as an aware UTC datetime (millisecond precision)."""
        return datetime.datetime.fromtimestamp(self.timestamp_ms / 1000, datetime.UTC)

    @property
    def pcr0(self) -> bytes:
        """PCR0: the hash of the enclave image file (EIF)."""
        return self.pcrs[0]

    @property
    def debug(self) -> bool:
        """PCR0, PCR1 and PCR2 all zero: the enclave runs in debug mode (its console is readable by the parent)."""
        return all(not any(self.pcrs[i]) for i in DEBUG_PCRS)

    @property
    def signed_bytes(self) -> bytes:
        """The COSE Sig_structure the signature covers (RFC 8152 §4.4)."""
        return sig_structure(self.protected, self.payload)

    def certificates(self) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """(leaf, cabundle) parsed as X.509; nothing is trusted yet.

        Raises:
            EvidenceFormatError: a certificate is not parsable DER.
        """
        return _load_cert(self.certificate, "certificate"), tuple(
            _load_cert(der, f"cabundle[{i}]") for i, der in enumerate(self.cabundle)
        )


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """``Sig_structure = ["Signature1", protected, external_aad = b"", payload]``, CBOR-encoded (RFC 8152 §4.4)."""
    return cbor2.dumps(["Signature1", protected, b"", payload])


def parse_document(raw: bytes) -> NitroDocument:
    """Parse a Nitro attestation document (COSE_Sign1) strictly.

    Raises:
        EvidenceFormatError: not CBOR, not in minimal definite-length encoding, not a COSE_Sign1 with the ES384
            protected header, or a payload field missing, unknown, of the wrong type or size.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EvidenceFormatError(f"Nitro attestation document must be bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if not raw or len(raw) > MAX_DOCUMENT_SIZE:
        raise EvidenceFormatError(f"Nitro attestation document is {len(raw)} bytes (expected 1..{MAX_DOCUMENT_SIZE})")
    outer = _decode_exact(raw, "COSE_Sign1")
    tagged = isinstance(outer, cbor2.CBORTag)
    if tagged:
        if outer.tag != COSE_SIGN1_TAG:
            raise EvidenceFormatError(f"COSE_Sign1 has CBOR tag {outer.tag}, expected {COSE_SIGN1_TAG} or none")
        outer = outer.value
        if isinstance(outer, tuple):  # cbor2 decodes tagged arrays as tuples
            outer = list(outer)
    if not isinstance(outer, list) or len(outer) != 4:
        raise EvidenceFormatError("COSE_Sign1 must be an array of 4 items (protected, unprotected, payload, signature)")
    protected, unprotected, payload, signature = outer
    if type(protected) is not bytes or protected != PROTECTED_ES384:
        raise EvidenceFormatError(
            f"COSE protected header must be {{1: -35}} (ES384) encoded as {PROTECTED_ES384.hex()}, "
            f"found {_describe(protected)}"
        )
    if not isinstance(unprotected, Mapping) or unprotected:  # a frozendict inside a tagged (immutable) array
        raise EvidenceFormatError(f"COSE unprotected header must be an empty map, found {_describe(unprotected)}")
    if type(payload) is not bytes or not 1 <= len(payload) <= MAX_PAYLOAD_SIZE:
        raise EvidenceFormatError(f"COSE payload must be a byte string of 1..{MAX_PAYLOAD_SIZE} bytes")
    if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
        raise EvidenceFormatError(
            f"COSE signature must be {SIGNATURE_SIZE} bytes (ES384 r‖s), found {_describe(signature)}"
        )

    doc = _decode_exact(payload, "attestation document payload")
    if not isinstance(doc, dict):
        raise EvidenceFormatError(f"attestation document payload must be a map, found {_describe(doc)}")
    keys = list(doc)
    if any(type(k) is not str for k in keys):
        raise EvidenceFormatError("attestation document keys must all be text strings")
    unknown = sorted(set(keys) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise EvidenceFormatError(f"attestation document has unknown fields {unknown}")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise EvidenceFormatError(f"attestation document lacks {', '.join(missing)}")

    module_id = doc["module_id"]
    if type(module_id) is not str or not module_id:
        raise EvidenceFormatError(f"module_id must be a non-empty text string, found {_describe(module_id)}")
    digest = doc["digest"]
    if digest != DIGEST_SHA384 or type(digest) is not str:
        raise EvidenceFormatError(f"digest must be {DIGEST_SHA384!r}, found {_describe(digest)}")
    timestamp = doc["timestamp"]
    if type(timestamp) is not int or not 0 < timestamp <= MAX_TIMESTAMP_MS:
        raise EvidenceFormatError(
            f"timestamp must be a positive integer of ms up to year 9999, found {_describe(timestamp)}"
        )
    pcrs = _pcrs(doc["pcrs"])
    certificate = _bstr(doc["certificate"], "certificate", 1, MAX_CERT_SIZE)
    cabundle_raw = doc["cabundle"]
    if not isinstance(cabundle_raw, list) or not 1 <= len(cabundle_raw) <= MAX_CABUNDLE:
        raise EvidenceFormatError(f"cabundle must be an array of 1..{MAX_CABUNDLE} certificates")
    cabundle = tuple(_bstr(c, f"cabundle[{i}]", 1, MAX_CERT_SIZE) for i, c in enumerate(cabundle_raw))

    return NitroDocument(
        raw=raw,
        tagged=tagged,
        protected=protected,
        payload=payload,
        signature=signature,
        module_id=module_id,
        digest=digest,
        timestamp_ms=timestamp,
        pcrs=pcrs,
        certificate=certificate,
        cabundle=cabundle,
        public_key=_optional_bstr(doc, "public_key", 1, MAX_PUBLIC_KEY_SIZE),
        user_data=_optional_bstr(doc, "user_data", 0, MAX_USER_DATA_SIZE),
        nonce=_optional_bstr(doc, "nonce", 0, MAX_NONCE_SIZE),
    )


def _decode_exact(data: bytes, what: str) -> Any:
    """Decode one CBOR item that must re-encode to exactly ``data``.

    cbor2 (5.x and 6.x) ignores trailing bytes, keeps the last of duplicate map keys and accepts non-minimal
    lengths; requiring a byte-identical re-encoding rules all of that out, so no two parsers can read the signed
    bytes differently.
    """
    try:
        obj = cbor2.loads(data)
        again = cbor2.dumps(obj)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise EvidenceFormatError(f"{what} is not valid CBOR: {exc}") from None
    if again != data:
        raise EvidenceFormatError(
            f"{what} is not in minimal definite-length CBOR (trailing bytes, duplicate keys, indefinite or "
            "non-minimal lengths)"
        )
    return obj


def _pcrs(value: Any) -> dict[int, bytes]:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_PCR_INDEX + 1:
        raise EvidenceFormatError(f"pcrs must be a map of 1..{MAX_PCR_INDEX + 1} entries, found {_describe(value)}")
    out: dict[int, bytes] = {}
    for index, pcr in value.items():
        if type(index) is not int or not 0 <= index <= MAX_PCR_INDEX:
            raise EvidenceFormatError(f"PCR index must be an integer 0..{MAX_PCR_INDEX}, found {_describe(index)}")
        if type(pcr) is not bytes or len(pcr) != PCR_SIZE:
            raise EvidenceFormatError(f"PCR{index} must be {PCR_SIZE} bytes (SHA-384), found {_describe(pcr)}")
        out[index] = pcr
    absent = [i for i in DEBUG_PCRS if i not in out]
    if absent:
        raise EvidenceFormatError(f"pcrs lacks PCR{', PCR'.join(map(str, absent))} (Nitro always reports 0..15)")
    return dict(sorted(out.items()))


def _bstr(value: Any, what: str, low: int, high: int) -> bytes:
    if type(value) is not bytes or not low <= len(value) <= high:
        raise EvidenceFormatError(f"{what} must be a byte string of {low}..{high} bytes, found {_describe(value)}")
    return value


def _optional_bstr(doc: Mapping[str, Any], key: str, low: int, high: int) -> bytes | None:
    value = doc.get(key)
    return None if value is None else _bstr(value, key, low, high)


def _load_cert(der: bytes, what: str) -> x509.Certificate:
    """Load and fully decode the parts cryptography parses lazily (names, extensions), so a malformed certificate
    is a format error here and never an exception later in the chain checks."""
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        list(cert.extensions)
    except Exception as exc:  # noqa: BLE001 - ValueError, TypeError, InvalidVersion...: all mean malformed DER
        raise EvidenceFormatError(f"{what} is not a parsable DER certificate: {exc}") from None
    return cert


def _describe(value: Any) -> str:
    if isinstance(value, bytes):
        return f"{len(value)}-byte string"
    if isinstance(value, (bool, int)):
        return f"{type(value).__name__} {value}"
    if isinstance(value, str):
        return f"text {value[:40]!r}"
    return type(value).__name__
