"""NVIDIA reference measurements (RIMs): authentication of every shared RIM, per-index comparison against the real
reports, the documented verdict of each sample (its SOURCE.md), tampering at each layer, the raw CLI form, RIMs in
the bundle and from the gateway's RIM folder, and the GPU count policy."""

from __future__ import annotations

import base64
import datetime
import json
import re
from functools import cache
from pathlib import Path

import pytest

import ohttp
from enclave.attestation import SimulatedProvider
from enclave.attestation.errors import CollateralUnavailableError, EvidenceFormatError
from enclave.attestation.gateway_evidence import GatewayEvidence, rims_for
from enclave.attestation.nvidia import encode_gpu_evidence, load_nvtrust_evidence_list, parse_gpu_report
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.nvidia.rim import (
    NVIDIA_RIM_ROOT_SHA256,
    RIMS_CERT_KEY,
    check_rim,
    decode_rim_list,
    encode_rim_list,
    parse_rim,
)
from enclave.attestation.nvidia.verify import verify_nvidia
from enclave.attestation.policy import Policy
from enclave.attestation.result import Verdict
from enclave.attestation.verify import verify_bundle

AZURE = "hopper-595-azure-full-rim-match"
AZURE_AT = datetime.datetime(2026, 9, 16, 14, tzinfo=datetime.UTC)
AZURE_NONCE = "690bb51b904351e28100a0610fe60624255c26d7d38c53fb1285ecfed1cab17a"
AZURE_DRIVER = "NV_GPU_DRIVER_GH100_595.71.05.xml"
AZURE_VBIOS = "NV_GPU_VBIOS_1010_0210_886_96009F0004.xml"
DRIVER_INDICES = [7, *range(21, 42)]
VBIOS_INDICES = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
ANY = NvidiaPolicy(any_version=True)


def _d(root: Path, *parts: str) -> Path:
    return root.joinpath("nvidia-gpu", *parts)


@cache
def _azure(root: Path) -> list[tuple[bytes, str]]:
    obj = json.loads(_d(root, AZURE, "gpu-evidence.json").read_text())
    return load_nvtrust_evidence_list(json.dumps(obj["evidence_list"]).encode())


def _azure_rims(root: Path) -> list[bytes]:
    return [_d(root, AZURE, AZURE_DRIVER).read_bytes(), _d(root, AZURE, AZURE_VBIOS).read_bytes()]


def _checks(v: Verdict) -> dict[str, bool | None]:
    return {c.name: c.ok for c in v.checks}


def _failing(v: Verdict) -> dict[str, bool | None]:
    return {c.name: c.ok for c in v.checks if c.ok is not True}


def _verify_azure(root: Path, rims: list[bytes], *, gpus: list[tuple[bytes, str]] | None = None,
                  nonce: str = AZURE_NONCE, policy: NvidiaPolicy = ANY,
                  now: datetime.datetime = AZURE_AT) -> Verdict:
    return verify_nvidia(gpus or _azure(root), policy, now=now, expected_nonce=bytes.fromhex(nonce), rims=rims)


# --- RIM authentication on every shared RIM (rim-signature-vectors/SOURCE.md and each sample's) ---------------------

