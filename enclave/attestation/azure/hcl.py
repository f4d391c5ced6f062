"""Azure confidential-VM "HCL report": the paravisor's wrapper around the SNP report / TD report and its runtime data.

Azure CVMs do not give the guest /dev/sev-guest or a TDX quote device; the paravisor (HCL, OpenHCL) writes this
report to vTPM NV index 0x01400001. Layout (little-endian; Microsoft's IGVM attestation structures, as parsed by
azure-cvm-tooling ``az-cvm-vtpm``)::

    0x000 IGVM_HCL_ATTESTATION_HEADER (32 bytes)
          signature u32 = "HCLA"   version u32 (1, 2)   report_size u32 (bytes of this report that are used)
          request_type u32   status u32   reserved u32[3]
    0x020 hardware report, 1184 bytes: an SEV-SNP ATTESTATION_REPORT (1184 bytes) or a TDX TDREPORT (1024 bytes,
          then zero padding)
    0x4C0 IGVM_REQUEST_DATA (20 bytes)
          data_size u32 (= 20 + variable_data_size)   version u32 (1)
          report_type u32 (2 = SNP, 4 = TDX)   report_data_hash_type u32 (1 = SHA-256, 2 = SHA-384, 3 = SHA-512)
          variable_data_size u32
    0x4D4 variable data: the runtime-data JSON (keys HCLAkPub / HCLEkPub as JWKs, vm-configuration, user-data)

The hardware report's REPORT_DATA is ``hash(runtime JSON) || zero padding`` (64 bytes); nothing else in the HCL report
is bound. The TD report itself is only MAC'd (checkable on the platform), so for TDX the binding is checked on the TD
*quote* the guest supplies alongside; the TD report is compared to it for consistency.

Imports nothing from ``enclave`` outside ``attestation``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import rsa

from ..errors import EvidenceFormatError

HCL_MAGIC: Final = b"HCLA"
HEADER_SIZE: Final = 0x20
HW_REPORT_OFFSET: Final = 0x20
HW_REPORT_SIZE: Final = 1184
SNP_REPORT_SIZE: Final = 1184
TD_REPORT_SIZE: Final = 1024
REQUEST_DATA_OFFSET: Final = HW_REPORT_OFFSET + HW_REPORT_SIZE  # 0x4C0
REQUEST_DATA_HEADER: Final = 20
RUNTIME_DATA_OFFSET: Final = REQUEST_DATA_OFFSET + REQUEST_DATA_HEADER  # 0x4D4
SUPPORTED_VERSIONS: Final = (1, 2)
REPORT_TYPE_SNP: Final = 2
REPORT_TYPE_TDX: Final = 4
REPORT_TYPE_NAMES: Final = {0: "invalid", 1: "VBS (reserved)", 2: "SNP", 3: "TVM", 4: "TDX"}
HASH_TYPES: Final = {1: "sha256", 2: "sha384", 3: "sha512"}
HCL_AK_KID: Final = "HCLAkPub"
HCL_EK_KID: Final = "HCLEkPub"
#: TDREPORT (Intel TDX module ABI, TDREPORT_STRUCT): REPORTMACSTRUCT (256) || TEE_TCB_INFO (239) || reserved (17) ||
#: TDINFO (512). REPORTDATA sits at 128 in REPORTMACSTRUCT.
TD_REPORT_TYPE_TDX: Final = 0x81
_TD_REPORTDATA: Final = slice(128, 192)
_TD_TEE_TCB_INFO: Final = 256
_TD_INFO: Final = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class HclReport:
    """A parsed HCL report. Bytes fields are slices of ``raw``; nothing is verified yet."""

    raw: bytes
    version: int
    report_size: int
    request_type: int
    status: int
    #: The 1184-byte hardware area: the SNP report, or the TD report followed by zero padding.
    hw_report: bytes
    request_data_size: int
    request_data_version: int
    report_type: int
    hash_type: int
    #: The exact runtime-data bytes whose hash the hardware report carries.
    runtime_data: bytes
    runtime: dict[str, Any]

    @property
    def is_snp(self) -> bool:
        return self.report_type == REPORT_TYPE_SNP

    @property
    def is_tdx(self) -> bool:
        return self.report_type == REPORT_TYPE_TDX

    @property
    def type_name(self) -> str:
        return REPORT_TYPE_NAMES.get(self.report_type, f"unknown ({self.report_type})")

    @property
    def snp_report(self) -> bytes:
        return self.hw_report[:SNP_REPORT_SIZE]

    @property
    def td_report(self) -> bytes:
        return self.hw_report[:TD_REPORT_SIZE]

    @property
    def hash_name(self) -> str:
        """hashlib name of report_data_hash_type."""
        return HASH_TYPES[self.hash_type]

    @property
    def hash_label(self) -> str:
        return "SHA-" + self.hash_name[3:]

    def expected_report_data(self) -> bytes:
        """``hash(runtime data)`` zero-padded to 64 bytes: what the hardware report's REPORT_DATA must be."""
        digest = hashlib.new(self.hash_name, self.runtime_data).digest()
        return digest + bytes(64 - len(digest))

    @property
    def hw_report_data(self) -> bytes:
        """REPORT_DATA of the (unverified) hardware report in the HCL report."""
        if self.is_snp:
            return self.hw_report[0x50:0x90]
        return self.td_report[_TD_REPORTDATA]

    @property
    def user_data(self) -> bytes | None:
        """The runtime JSON's ``user-data`` (hex; 64 bytes on Azure), or None when absent."""
        value = self.runtime.get("user-data")
        if value is None:
            return None
        if not isinstance(value, str):
            raise EvidenceFormatError("HCL runtime data: user-data is not a string")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise EvidenceFormatError("HCL runtime data: user-data is not hex") from None

    @property
    def vm_configuration(self) -> dict[str, Any]:
        value = self.runtime.get("vm-configuration", {})
        return value if isinstance(value, dict) else {}

    def jwk(self, kid: str) -> dict[str, Any] | None:
        """The runtime JSON's key with ``kid`` (None if absent; an error if present twice)."""
        keys = self.runtime.get("keys", [])
        if not isinstance(keys, list):
            raise EvidenceFormatError("HCL runtime data: 'keys' is not a list")
        found = [k for k in keys if isinstance(k, dict) and k.get("kid") == kid]
        if len(found) > 1:
            raise EvidenceFormatError(f"HCL runtime data names {kid} {len(found)} times")
        return found[0] if found else None

    def ak_public_key(self) -> rsa.RSAPublicKey:
        """The vTPM attestation key (HCLAkPub) as an RSA public key.

        Raises:
            EvidenceFormatError: no HCLAkPub, not an RSA JWK, or not a signing key.
        """
        jwk = self.jwk(HCL_AK_KID)
        if jwk is None:
            raise EvidenceFormatError("HCL runtime data has no HCLAkPub key")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "sign" not in ops):
            raise EvidenceFormatError(f"HCLAkPub key_ops {ops!r} does not include 'sign'")
        return rsa_jwk(jwk, what="HCLAkPub")

    def td_report_fields(self) -> dict[str, bytes]:
        """TD report fields in the TD quote body's layout (only meaningful when ``is_tdx``)."""
        td = self.td_report
        tcb = td[_TD_TEE_TCB_INFO : _TD_TEE_TCB_INFO + 239]
        info = td[_TD_INFO:]
        out = {
            "tee_tcb_svn": tcb[8:24], "mr_seam": tcb[24:72], "mr_signer_seam": tcb[72:120],
            "seam_attributes": tcb[120:128], "td_attributes": info[0:8], "xfam": info[8:16],
            "mr_td": info[16:64], "mr_config_id": info[64:112], "mr_owner": info[112:160],
            "mr_owner_config": info[160:208],
        }
        for i in range(4):
            out[f"rtmr{i}"] = info[208 + 48 * i : 256 + 48 * i]
        out["report_data"] = td[_TD_REPORTDATA]
        return out


