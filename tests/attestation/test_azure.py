"""Azure confidential VMs (HCL report + vTPM quote) against the real samples in ``$VEIL_SHARED_DATA/evidence``.

Each sample is verified end to end at a pinned time, with the result its SOURCE.md documents, then tampered with:
every tamper must fail at the check that guards it, and only there.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import struct
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from enclave.attestation.azure.verify import (
    AzureCvmEvidence,
    load_tpm_quote,
    load_trustee_evidence,
    PLATFORM_SNP,
    PLATFORM_TDX,
    verify_azure_cvm,
)
from enclave.attestation.azure import AzurePolicy
from enclave.attestation.azure.hcl import parse_hcl_report
from enclave.attestation.azure.tpm import parse_quote as parse_tpm_quote
from enclave.attestation.azure.tpm import TPM_ALG_RSAPSS, TPM_ALG_RSASSA, TPM_ALG_SHA1, TPM_ALG_SHA256
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.snp.policy import SnpPolicy
from enclave.attestation.tdx.policy import TdxPolicy
from enclave.attestation.result import Verdict

# AMD KDS issues VCEKs with serial number 0; cryptography 50 warns (see test_snp.test_serial_zero_warning...).
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)  # inside every Azure VCEK's validity
CHALLENGE = b"challenge"
V2_NONCE = bytes.fromhex("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a"
                         "a398f647caa2338748cd0fd9f5f819ef")
GENOA_NONCE = bytes.fromhex("0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938c"
                            "a05475f8b46094de6b64270ea35d950f")  # spelled out in full in its SOURCE.md
#: Launch measurements of the Azure paravisor (HCL) firmware: the SNP measurements test_snp pins for these reports.
SNP_MEASUREMENTS = {
    "milan-v2": "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315",
    "milan-vtpm-v1": "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e",
    "milan-vtpm-v2": "5b0ce64ad1c1f6375dbda5f760b98526ca1bcf91b8195091afc28e7b024251d68fe32e05af34048d6607678cd23283ff",
    "genoa": "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae",
}
TDX_MRTD = "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b"
#: PCR0 prefixes as the SOURCE.md files document them.
DOCUMENTED_PCR0 = {"milan-v2": "f3a7e99a", "milan-vtpm-v1": "e15c4479", "milan-vtpm-v2": "84275b2f",
                   "genoa": "afd689d0"}
NONCES = {"milan-v2": CHALLENGE, "milan-vtpm-v1": CHALLENGE, "milan-vtpm-v2": V2_NONCE, "genoa": GENOA_NONCE,
          "tdx": CHALLENGE}
SNP_SAMPLES = ["milan-v2", "milan-vtpm-v1", "milan-vtpm-v2", "genoa"]
RUNTIME_BINDING = {PLATFORM_SNP: "runtime data binding (SNP REPORT_DATA)",
                   PLATFORM_TDX: "runtime data binding (TD quote REPORTDATA)"}
SNP_CHECKS = [
    "SNP: parse", "SNP: ARK pinned", "SNP: certificate chain", "SNP: certificate validity", "SNP: signing key",
    "SNP: product", "SNP: report signature", "SNP: TCB binding", "SNP: chip binding", "SNP: debug",
    "SNP: migration agent", "SNP: VMPL", "SNP: minimum TCB", "SNP: measurement",
]
TPM_CHECKS = ["vTPM attestation key", "TPM quote signature", "PCR digest", "TPM nonce binding", "PCR policy"]


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    ev: AzureCvmEvidence

    def pcr_policy(self) -> AzurePolicy:
        # The boot chain (firmware, secure boot state, boot loader) plus PCR11 (unified kernel image on Linux).
        return AzurePolicy(pcrs=({i: self.ev.pcrs[i] for i in (0, 1, 2, 3, 4, 5, 6, 7, 11)},))

    def verify(self, *, policy: AzurePolicy | None = None, nonce: bytes | None | str = "sample",
               snp_policy: SnpPolicy | None = None, **changes: object) -> Verdict:
        ev = dataclasses.replace(self.ev, **changes)  # type: ignore[arg-type]
        expected = NONCES[self.name] if nonce == "sample" else nonce
        assert expected is None or isinstance(expected, bytes)
        if snp_policy is None and self.name in SNP_MEASUREMENTS:
            snp_policy = SnpPolicy(measurements=(bytes.fromhex(SNP_MEASUREMENTS[self.name]),))
        return verify_azure_cvm(
            ev.hcl_report, ev.tpm_quote, ev.tpm_signature, ev.pcrs, ev.certs, ev.collateral,
            policy or self.pcr_policy(), now=NOW, expected_nonce=expected, td_quote=ev.td_quote,
            snp_policy=snp_policy, tdx_policy=TdxPolicy(measurements=({"mrtd": bytes.fromhex(TDX_MRTD)},)),
        )


@pytest.fixture(scope="session")
def samples(evidence_dir: Path) -> dict[str, Sample]:
    snp, roots = evidence_dir / "sev-snp", evidence_dir / "roots"
    milan_chain = (roots / "amd_milan_ask_ark.pem").read_text()
    out: dict[str, Sample] = {}
    d = snp / "milan-vcek-v2-azure-trustee"
    message, signature, pcrs = load_tpm_quote((d / "tpm_quote.json").read_text())
    out["milan-v2"] = Sample("milan-v2", AzureCvmEvidence(
        tee=PLATFORM_SNP, hcl_report=(d / "hcl_report.bin").read_bytes(), tpm_quote=message,
        tpm_signature=signature, pcrs=pcrs, certs={"vcek": (d / "vcek_ask_ark.pem").read_text()}))
    d = snp / "milan-vcek-v3-azure-vtpm-trustee"
    for v in ("v1", "v2"):
        ev = load_trustee_evidence((d / f"evidence-{v}.json").read_text(), amd_chain_pem=milan_chain)
        assert ev.version == int(v[1]) and ev.tee == PLATFORM_SNP
        out[f"milan-vtpm-{v}"] = Sample(f"milan-vtpm-{v}", ev)
    d = snp / "genoa-vcek-v3-azure-trustee"
    ev = load_trustee_evidence((d / "evidence-genoa.json").read_bytes(), amd_chain_pem=(d / "ask_ark.pem").read_text())
    assert ev.hcl_report == (d / "hcl_report.bin").read_bytes()  # the same HCL report, as a JSON byte array
    assert ev.certs["vcek"] == (d / "vcek.pem").read_text()
    out["genoa"] = Sample("genoa", ev)
    ev = load_trustee_evidence((evidence_dir / "tdx" / "quote-v4-azure-vtpm-trustee" / "evidence-v1.json").read_text())
    assert ev.tee == PLATFORM_TDX and ev.td_quote is not None and len(ev.td_quote) == 5006 and ev.certs == {}
    out["tdx"] = Sample("tdx", ev)
    return out


@pytest.fixture(scope="session")
def tdx_collateral(evidence_dir: Path) -> Callable[[str], str]:
    def load(fmspc: str) -> str:
        return (evidence_dir / "tdx" / "collateral-intel-pcs-2026-01-tinfoil"
                / f"dcap-qvl_collateral_fmspc_{fmspc}.json").read_text()
    return load


def failed(v: Verdict) -> set[str]:
    return {c.name for c in v.checks if c.ok is not True}


def check(v: Verdict, name: str) -> tuple[bool | None, str, str]:
    (c,) = [c for c in v.checks if c.name == name]
    return c.ok, c.found, c.detail


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# --- parsing ------------------------------------------------------------------------------------------------------


def test_hcl_reports_parse_as_documented(samples: dict[str, Sample], evidence_dir: Path) -> None:
    # (HCL version, report type, runtime JSON bytes) as the SOURCE.md files and the bytes themselves say.
    want = {"milan-v2": (1, "SNP", 1110), "milan-vtpm-v1": (1, "SNP", 1110), "milan-vtpm-v2": (1, "SNP", 1110),
            "genoa": (2, "SNP", 1200), "tdx": (2, "TDX", 1201)}
    for name, (version, kind, size) in want.items():
        hcl = parse_hcl_report(samples[name].ev.hcl_report)
        assert (hcl.version, hcl.type_name, len(hcl.runtime_data)) == (version, kind, size), name
        assert len(hcl.raw) == 2600 and hcl.hash_name == "sha256"
        assert hcl.runtime_data == hcl.raw[0x4D4 : 0x4D4 + size]
        assert hcl.ak_public_key().key_size == 2048
        # REPORT_DATA[0:32] = SHA-256(runtime JSON), [32:64] zero, in every sample (SNP report and TD report alike)
        assert hcl.hw_report_data == hashlib.sha256(hcl.runtime_data).digest() + bytes(32), name
        assert hcl.expected_report_data() == hcl.hw_report_data
    for d in ("milan-vcek-v2-azure-trustee", "genoa-vcek-v3-azure-trustee"):
        raw = (evidence_dir / "sev-snp" / d / "hcl_report.bin").read_bytes()
        assert parse_hcl_report(raw).snp_report == (evidence_dir / "sev-snp" / d / "report.bin").read_bytes()
    assert parse_hcl_report(samples["tdx"].ev.hcl_report).vm_configuration["vmUniqueId"].startswith("6332533D")


def test_hcl_user_data(samples: dict[str, Sample]) -> None:
    for name in ("milan-v2", "milan-vtpm-v1", "genoa", "tdx"):
        assert parse_hcl_report(samples[name].ev.hcl_report).user_data == bytes(64), name
    # evidence-v2 carries the TPM nonce in the HCL user-data too: the 48 bytes, then 16 zero bytes
    assert parse_hcl_report(samples["milan-vtpm-v2"].ev.hcl_report).user_data == V2_NONCE + bytes(16)
    assert V2_NONCE.hex().startswith("982f5c6e") and V2_NONCE.hex().endswith("f5f819ef")


def test_tpm_quotes_parse_as_documented(samples: dict[str, Sample]) -> None:
    for name, s in samples.items():
        q = parse_tpm_quote(s.ev.tpm_quote)
        assert (q.magic, q.type) == (0xFF544347, 0x8018)
        assert q.extra_data == NONCES[name], name
        assert q.selected == tuple((TPM_ALG_SHA256, i) for i in range(24))
        assert q.selection_text() == "SHA-256 PCR0-23"
        assert len(q.pcr_digest) == 32 and len(q.qualified_signer) == 34  # TPM_ALG_SHA256 name of the AK
        assert len(s.ev.tpm_signature) == 256 and len(s.ev.pcrs) == 24
        if name in DOCUMENTED_PCR0:
            assert s.ev.pcrs[0].hex().startswith(DOCUMENTED_PCR0[name]), name


# --- every real sample ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SNP_SAMPLES)
def test_snp_cvm_passes_end_to_end(samples: dict[str, Sample], name: str) -> None:
    v = samples[name].verify()
    assert v.ok, v.document()
    assert [c.name for c in v.checks] == (
        ["HCL report"] + SNP_CHECKS + [RUNTIME_BINDING[PLATFORM_SNP]] + TPM_CHECKS)
    assert v.platform == PLATFORM_SNP and v.claims["hardware"] == "sev-snp"
    assert v.measurement == bytes.fromhex(SNP_MEASUREMENTS[name])
    hcl = parse_hcl_report(samples[name].ev.hcl_report)
    assert v.report_data == hashlib.sha256(hcl.runtime_data).digest() + bytes(32)
    assert v.claims["tpm"]["nonce"] == NONCES[name].hex()
    assert v.claims["tpm"]["pcr_selection"] == "SHA-256 PCR0-23"
    assert v.claims["sev-snp"]["product"] == ("Genoa" if name == "genoa" else "Milan")
    json.dumps(v.to_json())
    assert v.document().endswith("RESULT: PASS")


def test_v2_nonce_is_also_in_hcl_user_data(samples: dict[str, Sample]) -> None:
    v = samples["milan-vtpm-v2"].verify()
    assert v.ok
    assert check(v, "TPM nonce binding")[2] == "also in the HCL runtime user-data (bound by the hardware report)"
    assert v.claims["hcl_user_data"] == (V2_NONCE + bytes(16)).hex()
    assert check(samples["milan-vtpm-v1"].verify(), "TPM nonce binding")[2] == ""


def test_tdx_cvm_binding_and_tpm_pass_dcap_fails_closed(samples: dict[str, Sample]) -> None:
    v = samples["tdx"].verify()
    assert not v.ok
    assert failed(v) == {"TDX: DCAP verification"}
    ok, found, detail = check(v, "TDX: DCAP verification")
    assert ok is False and found == "collateral unavailable" and "fail closed" in detail
    assert [c.name for c in v.checks] == ["HCL report", "TDX: DCAP verification", RUNTIME_BINDING[PLATFORM_TDX],
                                          "TDX: TD report matches the quote"] + TPM_CHECKS
    assert v.platform == PLATFORM_TDX and v.measurement == bytes.fromhex(TDX_MRTD)
    assert v.claims["tdx"]["mrtd"] == TDX_MRTD


def test_tdx_cvm_with_other_platforms_collateral_still_fails(
    samples: dict[str, Sample], tdx_collateral: Callable[[str], str]
) -> None:
    """The shared collateral is for FMSPC 90c06f000000, this quote's PCK for 00806f050000: verify_tdx runs, says no."""
    s = samples["tdx"]
    v = s.verify(collateral=tdx_collateral("90c06f000000"))
    assert not v.ok
    ok, _, detail = check(v, "TDX: collateral")
    assert ok is False and "00806f050000" in detail
    assert check(v, RUNTIME_BINDING[PLATFORM_TDX])[0] is True
    assert all(check(v, n)[0] is True for n in TPM_CHECKS)