RIM_VERDICTS = [  # (folder, file, time, signature, chain, validity, product, version, active indices)
    (AZURE, AZURE_DRIVER, AZURE_AT, True, True, True, "GH100", "595.71.05", 22),
    (AZURE, AZURE_VBIOS, AZURE_AT, True, True, True, "GH100", "96.00.9F.00.04", 12),
    ("hopper-coco-trustee-driver-rim", "driver-rim-NV_GPU_DRIVER_GH100_580.95.05.xml",
     datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), True, True, True, "GH100", "580.95.05", 22),
    ("rim-signature-vectors", "NV_GPU_DRIVER_GH100_550.144.03.xml", datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC),
     True, True, True, "GH100", "550.144.03", 21),
    ("rim-signature-vectors", "incorrect_signature_driver_rim.xml", datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC),
     False, True, True, "GH100", "550.144.03", 21),
    ("rim-signature-vectors", "incorrect_cert_chain_driver_rim.xml", datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC),
     True, False, True, "GB100", "97.00.83.00.09", 20),
    ("rim-signature-vectors", "NV_GPU_DRIVER_GH100_570.124.03_expired.xml",
     datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), False, True, False, "GH100", "570.124.03", 21),
    ("rim-signature-vectors", "Driver_RIM_test_no_gpu.swidtag", datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
     True, True, True, "GH100", "545.00", 21),
    ("rim-signature-vectors", "Driver_RIM_test_no_gpu.swidtag", datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
     True, True, False, "GH100", "545.00", 21),  # expired, not invalid: the signature still verifies
    ("hopper-535-vbios-match-nvattest-sdk", "NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml",
     datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC), False, True, True, "GH100", "535.86.09", 22),
    ("blackwell-gb100-rims-atlas", "driver-rim.xml", datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC),
     True, True, True, "GB100", "595.91.07", 19),
    ("blackwell-gb100-rims-atlas", "vbios-rim.xml", datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC),
     True, True, True, "GB100", "97.00.E4.00.1E", 19),
]


@pytest.mark.parametrize(("folder", "name", "at", "sig", "chain", "valid", "product", "version", "active"),
                         RIM_VERDICTS, ids=[f"{r[1]}@{r[2]:%Y}" for r in RIM_VERDICTS])
def test_every_shared_rim_authenticates_as_documented(evidence_dir: Path, folder: str, name: str,
                                                      at: datetime.datetime, sig: bool, chain: bool, valid: bool,
                                                      product: str, version: str, active: int) -> None:
    c = check_rim(_d(evidence_dir, folder, name).read_bytes(), at)
    assert (c.signature_ok, c.chain_ok, c.validity_ok) == (sig, chain, valid), (c.signature_detail, c.chain_detail)
    assert (c.document.product, c.document.version, len(c.document.measurements)) == (product, version, active)
    assert c.authentic is (sig and chain and valid)
    if not valid:
        assert c.validity_detail.startswith("expired or not yet valid")


def test_the_pinned_rim_root_is_the_shared_one_and_not_the_device_root(evidence_dir: Path) -> None:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding


    root = x509.load_pem_x509_certificate((evidence_dir / "roots" / "nvidia_rim_root.pem").read_bytes())
    assert hashlib.sha256(root.public_bytes(Encoding.DER)).hexdigest() == NVIDIA_RIM_ROOT_SHA256
    # A RIM chained to the device identity root is refused (the two CAs never stand in for each other).
    device_root = (evidence_dir / "roots" / "nvidia_device_identity_root.pem").read_bytes()
    c = check_rim(_d(evidence_dir, AZURE, AZURE_DRIVER).read_bytes(), AZURE_AT, root_pem=device_root)
    assert not c.chain_ok and not c.authentic


def test_rim_parser_is_hardened(evidence_dir: Path) -> None:
    good = _d(evidence_dir, AZURE, AZURE_DRIVER).read_bytes()
    bomb = b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]>' + good.replace(b'name="GH100"', b'name="&a;"', 1)
    with pytest.raises(EvidenceFormatError, match="DOCTYPE"):
        parse_rim(bomb)
    with pytest.raises(EvidenceFormatError, match="not well-formed"):
        parse_rim(good[:-20])
    with pytest.raises(EvidenceFormatError, match="limit"):
        parse_rim(b" " * (256 * 1024 + 1))
    with pytest.raises(EvidenceFormatError, match="alternatives"):
        parse_rim(good.replace(b'index="7" active="True" alternatives="1"', b'index="7" active="True" alternatives="0"'))
    assert decode_rim_list(encode_rim_list([good, b"x"])) == [good, b"x"]
    with pytest.raises(EvidenceFormatError):
        decode_rim_list('["not base64!"]')


# --- the full match (hopper-595-azure-full-rim-match/SOURCE.md) -----------------------------------------------------


