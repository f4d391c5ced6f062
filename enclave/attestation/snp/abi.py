"""AMD SEV-SNP ATTESTATION_REPORT: bytes to a frozen dataclass (go-sev-guest's ``abi``). No crypto, no policy.

Imports nothing from ``enclave`` except the attestation error tree. Layout (SEV-SNP firmware ABI, little-endian)::

    0x000 VERSION u32 (2, 3, 5)   0x004 GUEST_SVN u32   0x008 POLICY u64   0x010 FAMILY_ID[16]   0x020 IMAGE_ID[16]
    0x030 VMPL u32   0x034 SIGNATURE_ALGO u32 (1)   0x038 CURRENT_TCB[8]   0x040 PLATFORM_INFO u64
    0x048 KEY_INFO u32 (bit0 AUTHOR_KEY_EN, bit1 MASK_CHIP_KEY, bits 4:2 SIGNING_KEY)   0x04C reserved u32
    0x050 REPORT_DATA[64]   0x090 MEASUREMENT[48]   0x0C0 HOST_DATA[32]   0x0E0 ID_KEY_DIGEST[48]
    0x110 AUTHOR_KEY_DIGEST[48]   0x140 REPORT_ID[32]   0x160 REPORT_ID_MA[32]   0x180 REPORTED_TCB[8]
    0x188 CPUID_FAM_ID, CPUID_MOD_ID, CPUID_STEP (v3+; reserved in v2)   0x18B..0x1A0 reserved
    0x1A0 CHIP_ID[64]   0x1E0 COMMITTED_TCB[8]   0x1E8 CURRENT_BUILD, MINOR, MAJOR, reserved
    0x1EC COMMITTED_BUILD, MINOR, MAJOR, reserved   0x1F0 LAUNCH_TCB[8]
    0x1F8 LAUNCH_MIT_VECTOR u64, 0x200 CURRENT_MIT_VECTOR u64 (v5; reserved before)   0x208..0x2A0 reserved
    0x2A0 SIGNATURE[512]: R[72] || S[72] (little-endian, zero-padded) || reserved[368]

The signed part is exactly bytes ``[0x000, 0x2A0)`` of the input; we keep those bytes, never a re-serialization.

TCB_VERSION (8 bytes) depends on the product, which a v2 report does not name::

    Milan, Genoa: [0] BOOT_LOADER [1] TEE [2..5] reserved [6] SNP [7] MICROCODE
    Turin:        [0] FMC [1] BOOT_LOADER [2] TEE [3] SNP [4..6] reserved [7] MICROCODE

Report VERSION 4 is refused: no AMD ABI revision we can cite defines a version-4 layout, no real sample exists, and
virtee/sev reading it "like 3" is a guess. A parser that guesses at an undocumented layout could misread fields that
policy depends on; accepting it later is a one-line change once a real v4 report and its spec text are in hand.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from ..errors import EvidenceFormatError

REPORT_SIZE: Final = 0x4A0
SIGNED_SIZE: Final = 0x2A0  # the ECDSA signature covers [0, SIGNATURE_OFFSET)
SIGNATURE_OFFSET: Final = 0x2A0
SUPPORTED_VERSIONS: Final = (2, 3, 5)
SIG_ALGO_ECDSA_P384_SHA384: Final = 1
#: R and S are 72-byte little-endian fields; P-384 scalars need 48, the rest must be zero.
_SIG_COMPONENT: Final = 72
_P384_SCALAR: Final = 48

# POLICY bits (SEV-SNP ABI "GUEST_POLICY").
_POLICY_SMT: Final = 16
_POLICY_RESERVED_MUST_BE_ONE: Final = 17
_POLICY_MIGRATE_MA: Final = 18
_POLICY_DEBUG: Final = 19
_POLICY_SINGLE_SOCKET: Final = 20
_POLICY_CXL_ALLOW: Final = 21
_POLICY_MEM_AES_256_XTS: Final = 22
_POLICY_RAPL_DIS: Final = 23
_POLICY_CIPHERTEXT_HIDING: Final = 24
_POLICY_PAGE_SWAP_DISABLE: Final = 25
_POLICY_HIGHEST_DEFINED: Final = 25

# PLATFORM_INFO: bit 6 is reserved, bits above 7 undefined (go-sev-guest refuses both; so do we).
_PLATFORM_INFO_DEFINED: Final = 0b1011_1111


class Product(enum.StrEnum):
    """AMD product lines that have their own ARK (and KDS path)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


