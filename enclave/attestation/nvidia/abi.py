"""NVIDIA Hopper (H100/H200) GPU evidence: byte layout to frozen dataclasses, and the GPU evidence wire formats.

No cryptography and no policy here (see ``verify.py``); imports nothing from ``enclave`` outside ``attestation``.

An NVIDIA "attestation report" is an SPDM 1.1 (DMTF DSP0274) GET_MEASUREMENTS request followed by its MEASUREMENTS
response, all integers little-endian::

    request (37 bytes)
      0   1   SPDMVersion           0x11
      1   1   RequestResponseCode   0xE0 GET_MEASUREMENTS
      2   1   Param1                0x01: signature requested (bit 0); bits 7:1 reserved in 1.1
      3   1   Param2                0xFF: all measurement blocks
      4   32  Nonce                 chosen by the verifier: the freshness and key binding of the evidence
      36  1   SlotIDParam           bits 3:0 certificate slot, bits 7:4 reserved
    response
      0   1   SPDMVersion           0x11 (equal to the request's)
      1   1   RequestResponseCode   0x60 MEASUREMENTS
      2   1   Param1                reserved (0) when Param2 of the request is not 0
      3   1   Param2                reserved (0) in 1.1
      4   1   NumberOfBlocks        64 on H100
      5   3   MeasurementRecordLength L1
      8   L1  MeasurementRecord     NumberOfBlocks x {Index u8, MeasurementSpecification u8 (0x01 = DMTF),
                                    MeasurementSize u16, DMTF {ValueType u8, ValueSize u16, Value}}
      8+L1   32  Nonce              the responder's
      40+L1  2   OpaqueLength       L2
      42+L1  L2  OpaqueData         NVIDIA TLVs {type u16, length u16, value} (ids below, as in nvtrust's parser)
      42+L1+L2 96 Signature         ECDSA P-384 raw r || s, big-endian, over request || response[:-96]

Some collectors hand over a buffer with zero padding after the signature (the trustee Hopper sample has one byte).
The parser finds the end of the structure from the length fields, tolerates trailing **zero** bytes only, and keeps
them out of :attr:`GpuReport.signed_bytes`; a non-zero trailing byte is a format error.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, TypeVar

import orjson

from .._bytes import ByteReader
from ..errors import EvidenceFormatError

SPDM_VERSION_1_1: Final = 0x11
GET_MEASUREMENTS: Final = 0xE0
MEASUREMENTS: Final = 0x60
REQUEST_SIZE: Final = 37
NONCE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 96  # ECDSA P-384: 48-byte r || 48-byte s
FWID_SIZE: Final = 48  # SHA-384
VBIOS_VERSION_SIZE: Final = 8
#: NVSwitch (LS10) reports carry VBIOS_VERSION as NUL-free ASCII text, e.g. ``96.10.73.00.01`` (14 bytes).
SWITCH_VBIOS_VERSION_SIZE: Final = 14
MAX_SWITCHES: Final = 16
DMTF_MEASUREMENT_SPEC: Final = 0x01
ALL_MEASUREMENTS: Final = 0xFF
# Bounds on what we are willing to parse: an H100 report is ~4.2 KB and its chain ~5 KB. Anything far larger is not a
# Hopper report, and the bounds keep a hostile bundle from costing the client much.
MAX_REPORT_SIZE: Final = 64 * 1024
MAX_CHAIN_TEXT: Final = 64 * 1024
MAX_GPUS: Final = 64
GPU_EVIDENCE_VERSION: Final = 1
#: GPU evidence with the NVSwitch evidence of a protected-PCIe system (``switches``)
SWITCH_EVIDENCE_VERSION: Final = 2

_T = TypeVar("_T")


class OpaqueFieldId(IntEnum):
    """Opaque data field ids of NVIDIA's SPDM responses (nvtrust ``OpaqueDataParser`` numbering)."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    GPU_LINK_CONN = 32
    SYS_ENABLE_STATUS = 33
    OPAQUE_DATA_VERSION = 34
    CHIP_INFO = 35
    FEATURE_FLAG = 36
    INVALID = 255


#: FEATURE_FLAG values: the multi-GPU topology the GPU runs in. It says nothing about CC mode on/off/devtools.
FEATURE_FLAG_MODES: Final[dict[int, str]] = {0: "SPT", 1: "MPT", 2: "PPCIE"}


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasurementBlock:
    """One SPDM measurement block in DMTF format (``value`` is a SHA-384 digest on Hopper)."""

    index: int
    value_type: int
    value: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.index <= 0xFE:
            raise EvidenceFormatError(f"measurement block index {self.index} outside 1..254")