def test_h100_595_full_match_33_of_33_index_35_skipped(evidence_dir: Path) -> None:
    v = _verify_azure(evidence_dir, _azure_rims(evidence_dir))
    checks = _checks(v)
    assert v.ok, v.document()
    lines = [n for n in checks if n.startswith("gpu[0] measurement ")]
    assert lines == [f"gpu[0] measurement {i} ({'driver' if i in DRIVER_INDICES else 'vbios'})"
                     for i in sorted(DRIVER_INDICES + VBIOS_INDICES)]
    rims = v.claims["gpus"][0]["rims"]
    assert (rims["compared"], rims["matched"], rims["skipped"]) == (33, 33, [35])
    assert rims["driver"]["id"] == "NV_GPU_DRIVER_GH100_595.71.05"
    assert rims["vbios"]["id"] == "NV_GPU_VBIOS_1010_0210_886_96009F0004"
    skipped = next(c for c in v.checks if c.name == "gpu[0] measurement 35 (driver)")
    assert skipped.found == "not compared" and "NVDEC0 is disabled" in skipped.detail
    # CC mode is proven by the match: no accept_unverifiable_cc_mode, and NVIDIA's claims are emitted.
    assert checks["gpu[0] cc mode"] is True and not ANY.accept_unverifiable_cc_mode
    assert v.claims["gpus"][0]["secboot"] is True and v.claims["gpus"][0]["dbgstat"] == "disabled"
    for part in ("driver rim", "driver rim signature", "driver rim chain", "driver rim validity", "vbios rim",
                 "vbios rim signature", "vbios rim chain", "vbios rim validity", "rim index overlap"):
        assert checks[f"gpu[0] {part}"] is True
    # Order of the RIMs does not matter.
    assert _verify_azure(evidence_dir, _azure_rims(evidence_dir)[::-1]).ok


def test_without_rims_cc_mode_stays_unverified(evidence_dir: Path) -> None:
    v = _verify_azure(evidence_dir, [])
    assert _failing(v) == {"gpu[0] cc mode": None}


def test_one_rim_byte_fails_the_rim_signature(evidence_dir: Path) -> None:
    driver, vbios = _azure_rims(evidence_dir)
    # One hex digit of a golden value (index 7): the signed digest no longer matches.
    m = re.search(rb'index="7" active="True" alternatives="1" ns2:Hash0="([0-9a-f])', driver)
    assert m
    pos = m.start(1)
    tampered = driver[:pos] + (b"0" if driver[pos:pos + 1] != b"0" else b"1") + driver[pos + 1:]
    v = _verify_azure(evidence_dir, [tampered, vbios])
    fail = _failing(v)
    assert fail == {"gpu[0] driver rim signature": False, "gpu[0] measurements (driver)": None,
                    "gpu[0] cc mode": False}
    assert "InvalidDigest" in next(c.detail for c in v.checks if c.name == "gpu[0] driver rim signature")


def test_one_signature_byte_fails_the_rim_signature(evidence_dir: Path) -> None:
    driver, vbios = _azure_rims(evidence_dir)
    m = re.search(rb"<ds:SignatureValue>([A-Za-z0-9+/]{20})", vbios)
    assert m
    value = bytearray(base64.b64decode(m.group(1)[:16]))
    value[5] ^= 0x01
    tampered = vbios[:m.start(1)] + base64.b64encode(bytes(value)) + vbios[m.start(1) + 16:]
    v = _verify_azure(evidence_dir, [driver, tampered])
    assert _failing(v) == {"gpu[0] vbios rim signature": False, "gpu[0] measurements (vbios)": None,
                           "gpu[0] cc mode": False}


def test_one_measurement_fails_exactly_that_index_and_the_report_signature(evidence_dir: Path) -> None:
    (raw, chain), = _azure(evidence_dir)
    report = parse_gpu_report(raw)
    # Block 10 = RIM index 9 (VBIOS): flip one bit of its value in place.
    block = report.measurements[10]
    pos = raw.index(block)
    tampered = raw[:pos] + bytes([raw[pos] ^ 0x01]) + raw[pos + 1:]
    v = _verify_azure(evidence_dir, _azure_rims(evidence_dir), gpus=[(tampered, chain)])
    assert _failing(v) == {"gpu[0] signature": False, "gpu[0] measurement 9 (vbios)": False,
                           "gpu[0] cc mode": False}
    line = next(c for c in v.checks if c.name == "gpu[0] measurement 9 (vbios)")
    assert "MISMATCH against NV_GPU_VBIOS_1010_0210_886_96009F0004 issued 2026-03-12" in line.detail


