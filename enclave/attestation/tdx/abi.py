"""Intel TDX DCAP quote v4/v5: bytes to a frozen :class:`TdxQuote`. No crypto, no policy, no library parser.

Layout (little-endian; Intel TDX DCAP Quoting Library API, "Quote Format")::

    header (48)      version u16 (4|5) · att_key_type u16 (2 = ECDSA-256-with-P-256) · tee_type u32 (0x81 TDX)
                     · qe_svn u16 · pce_svn u16 · qe_vendor_id[16] · user_data[20]
    v4 body          TD report 1.0 (584) at 48
    v5 body          body_type u16 (2 = TD report 1.0, 3 = TD report 1.5) · body_size u32 · body at 54
    TD report 1.0    TEE_TCB_SVN[16] MRSEAM[48] MRSIGNERSEAM[48] SEAMATTRIBUTES[8] TDATTRIBUTES[8] XFAM[8] MRTD[48]
                     MRCONFIGID[48] MROWNER[48] MROWNERCONFIG[48] RTMR0..3[4x48] REPORTDATA[64]
    TD report 1.5    TD report 1.0 · TEE_TCB_SVN2[16] · MRSERVICETD[48]
    signature data   sig_data_len u32 · quote signature[64] (r‖s over header‖body) · attestation key[64]
                     · cert data: type u16 (6 = QE report cert data) · size u32 · { QE report[384] · QE report sig[64]
                       · qe_auth_len u16 · qe_auth[qe_auth_len] · nested cert data: type u16 (5 = PCK chain PEM)
                       · size u32 · data }
    padding          zero bytes only (5006-byte buffers from the QGS); never covered by any signature or hash

The field extraction is ours, at fixed offsets, so the policy layer never trusts a library's parse; the verifier
cross-checks it against dcap-qvl's parser, which reads the same bytes the signature check covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._bytes import ByteReader
from ..errors import EvidenceFormatError

__all__ = ["INTEL_QE_VENDOR_ID", "TEE_TYPE_TDX", "TdxQuote", "parse_quote"]

HEADER_SIZE: Final = 48
TEE_TYPE_TDX: Final = 0x81
TEE_TYPE_SGX: Final = 0x00
ATT_KEY_ECDSA_P256: Final = 2
SUPPORTED_VERSIONS: Final = (4, 5)
BODY_TYPE_TD_REPORT10: Final = 2
BODY_TYPE_TD_REPORT15: Final = 3
TD_REPORT10_SIZE: Final = 584
TD_REPORT15_SIZE: Final = 648
QE_REPORT_SIZE: Final = 384
ECDSA_SIG_SIZE: Final = 64
ECDSA_KEY_SIZE: Final = 64
CERT_DATA_PCK_CHAIN: Final = 5
CERT_DATA_QE_REPORT: Final = 6
#: Far above any real quote (~5 KB); bounds the work done on hostile input.
MAX_QUOTE_SIZE: Final = 1 << 16
INTEL_QE_VENDOR_ID: Final = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
#: TDATTRIBUTES bit 0: the TD runs in debug mode (the host can read and write its memory).
TD_ATTRIBUTES_DEBUG: Final = 1 << 0

_BODY_SIZES: Final = {BODY_TYPE_TD_REPORT10: TD_REPORT10_SIZE, BODY_TYPE_TD_REPORT15: TD_REPORT15_SIZE}


@dataclass(frozen=True, slots=True, kw_only=True)
class TdxQuote:
    """A structurally valid TDX quote. Bytes fields are slices of ``raw``; nothing here is verified yet."""

    raw: bytes
    # header
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    #: 2 (TD report 1.0) or 3 (TD report 1.5); v4 quotes always carry a 1.0 report (2).
    body_type: int
    # TD report body
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    # TD report 1.5 only (None for 1.0 bodies)
    tee_tcb_svn2: bytes | None
    mr_service_td: bytes | None
    # signature data
    #: Length of header ‖ (v5 body descriptor ‖) body, the bytes the attestation key signed.
    signed_size: int
    #: Bytes up to the end of the signature data; ``raw`` beyond it is zero padding.
    structure_size: int
    signature: bytes
    attestation_key: bytes
    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    cert_data_type: int
    cert_data: bytes

    @property
    def signed_bytes(self) -> bytes:
        """Header ‖ (v5 body descriptor ‖) body: what the attestation key signed."""
        return self.raw[: self.signed_size]

    @property
    def td_report_version(self) -> str:
        return "1.5" if self.body_type == BODY_TYPE_TD_REPORT15 else "1.0"

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def td_attributes_value(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES.DEBUG (bit 0)."""
        return bool(self.td_attributes_value & TD_ATTRIBUTES_DEBUG)

    @property
    def pck_chain_pem(self) -> bytes | None:
        """The PCK certificate chain (PEM, leaf first) when the quote embeds one (nested cert data type 5)."""
        return self.cert_data if self.cert_data_type == CERT_DATA_PCK_CHAIN else None