def test_tdx_cvm_without_td_quote_fails(samples: dict[str, Sample]) -> None:
    v = samples["tdx"].verify(td_quote=None)
    assert failed(v) == {"TDX: TD quote"}


def test_td_quote_of_another_td_report_fails(samples: dict[str, Sample]) -> None:
    s = samples["tdx"]
    assert s.ev.td_quote is not None
    # RTMR3 in the quote body (header 48 + body offset 472..520), unsigned without collateral but still compared
    v = s.verify(td_quote=flip(s.ev.td_quote, 48 + 472))
    assert failed(v) == {"TDX: DCAP verification", "TDX: TD report matches the quote"}
    assert "rtmr3" in check(v, "TDX: TD report matches the quote")[1]


def test_snp_without_certificates_fails_closed(samples: dict[str, Sample]) -> None:
    v = samples["milan-vtpm-v1"].verify(certs={})
    assert "SNP: signing key" in failed(v) and not v.ok
    assert all(check(v, n)[0] is True for n in TPM_CHECKS)


# --- policy --------------------------------------------------------------------------------------------------------


def test_paravisor_measurement_is_judged_by_the_snp_policy(samples: dict[str, Sample]) -> None:
    s = samples["milan-vtpm-v1"]
    other = SnpPolicy(measurements=(bytes.fromhex(SNP_MEASUREMENTS["milan-vtpm-v2"]),))
    assert failed(s.verify(snp_policy=other)) == {"SNP: measurement"}
    # no snp_policy at all: the default allow list is empty and accepts nothing
    v = verify_azure_cvm(s.ev.hcl_report, s.ev.tpm_quote, s.ev.tpm_signature, s.ev.pcrs, s.ev.certs, None,
                         s.pcr_policy(), now=NOW, expected_nonce=CHALLENGE)
    assert failed(v) == {"SNP: measurement"}