def test_wrong_nonce_fails_only_the_nonce(evidence_dir: Path) -> None:
    v = _verify_azure(evidence_dir, _azure_rims(evidence_dir), nonce="00" * 32)
    assert _failing(v) == {"gpu[0] nonce": False}


def test_wrong_driver_rim_version_and_swapped_roles(evidence_dir: Path) -> None:
    driver, vbios = _azure_rims(evidence_dir)
    other = _d(evidence_dir, "hopper-coco-trustee-driver-rim", "driver-rim-NV_GPU_DRIVER_GH100_580.95.05.xml")
    v = _verify_azure(evidence_dir, [other.read_bytes(), vbios])
    fail = _failing(v)
    assert fail == {"gpu[0] driver rim": False, "gpu[0] measurements (driver)": None, "gpu[0] cc mode": False}
    assert "GH100 580.95.05" in next(c.found for c in v.checks if c.name == "gpu[0] driver rim")
    # The same RIM twice: one role has none, and two copies of one are ambiguous.
    assert "gpu[0] vbios rim" in _failing(_verify_azure(evidence_dir, [driver, driver]))


def test_rim_pins_in_the_policy(evidence_dir: Path) -> None:
    rims = _azure_rims(evidence_dir)
    ok = NvidiaPolicy(any_version=True, allowed_rim_ids=("NV_GPU_DRIVER_GH100_595.71.05",
                                                          "NV_GPU_VBIOS_1010_0210_886_96009F0004"))
    assert _verify_azure(evidence_dir, rims, policy=ok).ok
    other = NvidiaPolicy(any_version=True, allowed_rim_ids=("NV_GPU_DRIVER_GH100_595.71.05",))
    assert _failing(_verify_azure(evidence_dir, rims, policy=other)) == {"gpu[0] vbios rim": False,
                                                                         "gpu[0] cc mode": False}
    sha = NvidiaPolicy(any_version=True, allowed_rim_sha256=(
        "143005c060a5eb2866f7db046c234d27f87ae386cab20ab40d9daa706be46ea4",
        "d5dd2bc3f138713ce9a6bd9ba472cb2833e362316e4528b7f2b5d6890e4315db"))
    assert _verify_azure(evidence_dir, rims, policy=sha).ok
    assert NvidiaPolicy.from_dict({"allowed_rim_ids": ["a"], "gpu_count": 8}).gpu_count == 8
    with pytest.raises(EvidenceFormatError):
        NvidiaPolicy.from_dict({"gpu_count": 0})


def test_rims_expire_and_are_reported_as_expired(evidence_dir: Path) -> None:
    later = datetime.datetime(2028, 6, 1, tzinfo=datetime.UTC)  # both RIM leaves expired, device chain still valid
    v = _verify_azure(evidence_dir, _azure_rims(evidence_dir), now=later)
    assert _failing(v) == {"gpu[0] driver rim validity": False, "gpu[0] vbios rim validity": False,
                           "gpu[0] cc mode": False}
    assert v.claims["gpus"][0]["rims"]["matched"] == 33  # the values still match; the RIMs are no longer valid


# --- the other Hopper samples ---------------------------------------------------------------------------------------


def test_coco_580_driver_21_of_21_vbios_fails_at_index_9(evidence_dir: Path) -> None:
    folder = _d(evidence_dir, "hopper-coco-trustee")
    gpus = [(bytes.fromhex((folder / "attestation_report.hex").read_text().strip()),
             (folder / "cert_chain.pem").read_text())]
    rims = [_d(evidence_dir, "hopper-coco-trustee-driver-rim", "driver-rim-NV_GPU_DRIVER_GH100_580.95.05.xml")
            .read_bytes(), (folder / "vbios_rim_1010_0200_882_960074001A_PROD.swidtag").read_bytes()]
    at = datetime.datetime(2025, 10, 1, tzinfo=datetime.UTC)  # driver RIM valid, the 2023 VBIOS RIM expired
    v = verify_nvidia(gpus, ANY, now=at, expected_nonce=bytes.fromhex(
        "87d8e24ab336adafe228d49e83d745f6dba4ae505372b6a5704820856b343fec"), rims=rims)
    assert _failing(v) == {"gpu[0] vbios rim validity": False, "gpu[0] measurement 9 (vbios)": False,
                           "gpu[0] cc mode": False}
    rc = v.claims["gpus"][0]["rims"]
    assert (rc["compared"], rc["matched"], rc["skipped"]) == (33, 32, [35])
    driver_lines = [c for c in v.checks if c.name.endswith("(driver)") and c.found != "not compared"]
    assert len(driver_lines) == 21 and all(c.ok for c in driver_lines)