def parse_hcl_report(raw: bytes) -> HclReport:
    """Parse an HCL report strictly (header, sizes, report and hash types, runtime JSON).

    Raises:
        EvidenceFormatError: anything malformed; never for a signature or binding problem (those are checks).
    """
    data = bytes(raw)
    if len(data) < RUNTIME_DATA_OFFSET:
        raise EvidenceFormatError(
            f"HCL report is {len(data)} bytes, shorter than its fixed part ({RUNTIME_DATA_OFFSET})"
        )
    magic = data[:4]
    if magic != HCL_MAGIC:
        raise EvidenceFormatError(f"HCL report magic is {magic!r}, not b'HCLA'")
    version, report_size, request_type, status, *reserved = struct.unpack_from("<7I", data, 4)
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceFormatError(f"HCL report version {version} is not one of {list(SUPPORTED_VERSIONS)}")
    if any(reserved):
        raise EvidenceFormatError("HCL report header reserved words are not zero")
    data_size, req_version, report_type, hash_type, var_size = struct.unpack_from("<5I", data, REQUEST_DATA_OFFSET)
    if req_version != 1:
        raise EvidenceFormatError(f"IGVM request data version {req_version}, not 1")
    if report_type not in (REPORT_TYPE_SNP, REPORT_TYPE_TDX):
        raise EvidenceFormatError(
            f"HCL report type {report_type} ({REPORT_TYPE_NAMES.get(report_type, 'unknown')}) is not SNP (2) or TDX (4)"
        )
    if hash_type not in HASH_TYPES:
        raise EvidenceFormatError(f"HCL report_data hash type {hash_type} is not 1 (SHA-256), 2 (SHA-384), 3 (SHA-512)")
    if data_size != REQUEST_DATA_HEADER + var_size:
        raise EvidenceFormatError(f"IGVM request data_size {data_size} != 20 + variable_data_size {var_size}")
    if report_size != RUNTIME_DATA_OFFSET + var_size:
        raise EvidenceFormatError(f"HCL report_size {report_size} != {RUNTIME_DATA_OFFSET} + runtime data {var_size}")
    if report_size > len(data):
        raise EvidenceFormatError(f"HCL report_size {report_size} exceeds the {len(data)} bytes supplied")
    hw = data[HW_REPORT_OFFSET:REQUEST_DATA_OFFSET]
    if report_type == REPORT_TYPE_TDX:
        if hw[0] != TD_REPORT_TYPE_TDX:
            raise EvidenceFormatError(f"TD report type 0x{hw[0]:02x} is not TDX (0x81)")
        if any(hw[TD_REPORT_SIZE:]):
            raise EvidenceFormatError("bytes after the 1024-byte TD report in the HCL report are not zero")
    runtime_data = data[RUNTIME_DATA_OFFSET:report_size]
    runtime = strict_json_object(runtime_data, "HCL runtime data")
    return HclReport(
        raw=data, version=version, report_size=report_size, request_type=request_type, status=status, hw_report=hw,
        request_data_size=data_size, request_data_version=req_version, report_type=report_type, hash_type=hash_type,
        runtime_data=runtime_data, runtime=runtime,
    )