@pytest.mark.parametrize("name", SNP_SAMPLES)
def test_empty_pcr_allow_list_fails_closed(samples: dict[str, Sample], name: str) -> None:
    v = samples[name].verify(policy=AzurePolicy())
    assert failed(v) == {"PCR policy"}
    assert "the list is empty: nothing is accepted" in v.document()


def test_any_measurement_accepts_any_pcrs_and_says_so(samples: dict[str, Sample]) -> None:
    v = samples["milan-vtpm-v1"].verify(policy=AzurePolicy(any_measurement=True))
    assert v.ok
    assert "NOT pinned" in check(v, "PCR policy")[2]


def test_pcr_allow_list_of_another_vm_fails(samples: dict[str, Sample]) -> None:
    v1, v2 = samples["milan-vtpm-v1"], samples["milan-vtpm-v2"]
    v = v1.verify(policy=v2.pcr_policy())
    assert failed(v) == {"PCR policy"}
    # a second entry that matches is enough
    both = AzurePolicy(pcrs=v2.pcr_policy().pcrs + v1.pcr_policy().pcrs)
    ok, _, detail = check(v1.verify(policy=both), "PCR policy")
    assert ok is True and detail.startswith("matches entry 1")


# --- tampering -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["milan-vtpm-v2", "tdx"])
def test_tampered_tpm_quote_fails_signature(samples: dict[str, Sample], name: str) -> None:
    s = samples[name]
    base = failed(s.verify())
    clock = 6 + 2 + 34 + 2 + len(NONCES[name])  # magic, type, qualifiedSigner, extraData -> clockInfo.clock
    v = s.verify(tpm_quote=flip(s.ev.tpm_quote, clock + 7))
    assert failed(v) - base == {"TPM quote signature"}
    # the nonce is signed: change it and both the signature and the nonce check fail
    v = s.verify(tpm_quote=flip(s.ev.tpm_quote, 6 + 2 + 34 + 2))
    assert failed(v) - base == {"TPM quote signature", "TPM nonce binding"}
    # the pcrDigest is signed too
    v = s.verify(tpm_quote=flip(s.ev.tpm_quote, len(s.ev.tpm_quote) - 1))
    assert failed(v) - base == {"TPM quote signature", "PCR digest"}