def test_535_vbios_12_of_12_with_the_2023_rim_11_of_12_with_the_reissued_one(evidence_dir: Path) -> None:
    folder = _d(evidence_dir, "hopper-535-vbios-match-nvattest-sdk")
    gpus = [(bytes.fromhex((folder / "hopperAttestationReport.txt").read_text().strip()),
             (folder / "hopperCertChain.txt").read_text())]
    nonce = bytes.fromhex("27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66")
    at = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    tampered_driver = (folder / "NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml").read_bytes()

    def vbios_lines(name: str) -> tuple[Verdict, list[tuple[int, bool | None]]]:
        v = verify_nvidia(gpus, ANY, now=at, expected_nonce=nonce,
                          rims=[tampered_driver, (folder / name).read_bytes()])
        return v, [(int(c.name.split()[2]), c.ok) for c in v.checks if c.name.endswith("(vbios)")
                   and c.name.startswith("gpu[0] measurement ")]

    v, lines = vbios_lines("1010_0200_882_96005E0001_PROD.swidtag")
    assert lines == [(i, True) for i in VBIOS_INDICES]
    # The tampered driver RIM fails its signature (and was signed after 2024) and is never compared.
    assert _failing(v) == {"gpu[0] driver rim signature": False, "gpu[0] driver rim validity": False,
                           "gpu[0] measurements (driver)": None,
                           "gpu[0] cc mode": False, "gpu[0] fwid": False}  # 535 reports carry no FWID
    _, lines = vbios_lines("NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml")
    assert [i for i, ok in lines if not ok] == [9]


# --- Blackwell --------------------------------------------------------------------------------------------------


def test_blackwell_reports_refuse_the_gb100_rims_of_another_version(evidence_dir: Path) -> None:
    rims = [_d(evidence_dir, "blackwell-gb100-rims-atlas", n).read_bytes() for n in ("driver-rim.xml", "vbios-rim.xml")]
    for folder, report, chain, chip, driver_id in (
        ("blackwell-gb100-nvattest-sdk", "blackwellAttestationReport.txt", "blackwellCertChain.txt", "GB100",
         "NV_GPU_CC_DRIVER_GB100_575.32"),
        ("blackwell-gb202-rtxpro6000-trustee-pr", "blackwellAttestationReport.txt", "blackwell_cert_chain_case1.txt",
         "GB202", "NV_GPU_CC_DRIVER_GB202_595.58.03"),
    ):
        gpus = [(bytes.fromhex(_d(evidence_dir, folder, report).read_text().strip()),
                 _d(evidence_dir, folder, chain).read_text())]
        v = verify_nvidia(gpus, ANY, now=datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC), expected_nonce=None,
                          rims=rims)
        checks = _checks(v)
        assert checks["gpu[0] driver rim"] is False and checks["gpu[0] vbios rim"] is False
        assert checks["gpu[0] cc mode"] is False and not v.ok
        line = next(c for c in v.checks if c.name == "gpu[0] driver rim")
        assert line.expected.startswith(f"{driver_id} (") and f"product {chip}" in line.expected


# --- multi-GPU, the bundle, the gateway's RIM folder, the raw CLI ---------------------------------------------------


def test_gpu_count_policy(evidence_dir: Path) -> None:
    gpus = load_nvtrust_evidence_list(_d(evidence_dir, "hgx-8gpu-ppcie-nvtrust", "gpu_evidence.json").read_bytes())
    nonce = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")
    at = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
    eight = NvidiaPolicy(any_version=True, accept_unverifiable_cc_mode=True, gpu_count=8)
    v = verify_nvidia(gpus, eight, now=at, expected_nonce=nonce)
    assert v.ok and _checks(v)["gpus policy count"] is True
    assert _failing(verify_nvidia(gpus[:7], eight, now=at, expected_nonce=nonce)) == {"gpus policy count": False}


