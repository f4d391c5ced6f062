"""SEV-SNP verifier against the real samples in ``$VEIL_SHARED_DATA/evidence/sev-snp`` (never copied here).

Every sample is verified at a pinned time with a policy whose allow list holds that sample's real measurement
(hard-coded below, cross-checked against the prefixes its SOURCE.md documents), then tampered with.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.policy import Policy
from enclave.attestation.snp.policy import SnpPolicy
from enclave.attestation.result import Verdict
from enclave.attestation.snp.certs import ARK_SHA256_GENOA, ARK_SHA256_MILAN, ARK_SHA256_TURIN
from enclave.attestation.snp import decode_tcb, parse_report, Product, SigningKey
from enclave.attestation.snp.verify import verify_snp, verify_snp_certs
from enclave.attestation.snp.certs import parse_extensions

# AMD KDS issues VCEK/VLEK certificates with serial number 0; cryptography 50 warns (see test_serial_zero_warning).
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)  # inside every sample's validity, incl. the AWS VLEK's year
EVERY_CHECK = [
    "parse", "ARK pinned", "certificate chain", "certificate validity", "signing key", "product", "report signature",
    "TCB binding", "chip binding", "debug", "migration agent", "VMPL", "minimum TCB", "measurement",
    "REPORT_DATA binding",
]

MEASUREMENTS = {
    "milan-vcek-v2-virtee":
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
    "milan-vcek-v2-trustee":
        "a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c",
    "milan-vcek-v2-debug-gsg":
        "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
    "milan-vlek-v3-aws-trustee":
        "8922ebbdd00ec2c541f36a6e7a82a8773a7accb451ed67bc94e740dbe92c93c4e8c9af857f5ceeb5a493df2a570d7bf0",
    "genoa-vcek-v3-azure-trustee":
        "f57dc09a507c6ecd82369bffb600f0003792f4d99bc26e985ec0c266fc34faf3706faf814c9e61065768a6ff917c89ae",
    "milan-vcek-v2-azure-trustee":
        "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315",
    "genoa-vcek-v3-kbs-json-trustee":
        "6a6519d757e68c2e939c9dbbbc1828498e8de35d2766dd05f1a2cca5059d0cf4ae62a36d75c837974dd50b315506e73e",
    "milan-vcek-v3-azure-vtpm-trustee/evidence-v1.json":
        "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e",
    "milan-vcek-v3-azure-vtpm-trustee/evidence-v2.json":
        "5b0ce64ad1c1f6375dbda5f760b98526ca1bcf91b8195091afc28e7b024251d68fe32e05af34048d6607678cd23283ff",
    "genoa-v3-tinfoil-no-vcek":
        "2dedaee13b84dc618efc73f685b16de46826380a2dd45df15da3dd8badbc9822cadf7bfc7595912c4517ba6fab1b52c0",
}
#: Prefixes as SOURCE.md documents them, so the constants above are not just read back from the files.
DOCUMENTED_MEASUREMENT_PREFIX = {
    "milan-vcek-v2-virtee": "7a1e5c26", "milan-vcek-v2-trustee": "a1f39304", "milan-vcek-v2-debug-gsg": "b07af962",
    "genoa-vcek-v3-azure-trustee": "f57dc09a", "genoa-vcek-v3-kbs-json-trustee": "6a6519d757e68c2e",
    "genoa-v3-tinfoil-no-vcek": "2dedaee1",
}


# --- loading samples ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    report: bytes
    certs: dict[str, str]
    expected_report_data: bytes
    vmpl: tuple[int, ...] = (0,)

    def policy(self, **changes: object) -> SnpPolicy:
        base = SnpPolicy(measurements=(bytes.fromhex(MEASUREMENTS[self.name]),), vmpl=self.vmpl)
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    def verify(self, *, now: datetime.datetime = NOW, policy: SnpPolicy | None = None,
               report: bytes | None = None, certs: dict[str, str] | None = None,
               expected_report_data: bytes | None | str = "sample") -> Verdict:
        erd = self.expected_report_data if expected_report_data == "sample" else expected_report_data
        assert erd is None or isinstance(erd, bytes)
        return verify_snp(report if report is not None else self.report,
                          certs if certs is not None else self.certs,
                          policy or self.policy(), now=now, expected_report_data=erd)


def der_to_pem(der: bytes) -> str:
    return ssl.DER_cert_to_PEM_cert(der)


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hcl_parts(hcl: bytes) -> tuple[bytes, bytes]:
    """(SNP report, runtime JSON) from an Azure HCL report: magic "HCLA", SNP report at 0x20, IGVM request header
    (data_size, version, report_type, hash_type, variable_data_size; u32 each) at 0x4C0, runtime JSON after it."""
    assert hcl[:4] == b"HCLA"
    report = hcl[0x20 : 0x20 + 1184]
    _size, _version, report_type, hash_type, var_size = struct.unpack_from("<5I", hcl, 0x4C0)
    assert (report_type, hash_type) == (2, 1)  # SNP, SHA-256
    return report, hcl[0x4D4 : 0x4D4 + var_size]


def azure_binding(runtime_json: bytes) -> bytes:
    """Azure puts SHA-256(runtime JSON) in REPORT_DATA[0:32] and zeros after it."""
    return hashlib.sha256(runtime_json).digest() + bytes(32)


@pytest.fixture(scope="session")
def snp_dir(evidence_dir: Path) -> Path:
    return evidence_dir / "sev-snp"


@pytest.fixture(scope="session")
def roots_dir(evidence_dir: Path) -> Path:
    return evidence_dir / "roots"


@pytest.fixture(scope="session")
def samples(snp_dir: Path, roots_dir: Path) -> dict[str, Sample]:
    out: dict[str, Sample] = {}

    def raw(name: str, certs: dict[str, str], binding: bytes | None = None, vmpl: tuple[int, ...] = (0,)) -> None:
        report = (snp_dir / name / "report.bin").read_bytes()
        out[name] = Sample(name, report, certs, binding if binding is not None else report[0x50:0x90], vmpl)

    d = snp_dir / "milan-vcek-v2-virtee"
    raw(d.name, {"vcek": der_to_pem((d / "vcek.der").read_bytes()), "ask": (d / "ask_ark.pem").read_text()})
    d = snp_dir / "milan-vcek-v2-trustee"
    raw(d.name, {"vcek": der_to_pem((d / "vcek.der").read_bytes()), "ask": (d / "ask_ark_asvk.pem").read_text()})
    d = snp_dir / "milan-vcek-v2-debug-gsg"
    raw(d.name, {"vcek": der_to_pem((d / "vcek.der").read_bytes()), "ask": (d / "ask_ark.pem").read_text()})
    d = snp_dir / "milan-vlek-v3-aws-trustee"
    raw(d.name, {"vlek": der_to_pem((d / "vlek.der").read_bytes()), "asvk": (d / "asvk_ark.pem").read_text()},
        vmpl=(1,))
    azure_certs = {
        "genoa-vcek-v3-azure-trustee": ("vcek.pem", "ask_ark.pem"),
        "milan-vcek-v2-azure-trustee": ("vcek_ask_ark.pem", None),  # VCEK, ASK and ARK in one PEM
    }
    for name, (vcek_file, chain_file) in azure_certs.items():
        d = snp_dir / name
        # The SNP report sits at a fixed offset in the HCL report; report.bin is the same bytes, cut upstream.
        report, runtime = hcl_parts((d / "hcl_report.bin").read_bytes())
        assert report == (d / "report.bin").read_bytes()
        certs = {"vcek": (d / vcek_file).read_text()}
        if chain_file:
            certs["ask"] = (d / chain_file).read_text()
        out[name] = Sample(name, report, certs, azure_binding(runtime))
    d = snp_dir / "milan-vcek-v3-azure-vtpm-trustee"
    for f in ("evidence-v1.json", "evidence-v2.json"):
        ev = json.loads((d / f).read_text())
        report, runtime = hcl_parts(b64url(ev["hcl_report"]))
        name = f"{d.name}/{f}"
        out[name] = Sample(name, report, {"vcek": der_to_pem(b64url(ev["vcek"])),
                                          "ask": (roots_dir / "amd_milan_ask_ark.pem").read_text()},
                           azure_binding(runtime))
    d = snp_dir / "genoa-vcek-v3-kbs-json-trustee"
    ev = json.loads((d / "evidence.json").read_text())
    (vcek_entry,) = ev["cert_chain"]
    assert vcek_entry["cert_type"] == "VCEK"
    raw(d.name, {"vcek": der_to_pem(bytes(vcek_entry["data"])),
                 "ask": (roots_dir / "amd_genoa_ask_ark.pem").read_text()})
    raw("genoa-v3-tinfoil-no-vcek", {})
    return out


def names(v: Verdict) -> list[str]:
    return [c.name for c in v.checks]


def check(v: Verdict, name: str) -> bool | None:
    (c,) = [c for c in v.checks if c.name == name]
    return c.ok


def failed(v: Verdict) -> set[str]:
    return {c.name for c in v.checks if c.ok is False}


# --- trust anchors -----------------------------------------------------------------------------------------------


def test_pinned_ark_fingerprints_equal_the_shared_amd_roots(roots_dir: Path) -> None:
    found = {}
    for f in roots_dir.glob("amd_*.pem"):
        for c in x509.load_pem_x509_certificates(f.read_bytes()):
            if c.subject == c.issuer:
                found[c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value] = hashlib.sha256(
                    c.public_bytes(Encoding.DER)).hexdigest()
    assert found == {"ARK-Milan": ARK_SHA256_MILAN, "ARK-Genoa": ARK_SHA256_GENOA, "ARK-Turin": ARK_SHA256_TURIN}
    # The prefixes in notes/attestation.md and roots/SOURCE.md.
    assert (ARK_SHA256_MILAN[:16], ARK_SHA256_GENOA[:16], ARK_SHA256_TURIN[:16]) == (
        "69d063b45344d26a", "4c6598d19c18719c", "1f084161a44bb6d9")


def test_serial_zero_warning_is_still_only_a_warning(snp_dir: Path) -> None:
    """KDS VCEKs have serial 0; if a cryptography release starts refusing them, this is where it shows first."""
    with pytest.warns(Warning, match="serial number"):
        x509.load_der_x509_certificate((snp_dir / "milan-vcek-v2-virtee" / "vcek.der").read_bytes())


# --- every real sample -------------------------------------------------------------------------------------------

PASSING = [
    "milan-vcek-v2-virtee",
    "milan-vcek-v2-trustee",
    "milan-vlek-v3-aws-trustee",
    "genoa-vcek-v3-azure-trustee",
    "milan-vcek-v2-azure-trustee",
    "milan-vcek-v3-azure-vtpm-trustee/evidence-v1.json",
    "milan-vcek-v3-azure-vtpm-trustee/evidence-v2.json",
    "genoa-vcek-v3-kbs-json-trustee",
]


@pytest.mark.parametrize("name", PASSING)
def test_real_sample_passes(samples: dict[str, Sample], name: str) -> None:
    s = samples[name]
    v = s.verify()
    assert v.ok, v.document()
    assert names(v) == EVERY_CHECK
    assert all(c.ok is True for c in v.checks)
    assert v.measurement == bytes.fromhex(MEASUREMENTS[name])
    assert v.report_data == s.expected_report_data
    assert v.document().endswith("RESULT: PASS")
    assert v.claims["product"] in ("Milan", "Genoa")
    assert v.claims["signing_key"] == ("VLEK" if "vlek" in name else "VCEK")
    prefix = DOCUMENTED_MEASUREMENT_PREFIX.get(name)
    if prefix:
        assert MEASUREMENTS[name].startswith(prefix)


@pytest.mark.parametrize("name", PASSING)
def test_empty_allow_list_fails_closed(samples: dict[str, Sample], name: str) -> None:
    s = samples[name]
    v = s.verify(policy=s.policy(measurements=()))
    assert not v.ok
    assert failed(v) == {"measurement"}
    assert "[FAIL] measurement" in v.document()
    assert "allow list is empty" in v.document()


def test_any_measurement_passes_but_says_so(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    v = s.verify(policy=s.policy(measurements=(), any_measurement=True))
    assert v.ok
    (c,) = [c for c in v.checks if c.name == "measurement"]
    assert c.detail == "any measurement accepted (--any-measurement)"


def test_other_measurement_fails(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    v = s.verify(policy=s.policy(measurements=(bytes.fromhex(MEASUREMENTS["milan-vcek-v2-trustee"]),)))
    assert failed(v) == {"measurement"}


def test_virtee_claims(samples: dict[str, Sample]) -> None:
    v = samples["milan-vcek-v2-virtee"].verify()
    c = v.claims
    assert c["version"] == 2 and c["vmpl"] == 0 and c["product"] == "Milan" and c["signing_key"] == "VCEK"
    assert c["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert c["policy"]["raw"] == 0x30000 and c["policy"]["debug"] is False and c["policy"]["smt"] is True
    assert c["chip_id"].startswith("d49554ec717f4e5b") and c["host_data"] == "00" * 32
    assert c["current_firmware"] == "1.52.4"
    assert v.report_data is not None and v.report_data.hex().startswith("d447b55d")
    json.dumps(v.to_json())  # the claims are plain JSON


def test_aws_vlek_claims_and_vmpl_policy(samples: dict[str, Sample]) -> None:
    s = samples["milan-vlek-v3-aws-trustee"]
    v = s.verify()
    assert v.ok
    assert v.claims["csp_id"] == "CN=cc-us-east-2.amazonaws.com"
    assert v.claims["cpuid"] == {"family": 0x19, "model": 0x01, "stepping": 0x01}
    assert v.claims["chip_id"] == "00" * 64
    assert v.claims["platform_info"]["raw"] == 0x27
    vmpl0 = s.verify(policy=s.policy(vmpl=(0,)))
    assert failed(vmpl0) == {"VMPL"}
    no_vlek = s.verify(policy=s.policy(allow_vlek=False))
    assert failed(no_vlek) == {"signing key"}
    assert "[FAIL] signing key" in no_vlek.document()


def test_aws_vlek_fails_after_it_expired(samples: dict[str, Sample]) -> None:
    v = samples["milan-vlek-v3-aws-trustee"].verify(now=datetime.datetime(2025, 12, 11, tzinfo=datetime.UTC))
    assert failed(v) == {"certificate validity"}
    assert "SEV-VLEK expired 2025-12-10" in v.document()


def test_certificate_not_yet_valid_fails(samples: dict[str, Sample]) -> None:
    v = samples["milan-vcek-v2-virtee"].verify(now=datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC))
    assert failed(v) == {"certificate validity"}
    assert "[FAIL] certificate validity" in v.document()


def test_vcek_expired_fails(samples: dict[str, Sample]) -> None:
    v = samples["milan-vcek-v2-virtee"].verify(now=datetime.datetime(2030, 4, 4, tzinfo=datetime.UTC))
    assert failed(v) == {"certificate validity"}


def test_debug_sample_signature_passes_policy_fails(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-debug-gsg"]
    v = s.verify()
    assert not v.ok
    assert failed(v) == {"debug"}
    assert check(v, "report signature") is True and check(v, "certificate chain") is True
    assert "[FAIL] debug | expected DEBUG=0 | found DEBUG=1" in v.document()
    assert v.report_data is not None and v.report_data[:5] == bytes.fromhex("0102030405")
    assert v.claims["reported_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    allowed = s.verify(policy=s.policy(allow_debug=True))
    assert allowed.ok
    assert "debug allowed by policy" in allowed.document()


@pytest.mark.parametrize("which", ["vcek-invalid-legacy.der", "vcek-invalid-new.der"])
def test_trustee_synthetic_vceks_parse_but_chain_fails(samples: dict[str, Sample], snp_dir: Path, which: str) -> None:
    d = snp_dir / "milan-vcek-v2-trustee"
    der = (d / which).read_bytes()
    ext = parse_extensions(x509.load_der_x509_certificate(der))
    assert ext.hwid == bytes(range(64))  # raw 64 bytes (legacy) and OCTET STRING (new) decode alike
    assert ext.product_name == "Milan-B0"
    certs = {"vcek": der_to_pem(der), "ask": (d / "ask_ark_asvk.pem").read_text()}
    only_certs = verify_snp_certs(certs, now=NOW)
    assert failed(only_certs) == {"certificate chain"}
    assert "signature does not verify under SEV-Milan" in only_certs.document()
    v = samples["milan-vcek-v2-trustee"].verify(certs=certs)
    assert {"certificate chain", "report signature", "chip binding"} <= failed(v)


def test_turin_chain_passes_and_its_extensions_decode(snp_dir: Path) -> None:
    d = snp_dir / "turin-vcek-cert-only-virtee"
    der = (d / "vcek.der").read_bytes()
    v = verify_snp_certs({"vcek": der_to_pem(der), "ask": (d / "ask_ark.pem").read_text()}, now=NOW)
    assert v.ok, v.document()
    assert v.claims["product"] == "Turin"
    assert v.claims["certified_tcb"] == {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 9, "fmc": 0}
    ext = parse_extensions(x509.load_der_x509_certificate(der))
    assert ext.hwid is not None and len(ext.hwid) == 8 and ext.fmc_spl == 0
    # The Turin VCEK is not issued by the Milan ASK: naming the wrong chain fails by name.
    wrong = verify_snp_certs({"vcek": der_to_pem(der), "ask": (snp_dir / "milan-vcek-v2-virtee" / "ask_ark.pem")
                              .read_text()}, now=NOW)
    assert "certificate chain" in failed(wrong)


def turin_report(template: bytes, hwid: bytes, chip_tail: bytes = bytes(56)) -> bytes:
    """A v3 report laid out as a Turin VCEK-signed one would be (no real Turin report is public; it cannot verify)."""
    r = bytearray(set_u32(template, 0x48, 0))  # KEY_INFO: VCEK
    r[0x188:0x18B] = bytes([0x1A, 0x02, 0x00])  # CPUID: Turin
    turin_tcb = bytes([0, 0, 0, 0, 0, 0, 0, 9])  # fmc bl tee snp . . . ucode, as the virtee Turin VCEK certifies
    for off in (0x038, 0x180, 0x1E0, 0x1F0):
        r[off : off + 8] = turin_tcb
    r[0x1A0:0x1E0] = hwid + chip_tail
    return bytes(r)


def test_turin_chip_and_tcb_binding(samples: dict[str, Sample], snp_dir: Path) -> None:
    d = snp_dir / "turin-vcek-cert-only-virtee"
    der = (d / "vcek.der").read_bytes()
    hwid = parse_extensions(x509.load_der_x509_certificate(der)).hwid
    assert hwid is not None
    certs = {"vcek": der_to_pem(der), "ask": (d / "ask_ark.pem").read_text()}
    template = samples["milan-vlek-v3-aws-trustee"].report
    pol = SnpPolicy(any_measurement=True, vmpl=(1,), min_tcb={"fmc": 0, "microcode": 9})
    v = verify_snp(turin_report(template, hwid), certs, pol, now=NOW, expected_report_data=None)
    assert failed(v) == {"report signature"}, v.document()  # only the signature: we cannot forge AMD's
    assert v.claims["reported_tcb"] == {"fmc": 0, "bootloader": 0, "tee": 0, "snp": 0, "microcode": 9}
    tail = verify_snp(turin_report(template, hwid, b"\x01" + bytes(55)), certs, pol, now=NOW,
                      expected_report_data=None)
    assert failed(tail) == {"report signature", "chip binding"}
    other = verify_snp(turin_report(template, bytes(8)), certs, pol, now=NOW, expected_report_data=None)
    assert failed(other) == {"report signature", "chip binding"}
    fmc = verify_snp(turin_report(template, hwid), certs, dataclasses.replace(pol, min_tcb={"fmc": 1}), now=NOW,
                     expected_report_data=None)
    assert failed(fmc) == {"report signature", "minimum TCB"} and "fmc 0 < 1" in fmc.document()


def test_tcb_layouts_differ_by_product() -> None:
    raw = bytes([1, 2, 3, 4, 0, 0, 0, 9])
    assert decode_tcb(raw, Product.TURIN).as_dict() == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 9}
    with pytest.raises(EvidenceFormatError, match=r"reserved bytes \[2..5\] of the Milan layout"):
        decode_tcb(raw, Product.MILAN)
    milan = bytes([3, 0, 0, 0, 0, 0, 8, 115])
    assert decode_tcb(milan, Product.GENOA).as_dict() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    with pytest.raises(EvidenceFormatError, match=r"reserved bytes \[4..6\] of the Turin layout"):
        decode_tcb(bytes([0, 0, 0, 0, 0, 0, 8, 0]), Product.TURIN)


def test_tinfoil_parse_binding_and_fail_closed_without_vcek(samples: dict[str, Sample]) -> None:
    s = samples["genoa-v3-tinfoil-no-vcek"]
    r = parse_report(s.report)
    assert r.version == 3 and r.cpuid_product is Product.GENOA and r.signing_key is SigningKey.VCEK
    # tinfoil's binding: [0:32] SHA-256 of the TLS key, [32:64] the raw X25519 HPKE key (SOURCE.md prefixes).
    assert r.report_data[:32].hex().startswith("10ca8543") and r.report_data[:32].hex().endswith("063e")
    assert r.report_data[32:].hex().startswith("be5a9c84") and r.report_data[32:].hex().endswith("f80d")
    assert r.measurement.hex().endswith("52c0")
    v = s.verify()
    assert not v.ok
    assert check(v, "REPORT_DATA binding") is True and check(v, "measurement") is True
    assert check(v, "signing key") is False and check(v, "ARK pinned") is False
    assert check(v, "report signature") is None  # SKIP: never a pass
    assert "[SKIP] report signature" in v.document() and "[FAIL] signing key" in v.document()
    wrong = s.verify(expected_report_data=bytes(64))
    assert check(wrong, "REPORT_DATA binding") is False
    # The right certificate chain without the VCEK still fails closed.
    genoa = s.verify(certs={"ask": samples["genoa-vcek-v3-azure-trustee"].certs["ask"]})
    assert check(genoa, "ARK pinned") is True and not genoa.ok


# --- binding ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["milan-vcek-v2-virtee", "genoa-vcek-v3-azure-trustee", "milan-vlek-v3-aws-trustee"])
def test_wrong_report_data_fails_binding(samples: dict[str, Sample], name: str) -> None:
    s = samples[name]
    wrong = bytearray(s.expected_report_data)
    wrong[63] ^= 1
    v = s.verify(expected_report_data=bytes(wrong))
    assert failed(v) == {"REPORT_DATA binding"}
    assert "[FAIL] REPORT_DATA binding" in v.document()


def test_no_binding_is_recorded(samples: dict[str, Sample]) -> None:
    v = samples["milan-vcek-v2-virtee"].verify(expected_report_data=None)
    assert v.ok
    (c,) = [c for c in v.checks if c.name == "REPORT_DATA binding"]
    assert c.detail == "binding skipped (--no-binding)"


def test_azure_runtime_json_is_what_report_data_binds(samples: dict[str, Sample], snp_dir: Path) -> None:
    hcl = bytearray((snp_dir / "genoa-vcek-v3-azure-trustee" / "hcl_report.bin").read_bytes())
    hcl[0x4D4 + 10] ^= 1  # one byte of the runtime JSON (which names the vTPM key)
    _, runtime = hcl_parts(bytes(hcl))
    v = samples["genoa-vcek-v3-azure-trustee"].verify(expected_report_data=azure_binding(runtime))
    assert failed(v) == {"REPORT_DATA binding"}


# --- tampering -----------------------------------------------------------------------------------------------------

#: One offset inside each signed field that parses leniently (reserved fields are refused by the parser instead).
SIGNED_FIELD_OFFSETS = {
    "VERSION-adjacent GUEST_SVN": 0x004, "POLICY ABI minor": 0x008, "FAMILY_ID": 0x010, "IMAGE_ID": 0x02F,
    "VMPL": 0x030, "CURRENT_TCB": 0x03F, "PLATFORM_INFO": 0x040, "REPORT_DATA": 0x050, "REPORT_DATA end": 0x08F,
    "MEASUREMENT": 0x0A0, "HOST_DATA": 0x0C0, "ID_KEY_DIGEST": 0x0E0, "AUTHOR_KEY_DIGEST": 0x13F,
    "REPORT_ID": 0x140, "REPORT_ID_MA": 0x160, "REPORTED_TCB": 0x187, "CHIP_ID": 0x1A0, "CHIP_ID end": 0x1DF,
    "COMMITTED_TCB": 0x1E0, "CURRENT_BUILD": 0x1E8, "COMMITTED_MAJOR": 0x1EE, "LAUNCH_TCB": 0x1F7,
}


@pytest.mark.parametrize("name", ["milan-vcek-v2-virtee", "milan-vlek-v3-aws-trustee", "genoa-vcek-v3-azure-trustee"])
def test_bit_flip_in_each_signed_field_fails_signature(samples: dict[str, Sample], name: str) -> None:
    s = samples[name]
    for field, offset in SIGNED_FIELD_OFFSETS.items():
        tampered = bytearray(s.report)
        tampered[offset] ^= 0x01
        v = s.verify(report=bytes(tampered))
        assert check(v, "report signature") is False, f"{name}: {field} @0x{offset:03X}\n{v.document()}"
        assert not v.ok
        assert "[FAIL] report signature" in v.document()


@pytest.mark.parametrize("offset", [0x2A0, 0x2A0 + 47, 0x2A0 + 72, 0x2A0 + 72 + 47])
def test_bit_flip_in_signature_fails(samples: dict[str, Sample], offset: int) -> None:
    s = samples["milan-vcek-v2-virtee"]
    tampered = bytearray(s.report)
    tampered[offset] ^= 0x80
    assert failed(s.verify(report=bytes(tampered))) == {"report signature"}


def test_tampered_tcb_and_chip_id_also_fail_their_bindings(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    t = bytearray(s.report)
    t[0x180] ^= 1  # REPORTED_TCB.BOOT_LOADER
    t[0x1A0] ^= 1  # CHIP_ID
    assert failed(s.verify(report=bytes(t))) == {"report signature", "TCB binding", "chip binding"}


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (0x04C, "0x04C"), (0x188, "0x188"), (0x19F, "0x188"), (0x1EB, "0x1EB"), (0x1EF, "0x1EF"), (0x1F8, "0x1F8"),
        (0x208, "0x208"), (0x29F, "0x208"), (0x2A0 + 48, "R padding"), (0x2A0 + 72 + 71, "S padding"),
        (0x2A0 + 144, "reserved tail"), (0x49F, "reserved tail"),
    ],
)
def test_reserved_bytes_are_refused(samples: dict[str, Sample], offset: int, message: str) -> None:
    tampered = bytearray(samples["milan-vcek-v2-virtee"].report)
    tampered[offset] ^= 0x01
    with pytest.raises(EvidenceFormatError, match=message):
        parse_report(bytes(tampered))


def test_v3_reserved_starts_after_cpuid(samples: dict[str, Sample]) -> None:
    t = bytearray(samples["milan-vlek-v3-aws-trustee"].report)
    t[0x18B] = 1
    with pytest.raises(EvidenceFormatError, match="0x18B"):
        parse_report(bytes(t))
    t = bytearray(samples["milan-vlek-v3-aws-trustee"].report)
    t[0x182] = 1  # a reserved byte of the Milan TCB layout; CPUID names Milan, so the parser knows the layout
    with pytest.raises(EvidenceFormatError, match="REPORTED_TCB: reserved bytes"):
        parse_report(bytes(t))


def set_u32(report: bytes, offset: int, value: int) -> bytes:
    b = bytearray(report)
    struct.pack_into("<I", b, offset, value)
    return bytes(b)


def set_u64(report: bytes, offset: int, value: int) -> bytes:
    b = bytearray(report)
    struct.pack_into("<Q", b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r[:-1], "1183 bytes"),
        (lambda r: r + b"\x00", "1185 bytes"),
        (lambda r: set_u32(r, 0, 0), "VERSION 0"),
        (lambda r: set_u32(r, 0, 1), "VERSION 1"),
        (lambda r: set_u32(r, 0, 4), "VERSION 4 is refused"),
        (lambda r: set_u32(r, 0, 6), "VERSION 6"),
        (lambda r: set_u32(r, 0x34, 2), "SIGNATURE_ALGO"),
        (lambda r: set_u32(r, 0x30, 4), "VMPL"),
        (lambda r: set_u32(r, 0x48, 2 << 2), "SIGNING_KEY=2 is reserved"),
        (lambda r: set_u32(r, 0x48, 1 << 5), "KEY_INFO bits 31:5"),
        (lambda r: set_u64(r, 0x08, 0x10000), "POLICY bit 17"),
        (lambda r: set_u64(r, 0x08, 0x30000 | 1 << 26), "POLICY bits 63:26"),
        (lambda r: set_u64(r, 0x40, 1 << 6), "PLATFORM_INFO"),
        (lambda r: set_u64(r, 0x40, 1 << 8), "PLATFORM_INFO"),
    ],
)
def test_malformed_reports_are_refused(samples: dict[str, Sample], mutate: Callable[[bytes], bytes],
                                       message: str) -> None:
    bad = mutate(samples["milan-vcek-v2-virtee"].report)
    with pytest.raises(EvidenceFormatError, match=message):
        parse_report(bad)
    with pytest.raises(EvidenceFormatError):
        samples["milan-vcek-v2-virtee"].verify(report=bad)


def test_v5_layout_parses_mitigation_vectors(samples: dict[str, Sample]) -> None:
    v3 = samples["milan-vlek-v3-aws-trustee"].report
    v5 = set_u64(set_u64(set_u32(v3, 0, 5), 0x1F8, 0x11), 0x200, 0x22)
    r = parse_report(v5)
    assert (r.version, r.launch_mit_vector, r.current_mit_vector) == (5, 0x11, 0x22)
    assert parse_report(v3).launch_mit_vector is None
    # Changing the version changes the signed bytes.
    assert check(samples["milan-vlek-v3-aws-trustee"].verify(report=v5), "report signature") is False


def test_signature_is_little_endian_and_signed_bytes_are_raw(samples: dict[str, Sample]) -> None:
    raw = samples["milan-vcek-v2-virtee"].report
    r = parse_report(raw)
    assert r.signed_bytes == raw[:0x2A0]
    assert r.signature_r == int.from_bytes(raw[0x2A0:0x2A0 + 72], "little")
    assert r.signature_s == int.from_bytes(raw[0x2A0 + 72:0x2A0 + 144], "little")
    assert r.signature_r.bit_length() <= 384 and r.signature_s.bit_length() <= 384


# --- certificates ---------------------------------------------------------------------------------------------


def test_swapped_vcek_from_another_milan_sample_fails(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    other = samples["milan-vcek-v2-trustee"].certs
    v = s.verify(certs=other)
    # Same product and TCB, different chip: the chain is fine, the report is not that chip's.
    assert failed(v) == {"report signature", "chip binding"}
    assert "[FAIL] report signature" in v.document() and "[FAIL] chip binding" in v.document()


def test_swapped_vcek_from_another_product_fails(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    genoa = samples["genoa-vcek-v3-azure-trustee"].certs
    v = s.verify(certs={"vcek": genoa["vcek"], "ask": s.certs["ask"]})
    assert {"certificate chain", "report signature", "chip binding", "TCB binding", "product"} <= failed(v)


def test_vcek_in_vlek_role_fails(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    v = s.verify(certs={"vlek": s.certs["vcek"], "ask": s.certs["ask"]})
    assert "signing key" in failed(v)


def test_vlek_report_with_a_vcek_fails(samples: dict[str, Sample]) -> None:
    s = samples["milan-vlek-v3-aws-trustee"]
    v = s.verify(certs=samples["milan-vcek-v2-virtee"].certs)
    assert {"signing key", "report signature", "certificate chain"} <= failed(v)


def split_pem(pem: str) -> list[str]:
    return [der_to_pem(c.public_bytes(Encoding.DER)) for c in x509.load_pem_x509_certificates(pem.encode())]


def test_chain_is_built_by_name_not_position(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-trustee"]  # its chain file is ASK, ARK, ASVK
    ask, ark, asvk = split_pem(s.certs["ask"])
    for certs in (
        {"vcek": s.certs["vcek"], "ask": ask, "ark": ark},
        {"vcek": s.certs["vcek"], "ask": asvk + ark + ask},
        {"vcek": s.certs["vcek"] + ark, "ark": ask},
        {"vcek": s.certs["vcek"], "asvk": asvk, "ask": ask, "ark": ark},
    ):
        assert s.verify(certs=certs).ok


def test_missing_ark_or_ask_fails(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    ask, ark = split_pem(s.certs["ask"])
    no_ark = s.verify(certs={"vcek": s.certs["vcek"], "ask": ask})
    assert {"ARK pinned", "certificate chain"} <= failed(no_ark)
    no_ask = s.verify(certs={"vcek": s.certs["vcek"], "ark": ark})
    assert "certificate chain" in failed(no_ask) and check(no_ask, "ARK pinned") is True


@pytest.fixture(scope="module")
def fake_ark_milan() -> str:
    """A self-signed certificate named exactly like ARK-Milan (RSA-2048 to keep the test fast)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, "ARK-Milan"),
    ])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2045, 1, 1, tzinfo=datetime.UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    return cert.public_bytes(Encoding.PEM).decode()


