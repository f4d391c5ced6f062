"""TPM 2.0 quotes: TPMS_ATTEST parsing, the RSASSA signature under the vTPM attestation key, the PCR digest.

Hand-parsed, no TSS: the structures are plain big-endian records. References are to the TCG "TPM 2.0 Library,
Part 2: Structures" (revision 1.59; section numbers of that revision, structure names are the stable reference)::

    TPMS_ATTEST (10.12.12)                     TPMS_QUOTE_INFO (10.12.4), the TPMU_ATTEST arm for ATTEST_QUOTE
      magic            UINT32 TPM_GENERATED      pcrSelect  TPML_PCR_SELECTION (10.9.7)
                       = 0xff544347 (6.2)          count    UINT32
      type             TPMI_ST_ATTEST (10.12.10)   pcrSelections[count] TPMS_PCR_SELECTION (10.6.2):
                       = TPM_ST_ATTEST_QUOTE         hash         TPMI_ALG_HASH (UINT16, 6.3)
                         0x8018 (6.9)                sizeofSelect UINT8
      qualifiedSigner  TPM2B_NAME (10.5.3)           pcrSelect    BYTE[sizeofSelect], bit n of byte i = PCR 8i+n
      extraData        TPM2B_DATA (10.4.3)       pcrDigest  TPM2B_DIGEST (10.4.2)
      clockInfo        TPMS_CLOCK_INFO (10.11.1): clock UINT64, resetCount UINT32, restartCount UINT32, safe BYTE
      firmwareVersion  UINT64
      attested         TPMU_ATTEST (10.12.11)

    TPM2B_ATTEST (10.12.13) = size UINT16 || TPMS_ATTEST; a TPM2B_x is always size UINT16 || bytes[size].

    TPMT_SIGNATURE (11.3.4) = sigAlg TPMI_ALG_SIG_SCHEME (UINT16; TPM_ALG_RSASSA = 0x0014)
                              || TPMS_SIGNATURE_RSA (11.3.1): hash TPMI_ALG_HASH || sig TPM2B_PUBLIC_KEY_RSA (11.2.4.5)

The signature is RSASSA-PKCS1-v1_5 over SHA-256 of the exact TPMS_ATTEST bytes (TPM2_Quote, Part 3 18.4), and
pcrDigest is SHA-256 over the selected PCR values concatenated in selection order (each selection's PCRs in
ascending index order, Part 1 "Selecting Multiple PCR"). Imports nothing from ``enclave`` outside ``attestation``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .._bytes import ByteReader
from ..errors import EvidenceFormatError

TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_QUOTE: Final = 0x8018
TPM_ALG_SHA1: Final = 0x0004
TPM_ALG_SHA256: Final = 0x000B
TPM_ALG_SHA384: Final = 0x000C
TPM_ALG_SHA512: Final = 0x000D
TPM_ALG_RSASSA: Final = 0x0014
TPM_ALG_RSAPSS: Final = 0x0016
ALG_NAMES: Final = {
    TPM_ALG_SHA1: "SHA-1", TPM_ALG_SHA256: "SHA-256", TPM_ALG_SHA384: "SHA-384", TPM_ALG_SHA512: "SHA-512",
    TPM_ALG_RSASSA: "RSASSA", TPM_ALG_RSAPSS: "RSAPSS",
}
#: sizeof(TPMU_HA) for the largest hash the spec defines (SHA-512): the bound on TPM2B_DATA and TPM2B_DIGEST.
_MAX_DIGEST: Final = 64
#: TPM2B_NAME holds a TPMU_NAME: a TPMT_HA (alg + digest) or a 4-byte handle.
_MAX_NAME: Final = 2 + _MAX_DIGEST
_MAX_SELECTIONS: Final = 16
_MAX_SIZEOF_SELECT: Final = 8  # 64 PCRs; real TPMs have 24 (3 bytes)


def alg_name(alg: int) -> str:
    return ALG_NAMES.get(alg, f"0x{alg:04x}")


@dataclass(frozen=True, slots=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a bank (hash algorithm) and the PCR indices selected in it, ascending."""

    hash_alg: int
    pcrs: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TpmQuote:
    """A parsed TPM2_Quote result. ``signed`` is the exact TPMS_ATTEST bytes the signature covers."""

    signed: bytes
    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: int
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes

    @property
    def selected(self) -> tuple[tuple[int, int], ...]:
        """(bank, pcr index) in the order the digest covers them."""
        return tuple((s.hash_alg, i) for s in self.selections for i in s.pcrs)

    def selection_text(self) -> str:
        parts = []
        for s in self.selections:
            parts.append(f"{alg_name(s.hash_alg)} {_ranges(s.pcrs)}")
        return "; ".join(parts) or "none"