def test_rims_travel_in_the_bundle_from_the_gateway_rim_folder(evidence_dir: Path) -> None:
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    gpu_evidence = encode_gpu_evidence(_azure(evidence_dir))

    class Recorded:
        def collect(self, nonce: bytes) -> bytes:
            return gpu_evidence

    provider = GatewayEvidence(SimulatedProvider(), gpu=Recorded(), gpu_rim_dir=_d(evidence_dir, AZURE))
    bundle = provider.collect(keys)
    assert decode_rim_list(bundle.certs[RIMS_CERT_KEY]) == _azure_rims(evidence_dir)
    verdict = verify_bundle(bundle, keys, Policy(nvidia=ANY), now=AZURE_AT, allow_simulated=True)
    checks = _checks(verdict)
    # Recorded evidence answers another nonce (the binding fails, as it must); every RIM check passes.
    assert checks["gpu[0] nonce"] is False and checks["gpu[0] cc mode"] is True
    assert all(ok for name, ok in checks.items() if name.startswith("gpu[0] measurement "))
    # A folder without the RIMs this GPU needs: the gateway says so instead of shipping evidence that cannot pass.
    with pytest.raises(CollateralUnavailableError, match="595.71.05"):
        rims_for(gpu_evidence, _d(evidence_dir, "hopper-coco-trustee-driver-rim"))


def test_raw_cli_form(evidence_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from veil_cli import main

    (raw, chain), = _azure(evidence_dir)
    (tmp_path / "report.hex").write_text(raw.hex())
    (tmp_path / "chain.pem").write_text(chain)
    driver, vbios = str(_d(evidence_dir, AZURE, AZURE_DRIVER)), str(_d(evidence_dir, AZURE, AZURE_VBIOS))
    common = ["attest", "verify", "--no-binding", "--any-measurement", "--at", "2026-09-16T14:00:00Z",
              "--nonce", AZURE_NONCE]
    both = ["--rim", driver, "--rim", vbios]

    def run(*extra: str) -> tuple[int, str]:
        try:
            code = main([*common, *extra])
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().out

    code, out = run("--gpu-evidence", str(tmp_path / "report.hex"), "--gpu-chain", str(tmp_path / "chain.pem"), *both)
    assert code == 0, out
    assert "[PASS] gpu[0] measurement 41 (driver)" in out and "RESULT: PASS" in out
    # nvtrust's JSON evidence (chain inside) works without --gpu-chain.
    code, out = run("--gpu-evidence", str(_d(evidence_dir, AZURE, "gpu-evidence.json")), *both)
    assert code == 0, out
    # One RIM only: the VBIOS indices cannot be compared, so the verdict fails.
    code, out = run("--gpu-evidence", str(tmp_path / "report.hex"), "--gpu-chain", str(tmp_path / "chain.pem"),
                    "--rim", driver)
    assert code == 4 and "[FAIL] gpu[0] vbios rim" in out


BLACKWELL = [  # (folder, report, chain, nonce, FWID prefix, CHIP_INFO, NVDEC0)
    ("blackwell-gb100-nvattest-sdk", "blackwellAttestationReport.txt", "blackwellCertChain.txt",
     "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb", "d090cab1", None, 0x55),
    ("blackwell-gb202-rtxpro6000-trustee-pr", "blackwellAttestationReport.txt", "blackwell_cert_chain_case1.txt",
     "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e", "9b92cc3e", "GB202", 0xAA),
]


@pytest.mark.parametrize(("folder", "report", "chain", "nonce", "fwid", "chip", "nvdec0"), BLACKWELL,
                         ids=[b[0] for b in BLACKWELL])
def test_blackwell_samples_verify_with_the_structural_fwid(evidence_dir: Path, folder: str, report: str, chain: str,
                                                           nonce: str, fwid: str, chip: str | None,
                                                           nvdec0: int) -> None:
    from cryptography import x509

    from enclave.attestation.nvidia.verify import OID_NVIDIA_BLACKWELL_TCB_INFO, cert_fwid

    raw = bytes.fromhex(_d(evidence_dir, folder, report).read_text().strip())
    pem = _d(evidence_dir, folder, chain).read_text()
    r = parse_gpu_report(raw)
    assert (r.chip_info, r.nvdec0_status) == (chip, nvdec0)
    v = verify_nvidia([(raw, pem)], ANY, now=datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC),
                      expected_nonce=bytes.fromhex(nonce))
    # Chain, FWID, signature, nonce: PASS (SOURCE.md). Without RIMs for these versions CC mode stays unverified.
    assert _failing(v) == {"gpu[0] cc mode": None}
    leaf = x509.load_pem_x509_certificates(pem.encode())[0]
    ext = leaf.extensions.get_extension_for_oid(OID_NVIDIA_BLACKWELL_TCB_INFO).value
    assert isinstance(ext, x509.UnrecognizedExtension)
    assert cert_fwid(leaf) == r.fwid and r.fwid is not None and r.fwid.hex().startswith(fwid)
    assert ext.value[-48:] != r.fwid  # the Hopper "tail" shortcut would pick the wrong digest
    # One bit of the report's FWID: the FWID check and the signature fail.
    pos = raw.index(r.fwid)
    tampered = raw[:pos] + bytes([raw[pos] ^ 1]) + raw[pos + 1:]
    bad = verify_nvidia([(tampered, pem)], ANY, now=datetime.datetime(2026, 9, 1, tzinfo=datetime.UTC),
                        expected_nonce=bytes.fromhex(nonce))
    assert _failing(bad) == {"gpu[0] fwid": False, "gpu[0] signature": False, "gpu[0] cc mode": None}