def parse_quote(raw: bytes) -> TdxQuote:
    """Parse a TDX quote strictly.

    Raises:
        EvidenceFormatError: not a TDX quote (TEE type), unsupported version / key type / body type, wrong sizes,
            truncation, unknown certification data, or non-zero trailing bytes.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise EvidenceFormatError(f"TDX quote must be bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) > MAX_QUOTE_SIZE:
        raise EvidenceFormatError(f"TDX quote too large: {len(raw)} bytes (limit {MAX_QUOTE_SIZE})")
    r = ByteReader(raw, "TDX quote")
    version = r.u16("header.version")
    att_key_type = r.u16("header.att_key_type")
    tee_type = r.u32("header.tee_type")
    # TEE type first: an SGX quote (any version) must be refused as "not TDX", not as "bad version".
    if tee_type != TEE_TYPE_TDX:
        kind = " (SGX)" if tee_type == TEE_TYPE_SGX else ""
        raise EvidenceFormatError(f"not a TDX quote: TEE type 0x{tee_type:02x}{kind}, expected 0x{TEE_TYPE_TDX:02x}")
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceFormatError(f"unsupported TDX quote version {version} (supported: 4, 5)")
    if att_key_type != ATT_KEY_ECDSA_P256:
        raise EvidenceFormatError(f"unsupported attestation key type {att_key_type} (supported: 2 = ECDSA P-256)")
    qe_svn = r.u16("header.qe_svn")
    pce_svn = r.u16("header.pce_svn")
    qe_vendor_id = r.take(16, "header.qe_vendor_id")
    user_data = r.take(20, "header.user_data")

    if version == 4:
        body_type = BODY_TYPE_TD_REPORT10
    else:
        body_type = r.u16("v5 body_type")
        if body_type not in _BODY_SIZES:
            raise EvidenceFormatError(
                f"unsupported TDX quote v5 body type {body_type} (supported: 2 = TD report 1.0, 3 = TD report 1.5)"
            )
        body_size = r.u32("v5 body_size")
        if body_size != _BODY_SIZES[body_type]:
            raise EvidenceFormatError(
                f"TDX quote v5 body size {body_size} does not match body type {body_type} ({_BODY_SIZES[body_type]})"
            )

    tee_tcb_svn = r.take(16, "TEE_TCB_SVN")
    mr_seam = r.take(48, "MRSEAM")
    mr_signer_seam = r.take(48, "MRSIGNERSEAM")
    seam_attributes = r.take(8, "SEAMATTRIBUTES")
    td_attributes = r.take(8, "TDATTRIBUTES")
    xfam = r.take(8, "XFAM")
    mr_td = r.take(48, "MRTD")
    mr_config_id = r.take(48, "MRCONFIGID")
    mr_owner = r.take(48, "MROWNER")
    mr_owner_config = r.take(48, "MROWNERCONFIG")
    rtmr0 = r.take(48, "RTMR0")
    rtmr1 = r.take(48, "RTMR1")
    rtmr2 = r.take(48, "RTMR2")
    rtmr3 = r.take(48, "RTMR3")
    report_data = r.take(64, "REPORTDATA")
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None
    if body_type == BODY_TYPE_TD_REPORT15:
        tee_tcb_svn2 = r.take(16, "TEE_TCB_SVN2")
        mr_service_td = r.take(48, "MRSERVICETD")
    signed_size = r.pos

    sig_data_len = r.u32("signature_data_len")
    sig_data = r.take(sig_data_len, "signature data")
    structure_size = r.pos
    if any(raw[structure_size:]):
        raise EvidenceFormatError(f"TDX quote has {len(raw) - structure_size} trailing bytes that are not zero padding")

    s = ByteReader(sig_data, "TDX quote")
    signature = s.take(ECDSA_SIG_SIZE, "quote signature")
    attestation_key = s.take(ECDSA_KEY_SIZE, "attestation key")
    outer_type = s.u16("certification data type")
    outer_size = s.u32("certification data size")
    if outer_type != CERT_DATA_QE_REPORT:
        raise EvidenceFormatError(
            f"unsupported certification data type {outer_type} (expected {CERT_DATA_QE_REPORT} = QE report)"
        )
    outer = s.take(outer_size, "QE report certification data")
    if s.pos != len(sig_data):
        raise EvidenceFormatError(f"{len(sig_data) - s.pos} unexpected bytes after the certification data")

    c = ByteReader(outer, "TDX quote")
    qe_report = c.take(QE_REPORT_SIZE, "QE report")
    qe_report_signature = c.take(ECDSA_SIG_SIZE, "QE report signature")
    qe_auth_len = c.u16("QE auth data size")
    qe_auth_data = c.take(qe_auth_len, "QE auth data")
    cert_data_type = c.u16("nested certification data type")
    cert_data_size = c.u32("nested certification data size")
    cert_data = c.take(cert_data_size, "nested certification data")
    if c.pos != len(outer):
        raise EvidenceFormatError(f"{len(outer) - c.pos} unexpected bytes after the nested certification data")

    return TdxQuote(
        raw=raw,
        version=version,
        att_key_type=att_key_type,
        tee_type=tee_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=qe_vendor_id,
        user_data=user_data,
        body_type=body_type,
        tee_tcb_svn=tee_tcb_svn,
        mr_seam=mr_seam,
        mr_signer_seam=mr_signer_seam,
        seam_attributes=seam_attributes,
        td_attributes=td_attributes,
        xfam=xfam,
        mr_td=mr_td,
        mr_config_id=mr_config_id,
        mr_owner=mr_owner,
        mr_owner_config=mr_owner_config,
        rtmr0=rtmr0,
        rtmr1=rtmr1,
        rtmr2=rtmr2,
        rtmr3=rtmr3,
        report_data=report_data,
        tee_tcb_svn2=tee_tcb_svn2,
        mr_service_td=mr_service_td,
        signed_size=signed_size,
        structure_size=structure_size,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        cert_data_type=cert_data_type,
        cert_data=cert_data,
    )