@pytest.mark.parametrize("name", ["milan-v2", "milan-vtpm-v1", "genoa", "tdx"])
@pytest.mark.parametrize("offset", [0, 128, 255])
def test_tampered_tpm_signature_fails(samples: dict[str, Sample], name: str, offset: int) -> None:
    s = samples[name]
    base = failed(s.verify())
    v = s.verify(tpm_signature=flip(s.ev.tpm_signature, offset))
    assert failed(v) - base == {"TPM quote signature"}


@pytest.mark.parametrize("name", ["milan-v2", "milan-vtpm-v2", "tdx"])
@pytest.mark.parametrize("pcr", [0, 5, 23])
def test_tampered_pcr_value_fails_digest(samples: dict[str, Sample], name: str, pcr: int) -> None:
    s = samples[name]
    base = failed(s.verify())
    pcrs = dict(s.ev.pcrs)
    pcrs[pcr] = flip(pcrs[pcr], 31)
    v = s.verify(pcrs=pcrs)
    expected = {"PCR digest"} | ({"PCR policy"} if pcr in (0, 5) else set())  # 0 and 5 are pinned
    assert failed(v) - base == expected
    missing = {i: p for i, p in s.ev.pcrs.items() if i != 23}
    v = s.verify(pcrs=missing)
    assert failed(v) - base == {"PCR digest"}
    assert "no value supplied for selected PCRs PCR23" in check(v, "PCR digest")[2]