def test_hgx_gpu_swapped_for_another_machines_fails_its_nonce(evidence_dir: Path) -> None:
    gpus = load_nvtrust_evidence_list(_d(evidence_dir, "hgx-8gpu-ppcie-nvtrust", "gpu_evidence.json").read_bytes())
    nonce = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")
    policy = NvidiaPolicy(any_version=True, accept_unverifiable_cc_mode=True, gpu_count=8)
    swapped = [*gpus[:3], _azure(evidence_dir)[0], *gpus[4:]]
    v = verify_nvidia(swapped, policy, now=AZURE_AT, expected_nonce=nonce)
    # Every GPU is checked against the one key-derived nonce; the foreign GPU is genuine but answered another nonce
    # (and runs in another multi-GPU mode).
    assert _failing(v) == {"gpu[3] nonce": False, "gpus consistent mode": False}


def test_gpu_evidence_swapped_between_two_real_machines_fails_the_binding(evidence_dir: Path) -> None:
    from dataclasses import replace

    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    mine = encode_gpu_evidence(_azure(evidence_dir))
    coco = _d(evidence_dir, "hopper-coco-trustee")
    theirs = encode_gpu_evidence([(bytes.fromhex((coco / "attestation_report.hex").read_text().strip()),
                                   (coco / "cert_chain.pem").read_text())])
    bundle = SimulatedProvider().collect(keys, gpu_evidence=mine)
    policy = Policy(nvidia=ANY, require_gpu=True)
    honest = _checks(verify_bundle(bundle, keys, policy, now=AZURE_AT, allow_simulated=True))
    swapped = verify_bundle(replace(bundle, gpu_evidence=theirs), keys, policy, now=AZURE_AT, allow_simulated=True)
    # The CPU report binds SHA-256 of the GPU evidence bytes: the other machine's genuine GPU evidence breaks it.
    assert honest["simulated evidence signature and binding"] is True
    assert _checks(swapped)["simulated evidence"] is False
    assert "report data does not bind" in next(c.detail for c in swapped.checks if c.name == "simulated evidence")
    assert _checks(swapped)["gpu[0] signature"] is True  # genuine GPU evidence, just not this bundle's
    # require_gpu: a bundle without GPU evidence fails.
    bare = verify_bundle(replace(bundle, gpu_evidence=b""), keys, policy, now=AZURE_AT, allow_simulated=True)
    assert not bare.ok and _checks(bare)["GPU evidence present"] is False
