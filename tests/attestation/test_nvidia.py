"""NVIDIA Hopper GPU evidence: the three real samples end to end, tampering on every signed range, foreign roots,
truncation, and the bundle's GPU evidence format. Only NVIDIA hardware is "faked" (by a self-made CA); never Veil."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import replace
from functools import cache
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from enclave.attestation.bundle import report_data
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.nvidia.verify import NVIDIA_DEVICE_ROOT_SHA256, verify_nvidia
from enclave.attestation.nvidia import (
    decode_gpu_evidence,
    encode_gpu_evidence,
    GpuReport,
    load_nvtrust_evidence_list,
    parse_gpu_report,
)
from enclave.attestation.nvidia.verify import (
    NO_BINDING_DETAIL,
    OID_TCG_DICE_TCB_INFO,
    compare_rim_measurements,
    parse_cert_chain,
    verify_report_signature,
)
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.result import Verdict

# Every device chain here is valid 2022-03-01 (Provisioner ICA notBefore) .. 9999-12-31; verify at the day the samples
# were collected (evidence README), and before the window for the negative case.
NOW = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
BEFORE_ICA = datetime.datetime(2022, 2, 1, tzinfo=datetime.UTC)

NVTRUST = "hopper-nvtrust-sample"
COCO = "hopper-coco-trustee"
HGX = "hgx-8gpu-ppcie-nvtrust"
NONCES = {
    NVTRUST: "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
    COCO: "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec",
    HGX: "4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e",
}
VERSIONS = {  # (driver, VBIOS) as documented in each SOURCE.md
    NVTRUST: ("550.90.07", "96.00.9F.00.01"),
    COCO: ("580.95.05", "96.00.74.00.1A"),
    HGX: ("590.12", "96.00.A5.00.01"),
}
PER_GPU_STEPS = ["parse", "cert chain", "cert validity", "root pinned", "fwid", "signature", "nonce", "cc mode",
                 "driver version", "vbios version"]


@cache
def _sample(root: Path, name: str) -> tuple[bytes, str]:
    folder = root / "nvidia-gpu" / name
    report = bytes.fromhex((folder / "attestation_report.hex").read_text().strip())
    return report, (folder / "cert_chain.pem").read_text()


@cache
def _hgx(root: Path) -> list[tuple[bytes, str]]:
    return load_nvtrust_evidence_list((root / "nvidia-gpu" / HGX / "gpu_evidence.json").read_bytes())


def _policy(name: str) -> NvidiaPolicy:
    driver, vbios = VERSIONS[name]
    return NvidiaPolicy(allowed_driver_versions=(driver,), allowed_vbios_versions=(vbios,))


def _checks(v: Verdict) -> dict[str, bool | None]:
    return {c.name: c.ok for c in v.checks}


def _verify(gpus: list[tuple[bytes, str]], name: str = NVTRUST, *, now: datetime.datetime = NOW,
            nonce: bytes | None | str = "documented") -> Verdict:
    expected = bytes.fromhex(NONCES[name]) if nonce == "documented" else nonce
    assert not isinstance(expected, str)
    return verify_nvidia(gpus, _policy(name), now=now, expected_nonce=expected)


def _flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


# --- the real samples --------------------------------------------------------------------------------------------


def test_pinned_fingerprint_is_the_shared_nvidia_root(evidence_dir: Path) -> None:
    root = x509.load_pem_x509_certificate((evidence_dir / "roots" / "nvidia_device_identity_root.pem").read_bytes())
    assert hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest() == NVIDIA_DEVICE_ROOT_SHA256
    assert root.subject.rfc4514_string() == "O=NVIDIA,CN=NVIDIA Device Identity CA"


@pytest.mark.parametrize("name", [NVTRUST, COCO])
def test_single_gpu_sample_passes_every_offline_check(evidence_dir: Path, name: str) -> None:
    v = _verify([_sample(evidence_dir, name)], name)
    checks = _checks(v)
    assert list(checks) == ["gpus count"] + [f"gpu[0] {s}" for s in PER_GPU_STEPS]
    # chain + FWID + signature + nonce + versions PASS; CC mode is not in the evidence, so the verdict fails closed.
    assert {k: ok for k, ok in checks.items() if ok is not True} == {"gpu[0] cc mode": None}
    assert not v.ok
    gpu = v.claims["gpus"][0]
    assert (gpu["driver_version"], gpu["vbios_version"]) == VERSIONS[name]
    assert gpu["nonce"] == NONCES[name]
    assert gpu["revocation"] == "unknown" and v.claims["revocation"] == "unknown"
    assert any("revocation status unknown (offline)" in n for n in v.claims["notes"])
    # Revocation is never a check, so it can never read as good.
    assert not any("revocation" in c.name or "ocsp" in c.name.lower() for c in v.checks)
    assert "RESULT: FAIL (1 failed or not checked)" in v.document()


def test_nvtrust_sample_fields(evidence_dir: Path) -> None:
    raw, _ = _sample(evidence_dir, NVTRUST)
    r = parse_gpu_report(raw)
    assert len(r.request) == 37 and r.nonce.hex() == NONCES[NVTRUST] and r.slot_id == 0 and r.padding == 0
    assert [b.index for b in r.blocks] == list(range(1, 65))
    assert all(b.value_type == 1 and len(b.value) == 48 for b in r.blocks)
    assert r.responder_nonce.hex().startswith("b4b8a06a")
    assert (r.project, r.project_sku, r.chip_sku) == ("1010", "0200", "882")
    assert r.protected_pcie_status == 0x55 and r.feature_flag is None and r.mode == "legacy"
    assert r.fwid is not None and r.fwid.hex().startswith("f5c384ae")
    assert r.signed_bytes == raw[:-96] and r.signature == raw[-96:] and len(r.signed_bytes) == 4021


def test_coco_sample_trailing_zero_byte_is_outside_the_signed_range(evidence_dir: Path) -> None:
    raw, _ = _sample(evidence_dir, COCO)
    r = parse_gpu_report(raw)
    assert len(raw) == 4130 and r.padding == 1 and r.mode == "SPT"
    assert r.signed_bytes + r.signature == raw[:-1]
    assert parse_gpu_report(raw[:-1]).signed_bytes == r.signed_bytes
    assert parse_gpu_report(raw + bytes(7)).padding == 8  # more buffer padding: still the same evidence
    with pytest.raises(EvidenceFormatError, match="not all zero"):
        parse_gpu_report(raw[:-1] + b"\x01")
    with pytest.raises(EvidenceFormatError, match="not all zero"):
        parse_gpu_report(raw + b"\x00\x80")


def test_coco_vbios_rim_matches_11_of_12(evidence_dir: Path) -> None:
    raw, _ = _sample(evidence_dir, COCO)
    rim = next((evidence_dir / "nvidia-gpu" / COCO).glob("*.swidtag")).read_bytes()
    cmp = compare_rim_measurements(parse_gpu_report(raw), rim)
    assert len(cmp.matched) == 11 and cmp.mismatched == (9,) and cmp.missing == ()


def test_hgx_8gpu_all_pass(evidence_dir: Path) -> None:
    gpus = _hgx(evidence_dir)
    assert len(gpus) == 8
    v = _verify(gpus, HGX)
    checks = _checks(v)
    assert {k: ok for k, ok in checks.items() if ok is not True} == {f"gpu[{i}] cc mode": None for i in range(8)}
    for i in range(8):
        assert all(checks[f"gpu[{i}] {s}"] is True for s in PER_GPU_STEPS if s != "cc mode")
    assert checks["gpus distinct devices"] is True and checks["gpus consistent mode"] is True
    assert {g["mode"] for g in v.claims["gpus"]} == {"PPCIE"}
    assert {g["protected_pcie_status"] for g in v.claims["gpus"]} == {"0xaa"}
    assert len(v.claims["notes"]) == 8


def test_hgx_one_tampered_gpu_fails_only_that_gpu(evidence_dir: Path) -> None:
    gpus = list(_hgx(evidence_dir))
    raw, pem = gpus[3]
    gpus[3] = (_flip(raw, 37 + 8 + 4 + 3 + 10), pem)  # a byte inside measurement block 1's digest
    failures = {c.name for c in _verify(gpus, HGX).failures if not c.name.endswith(" cc mode")}
    assert failures == {"gpu[3] signature"}


def test_hgx_one_gpu_replayed_eight_times_fails(evidence_dir: Path) -> None:
    checks = _checks(_verify([_hgx(evidence_dir)[0]] * 8, HGX))
    assert checks["gpus distinct devices"] is False
    assert all(checks[f"gpu[{i}] signature"] for i in range(8))  # each copy is genuine on its own


# --- nonce and policy ---------------------------------------------------------------------------------------------


def test_wrong_expected_nonce_fails(evidence_dir: Path) -> None:
    sample = [_sample(evidence_dir, NVTRUST)]
    wrong = _flip(bytes.fromhex(NONCES[NVTRUST]), 31)
    assert _checks(_verify(sample, nonce=wrong))["gpu[0] nonce"] is False
    assert _checks(_verify(sample, nonce=bytes.fromhex(NONCES[NVTRUST])[:16]))["gpu[0] nonce"] is False
    assert _checks(_verify(sample, nonce=bytes.fromhex(NONCES[COCO])))["gpu[0] nonce"] is False


def test_no_binding_records_the_nonce_as_unchecked(evidence_dir: Path) -> None:
    v = _verify([_sample(evidence_dir, NVTRUST)], nonce=None)
    (check,) = [c for c in v.checks if c.name == "gpu[0] nonce"]
    assert check.ok is True and check.detail == NO_BINDING_DETAIL and check.found == NONCES[NVTRUST]


def test_version_policy_fails_closed(evidence_dir: Path) -> None:
    sample = [_sample(evidence_dir, NVTRUST)]
    empty = _checks(verify_nvidia(sample, NvidiaPolicy(), now=NOW, expected_nonce=None))
    assert empty["gpu[0] driver version"] is False and empty["gpu[0] vbios version"] is False
    other = _checks(verify_nvidia(sample, _policy(COCO), now=NOW, expected_nonce=None))
    assert other["gpu[0] driver version"] is False and other["gpu[0] vbios version"] is False
    # nvtrust prints VBIOS versions in lower case; the same version must match.
    lower = NvidiaPolicy(allowed_driver_versions=("550.90.07",), allowed_vbios_versions=("96.00.9f.00.01",))
    assert _checks(verify_nvidia(sample, lower, now=NOW, expected_nonce=None))["gpu[0] vbios version"] is True
    anyv = _checks(verify_nvidia(sample, NvidiaPolicy(any_version=True), now=NOW, expected_nonce=None))
    assert anyv["gpu[0] driver version"] is True and anyv["gpu[0] vbios version"] is True


def test_no_gpus_fails() -> None:
    v = verify_nvidia([], NvidiaPolicy(any_version=True), now=NOW, expected_nonce=None)
    assert not v.ok and _checks(v) == {"gpus count": False}


def test_naive_time_is_refused(evidence_dir: Path) -> None:
    with pytest.raises(ValueError, match="timezone"):
        verify_nvidia([_sample(evidence_dir, NVTRUST)], _policy(NVTRUST), now=datetime.datetime(2026, 1, 1),
                      expected_nonce=None)


# --- tampering with the signed bytes ------------------------------------------------------------------------------


def test_every_byte_of_the_signed_range_is_covered(evidence_dir: Path) -> None:
    raw, pem = _sample(evidence_dir, NVTRUST)
    key = parse_cert_chain(pem)[0].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signed = parse_gpu_report(raw).signed_bytes
    reached_signature = 0
    for offset in range(len(signed)):
        tampered = _flip(raw, offset, 1 << (offset % 8))
        try:
            report = parse_gpu_report(tampered)
        except EvidenceFormatError:
            continue  # a structural byte (header, length, block index): refused before any signature check
        reached_signature += 1
        # The flipped byte is inside what the signature covers...
        assert report.signed_bytes == tampered[: len(signed)] != signed, offset
        # ...and the signature really fails (every 8th offset: ECDSA verification is the slow part of this sweep).
        if offset % 8 == 0:
            assert not verify_report_signature(report, key), f"flip at offset {offset} still verifies"
    # Digests, nonces and most opaque values parse fine when flipped: the signature is what catches them.
    assert reached_signature > 3500, reached_signature


@pytest.mark.parametrize(
    "offset, what",
    [(4, "request nonce"), (37 + 8 + 4 + 3, "block 1 digest"), (37 + 8 + 3519, "last block digest"),
     (37 + 8 + 3520 + 5, "responder nonce"), (37 + 8 + 3520 + 32 + 2 + 5, "VBIOS opaque value"),
     (-1, "signature s"), (-96, "signature r")],
)
def test_tampered_sample_fails_signature(evidence_dir: Path, offset: int, what: str) -> None:
    raw, pem = _sample(evidence_dir, NVTRUST)
    checks = _checks(_verify([(_flip(raw, offset), pem)], nonce=None))
    assert checks["gpu[0] parse"] is True, what
    assert checks["gpu[0] signature"] is False, what


def test_tampered_fwid_fails_fwid_and_signature(evidence_dir: Path) -> None:
    raw, pem = _sample(evidence_dir, NVTRUST)
    fwid = parse_gpu_report(raw).fwid
    assert fwid is not None
    tampered = raw.replace(fwid, _flip(fwid, 0))
    checks = _checks(_verify([(tampered, pem)]))
    assert checks["gpu[0] fwid"] is False and checks["gpu[0] signature"] is False


# --- certificate chains ---------------------------------------------------------------------------------------------


def test_swapped_chains_fail(evidence_dir: Path) -> None:
    (raw_a, pem_a), (raw_b, pem_b) = _sample(evidence_dir, NVTRUST), _sample(evidence_dir, COCO)
    for raw, pem, name in ((raw_a, pem_b, NVTRUST), (raw_b, pem_a, COCO)):
        checks = _checks(_verify([(raw, pem)], name))
        assert checks["gpu[0] cert chain"] is True and checks["gpu[0] root pinned"] is True  # a genuine chain...
        assert checks["gpu[0] fwid"] is False and checks["gpu[0] signature"] is False  # ...of another GPU


def test_cert_validity_is_checked_at_now(evidence_dir: Path) -> None:
    v = _verify([_sample(evidence_dir, NVTRUST)], now=BEFORE_ICA)
    assert _checks(v)["gpu[0] cert validity"] is False
    assert "Provisioner ICA" in next(c.detail for c in v.checks if c.name == "gpu[0] cert validity")


def _make_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey, *,
               ca: bool, extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.UTC))
        .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    for ext, critical in extra:
        b = b.add_extension(ext, critical=critical)
    return b.sign(signer, hashes.SHA384())


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def _resign(report: GpuReport, key: ec.EllipticCurvePrivateKey) -> bytes:
    r, s = decode_dss_signature(key.sign(report.signed_bytes, ec.ECDSA(hashes.SHA384())))
    return report.signed_bytes + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def test_chain_to_a_foreign_root_fails_even_when_all_else_verifies(evidence_dir: Path) -> None:
    raw, pem = _sample(evidence_dir, NVTRUST)
    real_leaf = parse_cert_chain(pem)[0]
    tcb = real_leaf.extensions.get_extension_for_oid(OID_TCG_DICE_TCB_INFO).value
    root_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = _make_cert("NVIDIA Device Identity CA", root_key, "NVIDIA Device Identity CA", root_key, ca=True)
    leaf = _make_cert("GH100 A01 GSP FMC LF", leaf_key, "NVIDIA Device Identity CA", root_key, ca=False,
                      extra=((tcb, False),))
    forged = _resign(parse_gpu_report(raw), leaf_key)
    v = _verify([(forged, _pem(leaf, root))])
    checks = _checks(v)
    assert checks["gpu[0] cert chain"] is True and checks["gpu[0] signature"] is True
    assert checks["gpu[0] fwid"] is True and checks["gpu[0] nonce"] is True
    assert checks["gpu[0] root pinned"] is False and not v.ok


def test_leaf_without_fwid_or_with_unknown_critical_extension_fails(evidence_dir: Path) -> None:
    raw, pem = _sample(evidence_dir, NVTRUST)
    tcb = parse_cert_chain(pem)[0].extensions.get_extension_for_oid(OID_TCG_DICE_TCB_INFO).value
    root_key, leaf_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = _make_cert("Root", root_key, "Root", root_key, ca=True)
    forged = _resign(parse_gpu_report(raw), leaf_key)
    bare = _make_cert("Leaf", leaf_key, "Root", root_key, ca=False)
    checks = _checks(_verify([(forged, _pem(bare, root))]))
    assert checks["gpu[0] fwid"] is False and checks["gpu[0] cert chain"] is True
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    critical = _make_cert("Leaf", leaf_key, "Root", root_key, ca=False, extra=((tcb, False), (unknown, True)))
    checks = _checks(_verify([(forged, _pem(critical, root))]))
    assert checks["gpu[0] cert chain"] is False and checks["gpu[0] fwid"] is True


def test_real_chain_with_an_impostor_root_fails(evidence_dir: Path) -> None:
    raw, pem = _sample(evidence_dir, NVTRUST)
    certs = parse_cert_chain(pem)
    key = ec.generate_private_key(ec.SECP384R1())
    impostor = _make_cert("NVIDIA Device Identity CA", key, "NVIDIA Device Identity CA", key, ca=True)
    checks = _checks(_verify([(raw, _pem(*certs[:-1], impostor))]))
    assert checks["gpu[0] cert chain"] is False and checks["gpu[0] root pinned"] is False
    # Dropping the root is no better: the chain must end at the pinned root itself.
    checks = _checks(_verify([(raw, _pem(*certs[:-1]))]))
    assert checks["gpu[0] root pinned"] is False


def test_chain_text_is_strict(evidence_dir: Path) -> None:
    _, pem = _sample(evidence_dir, NVTRUST)
    with pytest.raises(EvidenceFormatError, match="outside"):
        parse_cert_chain(pem + "trailing words\n")
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")]
    with pytest.raises(EvidenceFormatError, match="1 certificates"):
        parse_cert_chain(first)
    raw, _ = _sample(evidence_dir, NVTRUST)
    checks = _checks(_verify([(raw, "not a chain")]))
    assert checks["gpu[0] cert chain"] is False and checks["gpu[0] signature"] is False


# --- strict parsing -------------------------------------------------------------------------------------------------


def test_every_truncation_is_a_format_error(evidence_dir: Path) -> None:
    raw, _ = _sample(evidence_dir, NVTRUST)
    for cut in range(len(raw)):
        with pytest.raises(EvidenceFormatError):
            parse_gpu_report(raw[:cut])


def test_truncated_report_fails_parse_check(evidence_dir: Path) -> None:
    raw, pem = _sample(evidence_dir, COCO)
    v = _verify([(raw[:2000], pem)], COCO)
    assert _checks(v)["gpu[0] parse"] is False and "truncated" in v.checks[1].detail
    assert "gpu[0] signature" not in _checks(v) and not v.ok


@pytest.mark.parametrize(
    "offset, value, message",
    [
        (0, 0x12, "SPDM version"),
        (1, 0xE1, "GET_MEASUREMENTS"),
        (2, 0x00, "Param1"),
        (3, 0x01, "Param2"),
        (36, 0x10, "SlotIDParam"),
        (37, 0x10, "response SPDM version"),
        (38, 0x61, "MEASUREMENTS"),
        (39, 0x01, "Param1/Param2"),
        (41, 0x3F, "length field disagrees"),  # NumberOfBlocks 63
        (41, 0x00, "no measurement blocks"),
        (37 + 8 + 1, 0x02, "not DMTF"),  # block 1 specification
        (37 + 8 + 55, 0x01, "appears twice"),  # block 2 index -> 1
        (37 + 8 + 5, 0x2F, "size"),  # block 1 DMTF value size 47 in a 51-byte block
    ],
)
def test_malformed_fields_are_format_errors(evidence_dir: Path, offset: int, value: int, message: str) -> None:
    raw, _ = _sample(evidence_dir, NVTRUST)
    tampered = bytearray(raw)
    tampered[offset] = value
    with pytest.raises(EvidenceFormatError, match=message):
        parse_gpu_report(bytes(tampered))


def test_malformed_opaque_data_is_a_format_error(evidence_dir: Path) -> None:
    raw, _ = _sample(evidence_dir, NVTRUST)
    report = parse_gpu_report(raw)
    start = 37 + 8 + 3520 + 32 + 2

    def with_opaque(opaque: bytes) -> bytes:
        return raw[: start - 2] + len(opaque).to_bytes(2, "little") + opaque + report.signature

    assert parse_gpu_report(with_opaque(report.opaque_data)).signed_bytes == report.signed_bytes
    dup = report.opaque_data + report.opaque_data[:12]  # the VBIOS TLV again
    with pytest.raises(EvidenceFormatError, match="twice"):
        parse_gpu_report(with_opaque(dup))
    with pytest.raises(EvidenceFormatError, match="truncated"):
        parse_gpu_report(with_opaque(report.opaque_data + b"\x63\x00\x05\x00ab"))
    with pytest.raises(EvidenceFormatError, match="VBIOS"):
        parse_gpu_report(with_opaque(b"\x06\x00\x02\x00\x01\x02"))
    with pytest.raises(EvidenceFormatError, match="DRIVER_VERSION"):
        parse_gpu_report(with_opaque(b"\x03\x00\x03\x00a\x00b"))
    unknown = parse_gpu_report(with_opaque(report.opaque_data + b"\x63\x00\x01\x00\x07"))  # new ids are kept
    assert unknown.opaque_fields[-1].type == 0x63 and unknown.opaque_fields[-1].value == b"\x07"


def test_report_dataclass_invariants(evidence_dir: Path) -> None:
    report = parse_gpu_report(_sample(evidence_dir, NVTRUST)[0])
    with pytest.raises(EvidenceFormatError):
        replace(report, nonce=b"short")
    with pytest.raises(EvidenceFormatError):
        replace(report, signature=bytes(96))


# --- the bundle's GPU evidence, and nvtrust's list ------------------------------------------------------------------


def test_gpu_evidence_round_trip_and_binding(evidence_dir: Path) -> None:
    gpus = [_sample(evidence_dir, NVTRUST), _sample(evidence_dir, COCO)]
    data = encode_gpu_evidence(gpus)
    assert data.startswith(b'{"gpus":[{"cert_chain":"-----BEGIN CERTIFICATE-----\\n') and data.endswith(b'"version":1}')
    assert decode_gpu_evidence(data) == gpus
    assert encode_gpu_evidence(decode_gpu_evidence(data)) == data
    # REPORT_DATA hashes exactly these bytes: another GPU order is other evidence.
    other = encode_gpu_evidence(gpus[::-1])
    assert report_data(b"K", data) != report_data(b"K", other)
    hgx = _hgx(evidence_dir)
    assert decode_gpu_evidence(encode_gpu_evidence(hgx)) == hgx


def test_gpu_evidence_decode_is_strict(evidence_dir: Path) -> None:
    raw, pem = _sample(evidence_dir, NVTRUST)
    good = {"version": 1, "gpus": [{"report": raw.hex(), "cert_chain": pem}]}
    assert decode_gpu_evidence(orjson.dumps(good, option=orjson.OPT_SORT_KEYS)) == [(raw, pem)]
    bad = [
        orjson.dumps(good),  # keys not sorted
        orjson.dumps(good, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2),  # whitespace
        orjson.dumps({**good, "gpus": [{"report": raw.hex().upper(), "cert_chain": pem}]}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "version": 2}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "version": True}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "extra": 1}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "gpus": []}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "gpus": [{"report": raw.hex()}]}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "gpus": [{"report": "zz", "cert_chain": pem}]}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "gpus": [{"report": "", "cert_chain": pem}]}, option=orjson.OPT_SORT_KEYS),
        orjson.dumps({**good, "gpus": [{"report": raw.hex(), "cert_chain": 5}]}, option=orjson.OPT_SORT_KEYS),
        b"not json",
        b"[]",
    ]
    for data in bad:
        with pytest.raises(EvidenceFormatError):
            decode_gpu_evidence(data)
    with pytest.raises(ValueError):
        encode_gpu_evidence([])


def test_nvtrust_evidence_list_is_strict() -> None:
    for data in (b"{}", b"[]", b'[{"evidence": "AA=="}]', b'[{"evidence": "!!", "certificate": "AA=="}]', b"nope"):
        with pytest.raises(EvidenceFormatError):
            load_nvtrust_evidence_list(data)


def test_cc_mode_fails_closed_unless_the_policy_accepts_it_visibly(evidence_dir: Path) -> None:
    from dataclasses import replace

    sample = [_sample(evidence_dir, NVTRUST)]
    strict = verify_nvidia(sample, _policy(NVTRUST), now=NOW, expected_nonce=bytes.fromhex(NONCES[NVTRUST]))
    assert not strict.ok and _checks(strict)["gpu[0] cc mode"] is None
    lenient = verify_nvidia(sample, replace(_policy(NVTRUST), accept_unverifiable_cc_mode=True), now=NOW,
                            expected_nonce=bytes.fromhex(NONCES[NVTRUST]))
    assert lenient.ok, lenient.document()
    assert "NOT VERIFIED, accepted by policy" in lenient.document()