@dataclass(frozen=True, slots=True)
class TpmSignature:
    """The signature scheme, its hash, and the raw RSA signature bytes."""

    sig_alg: int
    hash_alg: int
    signature: bytes
    #: True when the input was a TPMT_SIGNATURE, False when it was the bare RSA signature (trustee's wire format).
    structured: bool



def parse_quote(message: bytes) -> TpmQuote:
    """Parse a TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE (or a TPM2B_ATTEST wrapping one), strictly.

    Raises:
        EvidenceFormatError: wrong magic or type, a size beyond the spec's bounds, truncation or trailing bytes.
    """
    data = bytes(message)
    if (len(data) >= 6 and int.from_bytes(data[:2], "big") == len(data) - 2
            and int.from_bytes(data[2:6], "big") == TPM_GENERATED_VALUE):
        data = data[2:]  # TPM2B_ATTEST: the signature covers only the TPMS_ATTEST inside
    r = ByteReader(data, "TPMS_ATTEST", order="big")
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise EvidenceFormatError(f"TPMS_ATTEST magic is 0x{magic:08x}, not TPM_GENERATED_VALUE 0xff544347")
    st = r.u16("type")
    if st != TPM_ST_ATTEST_QUOTE:
        raise EvidenceFormatError(f"TPMS_ATTEST type is 0x{st:04x}, not TPM_ST_ATTEST_QUOTE 0x8018")
    signer = r.sized("qualifiedSigner", _MAX_NAME)
    extra = r.sized("extraData", _MAX_DIGEST)
    clock = r.u64("clockInfo.clock")
    reset_count = r.u32("clockInfo.resetCount")
    restart_count = r.u32("clockInfo.restartCount")
    safe = r.u8("clockInfo.safe")
    if safe not in (0, 1):
        raise EvidenceFormatError(f"TPMS_CLOCK_INFO.safe is {safe}, not a TPMI_YES_NO")
    firmware = r.u64("firmwareVersion")
    count = r.u32("pcrSelect.count")
    if count > _MAX_SELECTIONS:
        raise EvidenceFormatError(f"TPML_PCR_SELECTION.count is {count}, more than {_MAX_SELECTIONS}")
    selections = []
    for n in range(count):
        alg = r.u16(f"pcrSelections[{n}].hash")
        size = r.u8(f"pcrSelections[{n}].sizeofSelect")
        if size > _MAX_SIZEOF_SELECT:
            raise EvidenceFormatError(f"TPMS_PCR_SELECTION.sizeofSelect is {size}, more than {_MAX_SIZEOF_SELECT}")
        bitmap = r.take(size, f"pcrSelections[{n}].pcrSelect")
        pcrs = tuple(8 * i + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1)
        selections.append(PcrSelection(alg, pcrs))
    digest = r.sized("pcrDigest", _MAX_DIGEST)
    r.done()
    return TpmQuote(
        signed=data, magic=magic, type=st, qualified_signer=signer, extra_data=extra, clock=clock,
        reset_count=reset_count, restart_count=restart_count, safe=safe, firmware_version=firmware,
        selections=tuple(selections), pcr_digest=digest,
    )