@pytest.mark.parametrize("name", ["milan-v2", "milan-vtpm-v2", "genoa", "tdx"])
def test_tampered_runtime_json_breaks_report_data(samples: dict[str, Sample], name: str) -> None:
    s = samples[name]
    hcl = s.ev.hcl_report
    runtime = parse_hcl_report(hcl).runtime_data
    at = 0x4D4 + runtime.index(b'"vmUniqueId":"') + len(b'"vmUniqueId":"')  # a hex digit of the VM id
    tampered = flip(hcl, at, 0x01)
    parse_hcl_report(tampered)  # still well-formed JSON
    base = failed(s.verify())
    v = s.verify(hcl_report=tampered)
    binding = RUNTIME_BINDING[PLATFORM_TDX if name == "tdx" else PLATFORM_SNP]
    assert failed(v) - base == {binding}
    assert "does not bind this HCL runtime data" in check(v, binding)[2]


def test_tampered_attestation_key_fails_binding_and_signature(samples: dict[str, Sample]) -> None:
    s = samples["milan-vtpm-v1"]
    runtime = parse_hcl_report(s.ev.hcl_report).runtime_data
    at = 0x4D4 + runtime.index(b'"n":"') + len(b'"n":"') + 20  # inside HCLAkPub's modulus
    v = s.verify(hcl_report=flip(s.ev.hcl_report, at, 0x02))
    assert failed(v) == {RUNTIME_BINDING[PLATFORM_SNP], "TPM quote signature"}