class SigningKey(enum.IntEnum):
    """KEY_INFO.SIGNING_KEY: which endorsement key signed the report (2..6 are reserved)."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True, slots=True, kw_only=True)
class TcbParts:
    """The security patch levels packed in one TCB_VERSION; ``fmc`` exists on Turin only."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    def as_dict(self) -> dict[str, int]:
        d = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            d["fmc"] = self.fmc
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestPolicy:
    """POLICY decoded; ``raw`` is the 64-bit value as reported."""

    raw: int
    abi_minor: int
    abi_major: int
    smt: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allowed: bool
    mem_aes_256_xts: bool
    rapl_dis: bool
    ciphertext_hiding: bool
    page_swap_disable: bool

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "raw": self.raw, "abi_major": self.abi_major, "abi_minor": self.abi_minor, "smt": self.smt,
            "migrate_ma": self.migrate_ma, "debug": self.debug, "single_socket": self.single_socket,
            "cxl_allowed": self.cxl_allowed, "mem_aes_256_xts": self.mem_aes_256_xts, "rapl_dis": self.rapl_dis,
            "ciphertext_hiding": self.ciphertext_hiding, "page_swap_disable": self.page_swap_disable,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformInfo:
    """PLATFORM_INFO decoded."""

    raw: int
    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool
    tio_enabled: bool

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "raw": self.raw, "smt_enabled": self.smt_enabled, "tsme_enabled": self.tsme_enabled,
            "ecc_enabled": self.ecc_enabled, "rapl_disabled": self.rapl_disabled,
            "ciphertext_hiding_enabled": self.ciphertext_hiding_enabled,
            "alias_check_complete": self.alias_check_complete, "tio_enabled": self.tio_enabled,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareVersion:
    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SnpReport:
    """A strictly parsed ATTESTATION_REPORT. TCB fields stay raw (8 bytes) until a product is known."""

    raw: bytes
    signed_bytes: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: bytes
    platform_info: PlatformInfo
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: bytes
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: bytes
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: bytes
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int

    def __post_init__(self) -> None:
        if len(self.raw) != REPORT_SIZE or self.signed_bytes != self.raw[:SIGNED_SIZE]:
            raise EvidenceFormatError("SnpReport must be built by parse_report()")

    @property
    def cpuid_product(self) -> Product | None:
        """The product named by CPUID_FAM_ID/CPUID_MOD_ID (v3+); None for v2 or an unknown model."""
        if self.cpuid_fam_id is None or self.cpuid_mod_id is None:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    def tcb(self, which: str, product: Product) -> TcbParts:
        """Decode one of ``current``, ``reported``, ``committed``, ``launch`` for ``product``.

        Raises:
            EvidenceFormatError: a byte that is reserved in ``product``'s layout is not zero.
        """
        raw = {"current": self.current_tcb, "reported": self.reported_tcb, "committed": self.committed_tcb,
               "launch": self.launch_tcb}[which]
        return decode_tcb(raw, product, field=f"{which.upper()}_TCB")


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Map CPUID family/model to a product line (ranges as in virtee/sev ``Generation::identify_cpu``).

    Genoa's KDS product line also covers Bergamo/Siena (model 0xA0..0xAF); a real Genoa-line report with model 0xA0
    is in the shared evidence (genoa-vcek-v3-kbs-json-trustee), so the 0x11-only rule in the notes is too narrow.
    """
    if family == 0x19:
        if 0x00 <= model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
    elif family == 0x1A and 0x00 <= model <= 0x11:
        return Product.TURIN
    return None


def decode_tcb(raw: bytes, product: Product, *, field: str = "TCB_VERSION") -> TcbParts:
    """Split an 8-byte TCB_VERSION with ``product``'s layout; reserved bytes must be zero.

    Raises:
        EvidenceFormatError: wrong length or a reserved byte set.
    """
    if len(raw) != 8:
        raise EvidenceFormatError(f"{field}: {len(raw)} bytes, expected 8")
    if product is Product.TURIN:
        reserved = raw[4:7]
        parts = TcbParts(fmc=raw[0], bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7])
        span = "4..6"
    else:
        reserved = raw[2:6]
        parts = TcbParts(bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])
        span = "2..5"
    if any(reserved):
        raise EvidenceFormatError(
            f"{field}: reserved bytes [{span}] of the {product} layout are not zero: {raw.hex()}"
        )
    return parts


def parse_policy(value: int) -> GuestPolicy:
    """Decode POLICY; bit 17 must be 1 and bits 63:26 must be 0 (SEV-SNP ABI GUEST_POLICY).

    Raises:
        EvidenceFormatError: a reserved bit is wrong.
    """
    if not value >> _POLICY_RESERVED_MUST_BE_ONE & 1:
        raise EvidenceFormatError(f"POLICY bit 17 is reserved and must be 1: 0x{value:016x}")
    if value >> (_POLICY_HIGHEST_DEFINED + 1):
        raise EvidenceFormatError(f"POLICY bits 63:26 are reserved and must be 0: 0x{value:016x}")

    def bit(n: int) -> bool:
        return bool(value >> n & 1)

    return GuestPolicy(
        raw=value, abi_minor=value & 0xFF, abi_major=value >> 8 & 0xFF, smt=bit(_POLICY_SMT),
        migrate_ma=bit(_POLICY_MIGRATE_MA), debug=bit(_POLICY_DEBUG), single_socket=bit(_POLICY_SINGLE_SOCKET),
        cxl_allowed=bit(_POLICY_CXL_ALLOW), mem_aes_256_xts=bit(_POLICY_MEM_AES_256_XTS),
        rapl_dis=bit(_POLICY_RAPL_DIS), ciphertext_hiding=bit(_POLICY_CIPHERTEXT_HIDING),
        page_swap_disable=bit(_POLICY_PAGE_SWAP_DISABLE),
    )


def parse_platform_info(value: int) -> PlatformInfo:
    """Decode PLATFORM_INFO; reserved bit 6 and undefined bits 63:8 must be 0.

    Raises:
        EvidenceFormatError: a reserved bit is set.
    """
    if value & ~_PLATFORM_INFO_DEFINED:
        raise EvidenceFormatError(
            f"PLATFORM_INFO has reserved/undefined bits set (bit 6 or 63:8): 0x{value:016x}"
        )

    def bit(n: int) -> bool:
        return bool(value >> n & 1)

    return PlatformInfo(raw=value, smt_enabled=bit(0), tsme_enabled=bit(1), ecc_enabled=bit(2),
                        rapl_disabled=bit(3), ciphertext_hiding_enabled=bit(4), alias_check_complete=bit(5),
                        tio_enabled=bit(7))


def parse_key_info(value: int) -> tuple[bool, bool, SigningKey]:
    """Decode KEY_INFO into (AUTHOR_KEY_EN, MASK_CHIP_KEY, SIGNING_KEY).

    Raises:
        EvidenceFormatError: bits 31:5 set, or SIGNING_KEY is one of the reserved values 2..6.
    """
    if value >> 5:
        raise EvidenceFormatError(f"KEY_INFO bits 31:5 are reserved and must be 0: 0x{value:08x}")
    key = value >> 2 & 7
    if key not in (SigningKey.VCEK, SigningKey.VLEK, SigningKey.NONE):
        raise EvidenceFormatError(f"KEY_INFO.SIGNING_KEY={key} is reserved (0 VCEK, 1 VLEK, 7 none)")
    return bool(value & 1), bool(value & 2), SigningKey(key)


def _mbz(data: bytes, lo: int, hi: int, what: str) -> None:
    if any(data[lo:hi]):
        raise EvidenceFormatError(
            f"reserved bytes [0x{lo:03X}, 0x{hi:03X}) ({what}) must be zero, found {data[lo:hi].hex()}"
        )


def parse_report(data: bytes) -> SnpReport:
    """Parse a raw 1184-byte SEV-SNP ATTESTATION_REPORT strictly.

    Checks sizes, the version allow list, SIGNATURE_ALGO, every reserved field and bit, and the zero padding of the
    little-endian R/S components; it does not verify the signature or judge any value.

    Raises:
        EvidenceFormatError: naming the offending field, its offset and what was found.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EvidenceFormatError(f"SNP report must be bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) != REPORT_SIZE:
        raise EvidenceFormatError(f"SNP report is {len(raw)} bytes, expected {REPORT_SIZE} (0x4A0)")

    def u32(off: int) -> int:
        v: int = struct.unpack_from("<I", raw, off)[0]
        return v

    def u64(off: int) -> int:
        v: int = struct.unpack_from("<Q", raw, off)[0]
        return v

    version = u32(0x000)
    if version == 4:
        raise EvidenceFormatError(
            "SNP report VERSION 4 is refused: its layout is not documented in a spec revision we can check "
            f"(accepted: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    if version not in SUPPORTED_VERSIONS:
        raise EvidenceFormatError(
            f"SNP report VERSION {version} is not supported (accepted: {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    sig_algo = u32(0x034)
    if sig_algo != SIG_ALGO_ECDSA_P384_SHA384:
        raise EvidenceFormatError(
            f"SIGNATURE_ALGO at 0x034 is {sig_algo}; only 1 (ECDSA P-384 with SHA-384) is defined"
        )
    vmpl = u32(0x030)
    if vmpl > 3:
        raise EvidenceFormatError(f"VMPL at 0x030 is {vmpl}; SEV-SNP defines VMPL 0..3")

    policy = parse_policy(u64(0x008))
    platform_info = parse_platform_info(u64(0x040))
    author_key_en, mask_chip_key, signing_key = parse_key_info(u32(0x048))
    _mbz(raw, 0x04C, 0x050, "after KEY_INFO")

    if version >= 3:
        cpuid: tuple[int | None, int | None, int | None] = (raw[0x188], raw[0x189], raw[0x18A])
        _mbz(raw, 0x18B, 0x1A0, "after CPUID_STEP")
    else:
        cpuid = (None, None, None)
        _mbz(raw, 0x188, 0x1A0, "after REPORTED_TCB (v2 has no CPUID fields)")
    _mbz(raw, 0x1EB, 0x1EC, "after CURRENT_MAJOR")
    _mbz(raw, 0x1EF, 0x1F0, "after COMMITTED_MAJOR")
    if version >= 5:
        launch_mit: int | None = u64(0x1F8)
        current_mit: int | None = u64(0x200)
    else:
        launch_mit = current_mit = None
        _mbz(raw, 0x1F8, 0x208, f"mitigation vectors exist from v5; this is v{version}")
    _mbz(raw, 0x208, SIGNATURE_OFFSET, "before SIGNATURE")

    sig = raw[SIGNATURE_OFFSET:]
    r_field, s_field = sig[:_SIG_COMPONENT], sig[_SIG_COMPONENT : 2 * _SIG_COMPONENT]
    # A P-384 scalar fits in 48 bytes; non-zero padding would make the value ambiguous between parsers.
    _mbz(raw, SIGNATURE_OFFSET + _P384_SCALAR, SIGNATURE_OFFSET + _SIG_COMPONENT, "SIGNATURE.R padding above 48 bytes")
    _mbz(raw, SIGNATURE_OFFSET + _SIG_COMPONENT + _P384_SCALAR, SIGNATURE_OFFSET + 2 * _SIG_COMPONENT,
         "SIGNATURE.S padding above 48 bytes")
    _mbz(raw, SIGNATURE_OFFSET + 2 * _SIG_COMPONENT, REPORT_SIZE, "SIGNATURE reserved tail")

    report = SnpReport(
        raw=raw,
        signed_bytes=raw[:SIGNED_SIZE],
        version=version,
        guest_svn=u32(0x004),
        policy=policy,
        family_id=raw[0x010:0x020],
        image_id=raw[0x020:0x030],
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=raw[0x038:0x040],
        platform_info=platform_info,
        author_key_en=author_key_en,
        mask_chip_key=mask_chip_key,
        signing_key=signing_key,
        report_data=raw[0x050:0x090],
        measurement=raw[0x090:0x0C0],
        host_data=raw[0x0C0:0x0E0],
        id_key_digest=raw[0x0E0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=raw[0x180:0x188],
        cpuid_fam_id=cpuid[0],
        cpuid_mod_id=cpuid[1],
        cpuid_step=cpuid[2],
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=raw[0x1E0:0x1E8],
        current_version=FirmwareVersion(build=raw[0x1E8], minor=raw[0x1E9], major=raw[0x1EA]),
        committed_version=FirmwareVersion(build=raw[0x1EC], minor=raw[0x1ED], major=raw[0x1EE]),
        launch_tcb=raw[0x1F0:0x1F8],
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=int.from_bytes(r_field, "little"),
        signature_s=int.from_bytes(s_field, "little"),
    )
    # When CPUID names the product (v3+), the TCB layout is known now, so reserved TCB bytes are checked at parse
    # time; for v2 the verifier does it once the certificate has named the product.
    product = report.cpuid_product
    if product is not None:
        for which in ("current", "reported", "committed", "launch"):
            report.tcb(which, product)
    return report