def parse_signature(signature: bytes, key: rsa.RSAPublicKey) -> TpmSignature:
    """A TPMT_SIGNATURE, or the bare RSA signature (exactly the modulus size, as trustee's evidence carries it).

    Raises:
        EvidenceFormatError: neither form, or a TPMT_SIGNATURE with trailing bytes.
    """
    data = bytes(signature)
    modulus_bytes = (key.key_size + 7) // 8
    if len(data) == modulus_bytes:
        return TpmSignature(TPM_ALG_RSASSA, TPM_ALG_SHA256, data, structured=False)
    r = ByteReader(data, "TPMT_SIGNATURE", order="big")
    sig_alg = r.u16("sigAlg")
    if sig_alg not in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
        raise EvidenceFormatError(
            f"signature is {len(data)} bytes: neither a {modulus_bytes}-byte RSA signature nor an RSA "
            f"TPMT_SIGNATURE (sigAlg 0x{sig_alg:04x})"
        )
    hash_alg = r.u16("signature.hash")
    sig = r.sized("signature.sig", 512)
    r.done()
    return TpmSignature(sig_alg, hash_alg, sig, structured=True)


def verify_signature(quote: TpmQuote, sig: TpmSignature, key: rsa.RSAPublicKey) -> str | None:
    """None if ``sig`` is a valid RSASSA-PKCS1-v1_5 / SHA-256 signature over the TPMS_ATTEST, else why not."""
    if sig.sig_alg != TPM_ALG_RSASSA or sig.hash_alg != TPM_ALG_SHA256:
        return (f"signature scheme {alg_name(sig.sig_alg)}/{alg_name(sig.hash_alg)} is not "
                "RSASSA/SHA-256 (the vTPM AK's scheme)")
    if len(sig.signature) != (key.key_size + 7) // 8:
        return f"signature is {len(sig.signature)} bytes, the AK modulus is {(key.key_size + 7) // 8}"
    try:
        key.verify(sig.signature, quote.signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return "invalid signature under the attestation key"
    return None


def pcr_digest(quote: TpmQuote, pcrs: dict[int, bytes]) -> tuple[bytes | None, str | None]:
    """(SHA-256 over the selected PCR values in selection order, None), or (None, why it cannot be computed).

    Only the SHA-256 bank can be recomputed from ``pcrs`` (index -> 32-byte SHA-256 PCR value).
    """
    h = hashlib.sha256()
    missing = []
    for alg, index in quote.selected:
        if alg != TPM_ALG_SHA256:
            return None, f"the quote selects PCRs of the {alg_name(alg)} bank; only SHA-256 values are supplied"
        value = pcrs.get(index)
        if value is None:
            missing.append(index)
            continue
        if len(value) != 32:
            return None, f"PCR{index} value is {len(value)} bytes, not 32 (SHA-256 bank)"
        h.update(value)
    if missing:
        return None, f"no value supplied for selected PCRs {_ranges(tuple(missing))}"
    return h.digest(), None


def digest_matches(quote: TpmQuote, pcrs: dict[int, bytes]) -> tuple[bool, str]:
    """(pcrDigest == recomputed digest, detail)."""
    got, why = pcr_digest(quote, pcrs)
    if got is None:
        return False, why or ""
    if not quote.selected:
        return False, "the quote selects no PCRs"
    ok = hmac.compare_digest(got, quote.pcr_digest)
    return ok, "" if ok else f"recomputed {got.hex()}: the supplied PCR values are not the quoted ones"


def _ranges(indices: tuple[int, ...]) -> str:
    """(0, 1, 2, 3, 7) -> 'PCR0-3,7'."""
    if not indices:
        return "no PCRs"
    out = []
    start = prev = indices[0]
    for i in indices[1:] + (-1,):
        if i == prev + 1:
            prev = i
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = i
    return "PCR" + ",".join(out)