@pytest.mark.parametrize("offset", [0x90, 0x1A0, 0x2A0 + 5])  # MEASUREMENT, CHIP_ID, signature R
def test_tampered_snp_report_fails(samples: dict[str, Sample], offset: int) -> None:
    s = samples["milan-vtpm-v2"]
    v = s.verify(hcl_report=flip(s.ev.hcl_report, 0x20 + offset))
    assert "SNP: report signature" in failed(v)
    assert not v.ok


@pytest.mark.parametrize("name", ["milan-v2", "milan-vtpm-v2", "genoa", "tdx"])
def test_wrong_nonce_fails(samples: dict[str, Sample], name: str) -> None:
    s = samples[name]
    base = failed(s.verify())
    v = s.verify(nonce=b"challengf")
    assert failed(v) - base == {"TPM nonce binding"}
    assert failed(s.verify(nonce=NONCES[name] + b"\0")) - base == {"TPM nonce binding"}
    assert failed(s.verify(nonce=b"")) - base == {"TPM nonce binding"}


def test_no_binding_passes_and_says_so(samples: dict[str, Sample]) -> None:
    v = samples["milan-vtpm-v1"].verify(nonce=None)
    assert v.ok
    assert check(v, "TPM nonce binding")[2] == "binding skipped (--no-binding)"


# --- signature and quote encodings ---------------------------------------------------------------------------------


def tpmt_signature(sig: bytes, sig_alg: int = TPM_ALG_RSASSA, hash_alg: int = TPM_ALG_SHA256) -> bytes:
    return struct.pack(">HHH", sig_alg, hash_alg, len(sig)) + sig


def test_tpmt_signature_and_tpm2b_attest_forms(samples: dict[str, Sample]) -> None:
    s = samples["milan-vtpm-v1"]
    v = s.verify(tpm_signature=tpmt_signature(s.ev.tpm_signature),
                 tpm_quote=struct.pack(">H", len(s.ev.tpm_quote)) + s.ev.tpm_quote)
    assert v.ok, v.document()
    assert "TPMT_SIGNATURE" in check(v, "TPM quote signature")[2]
    for alg, hash_alg in ((TPM_ALG_RSASSA, TPM_ALG_SHA1), (TPM_ALG_RSAPSS, TPM_ALG_SHA256)):
        v = s.verify(tpm_signature=tpmt_signature(s.ev.tpm_signature, alg, hash_alg))
        assert failed(v) == {"TPM quote signature"}
        assert "is not RSASSA/SHA-256" in check(v, "TPM quote signature")[2]