@dataclass(frozen=True, slots=True, kw_only=True)
class OpaqueField:
    """One NVIDIA opaque data TLV; ``type`` may be an id this parser does not know (kept, since it is signed)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuReport:
    """A parsed Hopper attestation report. ``request`` and ``response`` are the exact bytes as received."""

    request: bytes
    response: bytes  # header .. signature inclusive; trailing padding excluded
    padding: int  # zero bytes after the signature, outside the signed range
    spdm_version: int
    slot_id: int
    nonce: bytes  # the requester's: what the verifier chose
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque_data: bytes
    opaque_fields: tuple[OpaqueField, ...]
    signature: bytes
    # Decoded opaque fields this verifier uses (None when the report does not carry them).
    driver_version: str | None
    vbios_version: str | None
    fwid: bytes | None
    feature_flag: int | None
    protected_pcie_status: int | None
    project: str | None
    project_sku: str | None
    chip_sku: str | None

    def __post_init__(self) -> None:
        if len(self.request) != REQUEST_SIZE:
            raise EvidenceFormatError(f"GET_MEASUREMENTS request is {len(self.request)} bytes, not {REQUEST_SIZE}")
        if len(self.nonce) != NONCE_SIZE or len(self.responder_nonce) != NONCE_SIZE:
            raise EvidenceFormatError("SPDM nonces must be 32 bytes")
        if len(self.signature) != SIGNATURE_SIZE or not self.response.endswith(self.signature):
            raise EvidenceFormatError("signature must be the last 96 bytes of the response")

    @property
    def signed_bytes(self) -> bytes:
        """What the GPU signed (SPDM 1.1 L1/L2 transcript): request || response without the signature."""
        return self.request + self.response[:-SIGNATURE_SIZE]

    @property
    def measurements(self) -> dict[int, bytes]:
        """Measurement values by block index."""
        return {b.index: b.value for b in self.blocks}

    def opaque(self, fid: int) -> bytes | None:
        """The raw value of opaque field ``fid`` (None when absent)."""
        return next((f.value for f in self.opaque_fields if f.type == fid), None)

    @property
    def chip_info(self) -> str | None:
        """CHIP_INFO (35, Blackwell: ``GB100``, ``GB202``); None when absent (Hopper, early Blackwell drivers)."""
        value = self.opaque(OpaqueFieldId.CHIP_INFO)
        return None if value is None else _ascii(value)

    @property
    def nvdec0_status(self) -> int | None:
        """NVDEC0_STATUS (11): 0x55 disabled (RIM index 35 is then not compared), 0xAA enabled."""
        value = self.opaque(OpaqueFieldId.NVDEC0_STATUS)
        return None if value is None else _small_uint(value)

    @property
    def mode(self) -> str:
        """The multi-GPU mode from FEATURE_FLAG ("legacy" when the report predates the field)."""
        if self.feature_flag is None:
            return "legacy"
        return FEATURE_FLAG_MODES.get(self.feature_flag, f"unknown({self.feature_flag})")



def parse_gpu_report(data: bytes) -> GpuReport:
    """Parse one NVIDIA Hopper attestation report (SPDM GET_MEASUREMENTS request || response) strictly.

    Raises:
        EvidenceFormatError: wrong size, SPDM version or codes, reserved bits set, malformed measurement blocks or
            opaque TLVs, or non-zero bytes after the signature.
    """
    return _parse_spdm_report(data, _vbios_version)


def parse_switch_report(data: bytes) -> GpuReport:
    """Parse one NVSwitch (LS10, protected-PCIe systems) attestation report: the same SPDM 1.1 layout as a GPU's,
    with the switch's own field sizes: VBIOS_VERSION is 14 bytes of ASCII (``96.10.73.00.01``), not the GPU's 8-byte
    binary form, and there is no FWID opaque field. GPU parsing is unchanged: :func:`parse_gpu_report` still refuses
    a switch report.

    Raises:
        EvidenceFormatError: as :func:`parse_gpu_report`, or a VBIOS_VERSION that is not the switch's text form.
    """
    return _parse_spdm_report(data, _switch_vbios_version)


def _parse_spdm_report(data: bytes, vbios: Callable[[bytes], str]) -> GpuReport:
    if not isinstance(data, bytes):
        raise EvidenceFormatError(f"GPU report must be bytes, not {type(data).__name__}")
    if len(data) > MAX_REPORT_SIZE:
        raise EvidenceFormatError(f"GPU report is {len(data)} bytes (limit {MAX_REPORT_SIZE})")
    r = ByteReader(data, "GPU report")

    version = r.uint(1, "request SPDMVersion")
    # SPDM 1.2+ signs a hash of a transcript prefixed with a signing context, so a 1.2 report would not verify the
    # way a 1.1 one does; refuse it here rather than report a misleading signature failure.
    if version != SPDM_VERSION_1_1:
        raise EvidenceFormatError(f"unsupported SPDM version 0x{version:02x} (only 1.1 = 0x11)")
    if (code := r.uint(1, "request code")) != GET_MEASUREMENTS:
        raise EvidenceFormatError(f"request code 0x{code:02x} is not GET_MEASUREMENTS (0xe0)")
    # Without bit 0 the GPU neither signs nor takes a nonce: such evidence proves nothing.
    if (param1 := r.uint(1, "request Param1")) != 0x01:
        raise EvidenceFormatError(f"request Param1 0x{param1:02x}: must be 0x01 (signature requested, reserved 0)")
    if (param2 := r.uint(1, "request Param2")) != ALL_MEASUREMENTS:
        raise EvidenceFormatError(f"request Param2 0x{param2:02x}: must be 0xff (all measurement blocks)")
    nonce = r.take(NONCE_SIZE, "request nonce")
    slot = r.uint(1, "request SlotIDParam")
    if slot > 7:
        raise EvidenceFormatError(f"request SlotIDParam 0x{slot:02x}: slot must be 0..7, reserved bits zero")
    request = data[:REQUEST_SIZE]

    start = r.pos
    if (rversion := r.uint(1, "response SPDMVersion")) != version:
        raise EvidenceFormatError(f"response SPDM version 0x{rversion:02x} differs from the request's 0x{version:02x}")
    if (code := r.uint(1, "response code")) != MEASUREMENTS:
        raise EvidenceFormatError(f"response code 0x{code:02x} is not MEASUREMENTS (0x60)")
    rparams = r.take(2, "response Param1/Param2")
    if rparams != b"\x00\x00":
        raise EvidenceFormatError(f"response Param1/Param2 {rparams.hex()}: reserved in SPDM 1.1, must be zero")
    n_blocks = r.uint(1, "NumberOfBlocks")
    if n_blocks == 0:
        raise EvidenceFormatError("response has no measurement blocks")
    record_len = r.uint(3, "MeasurementRecordLength")
    record_end = r.pos + record_len
    if record_end > len(data):
        raise EvidenceFormatError(
            f"GPU report truncated: measurement record of {record_len} bytes at offset {r.pos}, "
            f"{len(data) - r.pos} left"
        )
    blocks = _parse_blocks(ByteReader(data, "GPU report", pos=r.pos, end=record_end), n_blocks)
    r.pos = record_end

    responder_nonce = r.take(NONCE_SIZE, "response nonce")
    opaque_len = r.uint(2, "OpaqueLength")
    opaque = r.take(opaque_len, "opaque data")
    fields = _parse_opaque(opaque)
    signature = r.take(SIGNATURE_SIZE, "signature")
    response = data[start : r.pos]

    trailing = data[r.pos :]
    if trailing.strip(b"\x00"):
        raise EvidenceFormatError(f"{len(trailing)} bytes after the signature, not all zero padding")

    by_type = {f.type: f.value for f in fields}
    return GpuReport(
        request=request,
        response=response,
        padding=len(trailing),
        spdm_version=version,
        slot_id=slot,
        nonce=nonce,
        blocks=blocks,
        responder_nonce=responder_nonce,
        opaque_data=opaque,
        opaque_fields=fields,
        signature=signature,
        driver_version=_opt(by_type, OpaqueFieldId.DRIVER_VERSION, _ascii),
        vbios_version=_opt(by_type, OpaqueFieldId.VBIOS_VERSION, vbios),
        fwid=_opt(by_type, OpaqueFieldId.FWID, _fwid),
        feature_flag=_opt(by_type, OpaqueFieldId.FEATURE_FLAG, _small_uint),
        protected_pcie_status=_opt(by_type, OpaqueFieldId.PROTECTED_PCIE_STATUS, _byte),
        project=_opt(by_type, OpaqueFieldId.PROJECT, _ascii),
        project_sku=_opt(by_type, OpaqueFieldId.PROJECT_SKU, _ascii),
        chip_sku=_opt(by_type, OpaqueFieldId.CHIP_SKU, _ascii),
    )


def _parse_blocks(r: ByteReader, n_blocks: int) -> tuple[MeasurementBlock, ...]:
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for _ in range(n_blocks):
        index = r.uint(1, "measurement block index")
        spec = r.uint(1, "measurement specification")
        if spec != DMTF_MEASUREMENT_SPEC:
            raise EvidenceFormatError(f"measurement block {index}: specification 0x{spec:02x} is not DMTF (0x01)")
        size = r.uint(2, "MeasurementSize")
        body = ByteReader(r.take(size, f"measurement block {index}"), "GPU report")
        value_type = body.uint(1, f"block {index} DMTF value type")
        value_size = body.uint(2, f"block {index} DMTF value size")
        value = body.take(value_size, f"block {index} DMTF value")
        if body.pos != size:
            raise EvidenceFormatError(f"measurement block {index}: size {size} != 3 + value size {value_size}")
        # A duplicate index would let two different values claim the same slot; RIM comparison must be unambiguous.
        if index in seen:
            raise EvidenceFormatError(f"measurement block index {index} appears twice")
        seen.add(index)
        blocks.append(MeasurementBlock(index=index, value_type=value_type, value=value))
    if r.pos != r.end:
        raise EvidenceFormatError(
            f"measurement record has {r.end - r.pos} bytes after {n_blocks} blocks (length field disagrees)"
        )
    return tuple(blocks)


def _parse_opaque(opaque: bytes) -> tuple[OpaqueField, ...]:
    r = ByteReader(opaque, "GPU report")
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while r.pos < r.end:
        ftype = r.uint(2, "opaque field type")
        length = r.uint(2, "opaque field length")
        value = r.take(length, f"opaque field {ftype}")
        if ftype == OpaqueFieldId.INVALID:
            raise EvidenceFormatError("opaque field id 255 (INVALID)")
        # Two FWID or version fields would make "the" value depend on which one a verifier reads.
        if ftype in seen:
            raise EvidenceFormatError(f"opaque field {ftype} appears twice")
        seen.add(ftype)
        fields.append(OpaqueField(type=ftype, value=value))
    return tuple(fields)


def _opt(by_type: dict[int, bytes], fid: OpaqueFieldId, decode: Callable[[bytes], _T]) -> _T | None:
    value = by_type.get(fid)
    if value is None:
        return None
    try:
        return decode(value)
    except EvidenceFormatError as exc:
        raise EvidenceFormatError(f"opaque field {fid.name}: {exc}") from None


def _ascii(value: bytes) -> str:
    """A NUL-terminated, NUL-padded ASCII string (driver version, project, SKU)."""
    text = value.rstrip(b"\x00")
    if not text or not all(0x20 < b < 0x7F for b in text):
        raise EvidenceFormatError(f"not a printable ASCII string: {value.hex()}")
    return text.decode("ascii")


def _vbios_version(value: bytes) -> str:
    """Eight bytes ``b0 b1 b2 b3 b4 0 0 0`` -> ``"b3.b2.b1.b0.b4"`` in upper-case hex, e.g. ``96.00.9F.00.01``."""
    if len(value) != VBIOS_VERSION_SIZE:
        raise EvidenceFormatError(f"{len(value)} bytes, expected {VBIOS_VERSION_SIZE}")
    if any(value[5:]):
        raise EvidenceFormatError(f"upper bytes not zero: {value.hex()}")
    return ".".join(f"{value[i]:02X}" for i in (3, 2, 1, 0, 4))


_SWITCH_VBIOS = re.compile(r"[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}")


def _switch_vbios_version(value: bytes) -> str:
    """Fourteen ASCII bytes ``xx.xx.xx.xx.xx`` (hex pairs) -> upper case, e.g. ``96.10.73.00.01``."""
    if len(value) != SWITCH_VBIOS_VERSION_SIZE:
        raise EvidenceFormatError(f"{len(value)} bytes, expected {SWITCH_VBIOS_VERSION_SIZE}")
    text = value.decode("ascii", errors="replace")
    if not _SWITCH_VBIOS.fullmatch(text):
        raise EvidenceFormatError(f"not a switch VBIOS version (xx.xx.xx.xx.xx): {value.hex()}")
    return text.upper()


def _fwid(value: bytes) -> bytes:
    if len(value) != FWID_SIZE:
        raise EvidenceFormatError(f"{len(value)} bytes, expected {FWID_SIZE}")
    return value


def _small_uint(value: bytes) -> int:
    if not 1 <= len(value) <= 4:
        raise EvidenceFormatError(f"{len(value)} bytes, expected 1..4")
    return int.from_bytes(value, "little")


def _byte(value: bytes) -> int:
    if len(value) != 1:
        raise EvidenceFormatError(f"{len(value)} bytes, expected 1")
    return value[0]


# --- the FWID in the device (leaf) certificate ------------------------------------------------------------------

OID_SHA384_DER: Final = bytes.fromhex("0609608648016503040202")  # 2.16.840.1.101.3.4.2.2


def parse_cert_fwid(ext_value: bytes) -> bytes:
    """The 48-byte FWID from the extension 2.23.133.5.4.1 of NVIDIA's "GSP FMC LF" leaf certificate.

    NVIDIA encodes it in the DICE/RIoT composite-device-identifier layout (not the context-tagged TCG DiceTcbInfo)::

        SEQUENCE { INTEGER version, SEQUENCE SubjectPublicKeyInfo, SEQUENCE { OID sha384, OCTET STRING fwid } }

    Only that exact layout is accepted, so a differently shaped extension cannot smuggle a second digest in.

    Raises:
        EvidenceFormatError: any other layout, hash algorithm or digest size.
    """
    body = _der_expect(ext_value, 0, 0x30, "TcbInfo", whole=True)
    version = _der_expect(ext_value, body[0], 0x02, "TcbInfo version")
    spki = _der_expect(ext_value, version[1], 0x30, "TcbInfo public key")
    fwid_seq = _der_expect(ext_value, spki[1], 0x30, "TcbInfo FWID")
    if fwid_seq[1] != body[1]:
        raise EvidenceFormatError("TcbInfo extension has fields after the FWID")
    alg = _der_expect(ext_value, fwid_seq[0], 0x06, "FWID hash algorithm")
    if ext_value[fwid_seq[0] : alg[1]] != OID_SHA384_DER:
        raise EvidenceFormatError("FWID hash algorithm is not SHA-384")
    digest = _der_expect(ext_value, alg[1], 0x04, "FWID digest")
    if digest[1] != fwid_seq[1]:
        raise EvidenceFormatError("FWID sequence has fields after the digest")
    value = ext_value[digest[0] : digest[1]]
    if len(value) != FWID_SIZE:
        raise EvidenceFormatError(f"certificate FWID is {len(value)} bytes, expected {FWID_SIZE}")
    return value


def parse_dice_tcb_info_fwid(ext_value: bytes) -> bytes:
    """``fwids[0]`` of a TCG DiceTcbInfo (Blackwell leaves, extension 2.23.133.5.4.1.1)::

        DiceTcbInfo ::= SEQUENCE { vendor [0], model [1], version [2], svn [3], layer [4], index [5],
                                   fwids [6] IMPLICIT SEQUENCE OF FWID { hashAlg OID, digest OCTET STRING },
                                   flags [7], vendorInfo [8], type [9], ... }   -- all OPTIONAL, context tags in order

    Parsed structurally: the "last 48 bytes" shortcut that works for Hopper's layout picks the wrong digest here
    (Blackwell leaves carry a second, all-zero FWID after the first).

    Raises:
        EvidenceFormatError: not that layout, tags out of order or repeated, no fwids, not SHA-384.
    """
    start, end = _der_expect(ext_value, 0, 0x30, "DiceTcbInfo", whole=True)
    pos, last, fwids = start, -1, None
    while pos < end:
        tag = ext_value[pos]
        if tag & 0xC0 != 0x80 or (tag & 0x1F) <= last or (tag & 0x1F) > 30:
            raise EvidenceFormatError(f"DiceTcbInfo: unexpected tag 0x{tag:02x} at offset {pos}")
        last = tag & 0x1F
        vstart, vend = _der_expect(ext_value, pos, tag, f"DiceTcbInfo [{last}]")
        if last == 6:
            if tag != 0xA6:
                raise EvidenceFormatError("DiceTcbInfo fwids is not a constructed [6]")
            fwids = (vstart, vend)
        pos = vend
    if pos != end or fwids is None or fwids[0] == fwids[1]:
        raise EvidenceFormatError("DiceTcbInfo has no fwids")
    fstart, fend = _der_expect(ext_value, fwids[0], 0x30, "DiceTcbInfo FWID")
    alg = _der_expect(ext_value, fstart, 0x06, "FWID hash algorithm")
    if ext_value[fstart : alg[1]] != OID_SHA384_DER:
        raise EvidenceFormatError("FWID hash algorithm is not SHA-384")
    digest = _der_expect(ext_value, alg[1], 0x04, "FWID digest")
    if digest[1] != fend:
        raise EvidenceFormatError("FWID has fields after the digest")
    value = ext_value[digest[0] : digest[1]]
    if len(value) != FWID_SIZE:
        raise EvidenceFormatError(f"certificate FWID is {len(value)} bytes, expected {FWID_SIZE}")
    return value


def _der_expect(data: bytes, pos: int, tag: int, what: str, *, whole: bool = False) -> tuple[int, int]:
    """Read one DER TLV with single-byte ``tag`` at ``pos``; returns (value start, value end). Minimal lengths only."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise EvidenceFormatError(f"{what}: expected DER tag 0x{tag:02x} at offset {pos}")
    first = data[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if not 1 <= n <= 2 or start + n > len(data):
            raise EvidenceFormatError(f"{what}: unsupported DER length at offset {pos}")
        length = int.from_bytes(data[start : start + n], "big")
        start += n
        if length < 0x80 or (n == 2 and length < 0x100):
            raise EvidenceFormatError(f"{what}: non-minimal DER length at offset {pos}")
    end = start + length
    if end > len(data) or (whole and end != len(data)):
        raise EvidenceFormatError(f"{what}: DER length {length} does not fit the extension")
    return start, end


# --- GPU evidence inside a Veil bundle, and nvtrust's evidence list ---------------------------------------------


def encode_gpu_evidence(gpus: list[tuple[bytes, str]], switches: Sequence[tuple[bytes, str]] = ()) -> bytes:
    """The canonical bytes of a bundle's GPU evidence (what REPORT_DATA hashes)::

        {"gpus":[{"cert_chain":"<PEM text>","report":"<lower-case hex>"}, ...],"version":1}

    and, with the NVSwitch evidence of a protected-PCIe system (``switches``), version 2, which adds the switches
    in the same form (so SHA-256 of these bytes in REPORT_DATA binds every switch report and chain too)::

        {"gpus":[...],"switches":[{"cert_chain":"<PEM text>","report":"<lower-case hex>"}, ...],"version":2}

    Keys sorted, no whitespace (orjson ``OPT_SORT_KEYS``), GPUs and switches in the given order. GPU-only evidence
    stays version 1, byte for byte. An empty GPU list is refused: a bundle without GPUs carries empty
    ``gpu_evidence`` instead (switches without GPUs have no nonce of their own to be bound with).
    """
    if not gpus:
        raise ValueError("no GPU evidence to encode (use b'' for a bundle without GPUs)")
    if len(gpus) > MAX_GPUS:
        raise ValueError(f"{len(gpus)} GPUs (limit {MAX_GPUS})")
    if len(switches) > MAX_SWITCHES:
        raise ValueError(f"{len(switches)} switches (limit {MAX_SWITCHES})")
    obj: dict[str, Any] = {"version": GPU_EVIDENCE_VERSION, "gpus": _encode_items("gpu", gpus)}
    if switches:
        obj.update(version=SWITCH_EVIDENCE_VERSION, switches=_encode_items("switch", switches))
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def _encode_items(kind: str, items: Sequence[tuple[bytes, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for i, (report, chain) in enumerate(items):
        if not isinstance(report, bytes) or not report or not isinstance(chain, str) or not chain.isascii():
            raise ValueError(f"{kind}[{i}]: report must be non-empty bytes and cert_chain ASCII text")
        out.append({"report": report.hex(), "cert_chain": chain})
    return out


def decode_gpu_evidence(data: bytes) -> list[tuple[bytes, str]]:
    """The GPUs of :func:`encode_gpu_evidence` output (version 1 or 2); see :func:`decode_nvidia_evidence`.

    Raises:
        EvidenceFormatError: as :func:`decode_nvidia_evidence`.
    """
    return decode_nvidia_evidence(data)[0]


def decode_nvidia_evidence(data: bytes) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]]]:
    """Parse :func:`encode_gpu_evidence` output into ``(gpus, switches)`` (no switches in version 1); anything but
    its exact canonical bytes is refused.

    Canonical-only means one GPU evidence list has exactly one byte string, so the hash in REPORT_DATA cannot be
    satisfied by a re-serialized (reordered, re-escaped, upper-case hex) variant carrying different content.

    Raises:
        EvidenceFormatError: not JSON, wrong version, unknown or missing keys, bad hex, not canonical.
    """
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EvidenceFormatError(f"GPU evidence is not JSON: {exc}") from None
    if not isinstance(obj, dict) or type(obj.get("version")) is not int:
        raise EvidenceFormatError("GPU evidence must be an object with an integer 'version'")
    version = obj["version"]
    keys = {GPU_EVIDENCE_VERSION: {"version", "gpus"},
            SWITCH_EVIDENCE_VERSION: {"version", "gpus", "switches"}}.get(version)
    if keys is None:
        raise EvidenceFormatError(f"unsupported GPU evidence version {version!r}")
    if set(obj) != keys:
        raise EvidenceFormatError(f"GPU evidence version {version} must have exactly {', '.join(sorted(keys))}")
    gpus = _decode_items("gpus", obj["gpus"], MAX_GPUS)
    switches = _decode_items("switches", obj["switches"], MAX_SWITCHES) if "switches" in obj else []
    if encode_gpu_evidence(gpus, switches) != data:
        raise EvidenceFormatError("GPU evidence is not in canonical form (sorted keys, no whitespace, lower-case hex)")
    return gpus, switches


def _decode_items(name: str, items: Any, limit: int) -> list[tuple[bytes, str]]:
    if not isinstance(items, list) or not 1 <= len(items) <= limit:
        raise EvidenceFormatError(f"'{name}' must be a list of 1..{limit} entries")
    out: list[tuple[bytes, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"report", "cert_chain"}:
            raise EvidenceFormatError(f"{name}[{i}] must have exactly 'report' and 'cert_chain'")
        report, chain = item["report"], item["cert_chain"]
        if not isinstance(report, str) or not isinstance(chain, str) or not chain.isascii():
            raise EvidenceFormatError(f"{name}[{i}]: 'report' must be hex text and 'cert_chain' ASCII PEM text")
        if len(chain) > MAX_CHAIN_TEXT:
            raise EvidenceFormatError(f"{name}[{i}]: certificate chain longer than {MAX_CHAIN_TEXT} characters")
        try:
            raw = bytes.fromhex(report)
        except ValueError:
            raise EvidenceFormatError(f"{name}[{i}]: 'report' is not hex") from None
        if not raw:
            raise EvidenceFormatError(f"{name}[{i}]: 'report' is empty")
        out.append((raw, chain))
    return out


def load_nvtrust_evidence_list(json_bytes: bytes) -> list[tuple[bytes, str]]:
    """Read nvtrust / NRAS GPU evidence (``[{"evidence": b64 report, "certificate": b64 PEM chain, ...}, ...]``).

    Other keys (``arch``, ``nonce``, ``driver_version``, ...) are ignored: they are unsigned copies of what the
    report itself carries, and the verifier reads those values from the signed bytes only.

    Raises:
        EvidenceFormatError: not a list of objects with base64 ``evidence`` and ``certificate``.
    """
    try:
        items: Any = orjson.loads(json_bytes)
    except orjson.JSONDecodeError as exc:
        raise EvidenceFormatError(f"evidence list is not JSON: {exc}") from None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_GPUS:
        raise EvidenceFormatError(f"evidence list must be a JSON list of 1..{MAX_GPUS} objects")
    out: list[tuple[bytes, str]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("evidence"), str) or not isinstance(
            item.get("certificate"), str
        ):
            raise EvidenceFormatError(f"evidence[{i}] needs string 'evidence' and 'certificate'")
        try:
            report = base64.b64decode(item["evidence"], validate=True)
            chain = base64.b64decode(item["certificate"], validate=True).decode("ascii")
        except (binascii.Error, ValueError) as exc:
            raise EvidenceFormatError(f"evidence[{i}]: bad base64 or non-ASCII certificate: {exc}") from None
        out.append((report, chain))
    return out