def rsa_jwk(jwk: dict[str, Any], *, what: str = "JWK") -> rsa.RSAPublicKey:
    """An RSA public key from a JWK's ``n`` and ``e`` (RFC 7518 6.3.1; base64url without padding)."""
    if jwk.get("kty") != "RSA":
        raise EvidenceFormatError(f"{what} is not an RSA key (kty {jwk.get('kty')!r})")
    try:
        n = int.from_bytes(b64url_decode(jwk["n"]), "big")
        e = int.from_bytes(b64url_decode(jwk["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    except (KeyError, TypeError, ValueError) as exc:
        raise EvidenceFormatError(f"{what}: unusable RSA JWK ({type(exc).__name__}: {exc})") from None


def b64url_decode(text: Any) -> bytes:
    """Base64url with or without padding; other alphabets or junk are ValueError, a non-string TypeError."""
    if not isinstance(text, str):
        raise TypeError(f"expected a base64url string, not {type(text).__name__}")
    body = text.rstrip("=")
    if any(c not in _B64URL for c in body):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


_B64URL: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def strict_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A UTF-8 JSON object with no duplicate members (two parsers must never read different values from it)."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, val in pairs:
            if k in out:
                raise EvidenceFormatError(f"{what}: duplicate member {k!r}")
            out[k] = val
        return out

    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EvidenceFormatError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EvidenceFormatError(f"{what} is not a JSON object")
    return obj