def test_malformed_evidence_raises(samples: dict[str, Sample]) -> None:
    s = samples["milan-vtpm-v1"]
    q = s.ev.tpm_quote
    with pytest.raises(EvidenceFormatError, match="magic"):
        s.verify(tpm_quote=flip(q, 0))
    with pytest.raises(EvidenceFormatError, match="TPM_ST_ATTEST_QUOTE"):
        s.verify(tpm_quote=flip(q, 5))
    with pytest.raises(EvidenceFormatError, match="truncated"):
        s.verify(tpm_quote=q[:-1])
    with pytest.raises(EvidenceFormatError, match="trailing"):
        s.verify(tpm_quote=q + b"\0")
    with pytest.raises(EvidenceFormatError, match="extraData is 65535 bytes, more than the 64"):
        s.verify(tpm_quote=q[:42] + b"\xff\xff" + q[44:])  # TPM2B_DATA size after magic, type, 34-byte name
    with pytest.raises(EvidenceFormatError, match="HCLA"):
        s.verify(hcl_report=flip(s.ev.hcl_report, 0))
    with pytest.raises(EvidenceFormatError, match="report_size"):
        s.verify(hcl_report=flip(s.ev.hcl_report, 8))
    with pytest.raises(EvidenceFormatError, match="not SNP"):
        s.verify(hcl_report=flip(s.ev.hcl_report, 0x4C8, 0x07))
    with pytest.raises(EvidenceFormatError, match="signature is 255 bytes"):
        s.verify(tpm_signature=s.ev.tpm_signature[:-1])
    with pytest.raises(ValueError, match="timezone"):
        verify_azure_cvm(s.ev.hcl_report, q, s.ev.tpm_signature, s.ev.pcrs, s.ev.certs, None, AzurePolicy(),
                         now=datetime.datetime(2025, 6, 1), expected_nonce=None)


def test_loader_rejects_other_shapes(samples: dict[str, Sample]) -> None:
    with pytest.raises(EvidenceFormatError, match="not az-snp-vtpm"):
        load_trustee_evidence('{"version": 1, "hcl_report": "", "tpm_quote": {}, "vcek": "", "extra": 1}')
    with pytest.raises(EvidenceFormatError, match="version"):
        load_trustee_evidence({"version": 3, "hcl_report": "SENMQQ", "tpm_quote": {}})
    with pytest.raises(EvidenceFormatError, match="message, signature, pcrs"):
        load_tpm_quote({"message": "ff", "signature": "00"})
    with pytest.raises(EvidenceFormatError, match="not hex"):
        load_tpm_quote({"message": "zz", "signature": "00", "pcrs": []})


# --- TOML -------------------------------------------------------------------------------------------------------------


def test_azure_policy_from_toml(samples: dict[str, Sample]) -> None:
    pcr0 = samples["milan-vtpm-v1"].ev.pcrs[0].hex()
    data = tomllib.loads(f'[azure]\npcrs = [{{ 0 = "{pcr0}", 7 = "{"00" * 32}" }}]\n')
    p = AzurePolicy.from_dict(data["azure"])
    assert p == AzurePolicy(pcrs=({0: bytes.fromhex(pcr0), 7: bytes(32)},))
    assert AzurePolicy.from_dict({}) == AzurePolicy()
    for bad, match in (({"pcr": []}, "unknown keys"), ({"any_measurement": True}, "unknown keys"),
                       ({"pcrs": [{"24": "00" * 32}]}, "not 0..23"), ({"pcrs": [{"0": "00" * 31}]}, "31 bytes"),
                       ({"pcrs": [{"0": "xyz"}]}, "not hex"), ({"pcrs": [{}]}, "non-empty"),
                       ({"pcrs": {"0": "00"}}, "list")):
        with pytest.raises(EvidenceFormatError, match=match):
            AzurePolicy.from_dict(bad)