def test_unpinned_ark_with_the_right_name_fails(samples: dict[str, Sample], fake_ark_milan: str) -> None:
    s = samples["milan-vcek-v2-virtee"]
    ask, ark = split_pem(s.certs["ask"])
    assert x509.load_pem_x509_certificate(fake_ark_milan.encode()).subject == x509.load_pem_x509_certificate(
        ark.encode()).subject
    v = s.verify(certs={"vcek": s.certs["vcek"], "ask": ask, "ark": fake_ark_milan})
    assert {"ARK pinned", "certificate chain"} <= failed(v)
    assert "[FAIL] ARK pinned" in v.document()
    # A forged namesake beside the genuine ARK cannot displace it.
    both = s.verify(certs={"vcek": s.certs["vcek"], "ask": ask, "ark": fake_ark_milan + ark})
    assert both.ok, both.document()


def test_bad_certificate_input_is_a_format_error(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]
    with pytest.raises(EvidenceFormatError, match="unknown certificate roles"):
        s.verify(certs={**s.certs, "pck": s.certs["ask"]})
    with pytest.raises(EvidenceFormatError, match="not a parsable PEM"):
        s.verify(certs={**s.certs, "ark": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"})
    with pytest.raises(EvidenceFormatError, match="only CA certificates"):
        s.verify(certs={"vcek": s.certs["ask"]})


def test_naive_time_is_refused(samples: dict[str, Sample]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        samples["milan-vcek-v2-virtee"].verify(now=datetime.datetime(2025, 6, 1))


# --- TCB minimums and policy plumbing ---------------------------------------------------------------------------


def test_min_tcb(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-virtee"]  # bl=3 tee=0 snp=8 ucode=115
    assert s.verify(policy=s.policy(min_tcb={"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115})).ok
    v = s.verify(policy=s.policy(min_tcb={"snp": 9, "microcode": 115}))
    assert failed(v) == {"minimum TCB"}
    assert "snp 8 < 9" in v.document()
    typo = s.verify(policy=s.policy(min_tcb={"ucode": 1}))
    assert failed(typo) == {"minimum TCB"} and "unknown min_tcb keys ['ucode']" in typo.document()
    fmc = s.verify(policy=s.policy(min_tcb={"fmc": 1}))
    assert fmc.ok and "fmc: not part of this product's TCB" in fmc.document()


def test_min_tcb_uses_reported_not_current_tcb(samples: dict[str, Sample]) -> None:
    s = samples["milan-vcek-v2-trustee"]  # reported ucode 115, current ucode 206
    assert failed(s.verify(policy=s.policy(min_tcb={"microcode": 200}))) == {"minimum TCB"}


def test_policy_from_toml_dict_drives_the_verifier(samples: dict[str, Sample]) -> None:
    s = samples["milan-vlek-v3-aws-trustee"]
    pol = Policy.from_dict({"sev-snp": {"measurements": [MEASUREMENTS[s.name]], "vmpl": [0, 1],
                                        "min_tcb": {"bootloader": 4, "snp": 24, "microcode": 217}}})
    assert s.verify(policy=pol.get(SnpPolicy)).ok
    assert not s.verify(policy=Policy.from_dict({}).get(SnpPolicy)).ok  # default policy: empty allow list, VMPL 0 only
