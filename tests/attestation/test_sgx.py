"""Intel SGX quote v3 verification against the real sample in ``shared/data/evidence/sgx``, at its documented time.

The sample (Phala dcap-qvl's ``sample/sgx_quote`` + collateral) verifies at 1750331000 with TCB status
ConfigurationAndSWHardeningNeeded (INTEL-SA-00289, INTEL-SA-00615), per its SOURCE.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import struct
import tomllib
from pathlib import Path
from typing import Any

import dcap_qvl
import pytest

from enclave.attestation import dcap
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.result import Check, Verdict
from enclave.attestation.sgx import SgxPolicy, SgxSigner
from enclave.attestation.sgx.verify import parse_quote, verify_sgx
from enclave.attestation.sgx import policy as sgx_policy
from enclave.attestation.sgx import verify as sgx_verify

SAMPLE = "quote-v3-phala-with-collateral"
T_PHALA = 1750331000  # 2025-06-19T11:03:20Z (SOURCE.md)
STATUS = "ConfigurationAndSWHardeningNeeded"
ADVISORIES = ["INTEL-SA-00289", "INTEL-SA-00615"]
MRENCLAVE = bytes.fromhex("33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb")
MRSIGNER = bytes.fromhex("815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6")
REPORT_DATA = b"Hello, world!".ljust(64, b"\x00")
FMSPC = "00a067110000"

#: The sample's platform is not UpToDate; tests of other checks allow its status explicitly.
LENIENT = SgxPolicy(mrenclaves=(MRENCLAVE,), allowed_status=("UpToDate", STATUS))

# offsets in the quote (header 48, report body at 48)
BODY = 48
OFFSETS = {
    "header.version": 0,
    "header.qe_svn": 8,
    "header.pce_svn": 10,
    "header.qe_vendor_id": 12,
    "header.user_data": 28,
    "CPUSVN": BODY + 0,
    "MISCSELECT": BODY + 16,
    "ATTRIBUTES": BODY + 48,
    "MRENCLAVE": BODY + 64,
    "reserved2": BODY + 96,
    "MRSIGNER": BODY + 128,
    "CONFIGID": BODY + 192,
    "ISVPRODID": BODY + 256,
    "ISVSVN": BODY + 258,
    "REPORTDATA": BODY + 320,
    "REPORTDATA end": BODY + 383,
}


def at(unix: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC)


def check(verdict: Verdict, name: str) -> Check:
    found = [c for c in verdict.checks if c.name == name]
    assert len(found) == 1, f"expected one {name!r} check in:\n{verdict.document()}"
    return found[0]


def failed(verdict: Verdict) -> list[str]:
    return [c.name for c in verdict.failures]


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


@pytest.fixture(scope="session")
def sample_dir(evidence_dir: Path) -> Path:
    return evidence_dir / "sgx" / SAMPLE


@pytest.fixture(scope="session")
def quote(sample_dir: Path) -> bytes:
    return (sample_dir / "quote.bin").read_bytes()


@pytest.fixture(scope="session")
def collateral(sample_dir: Path) -> str:
    return (sample_dir / "collateral.json").read_text()


def run(quote: bytes, collateral: Any, policy: SgxPolicy = LENIENT, *, unix: int = T_PHALA,
        report_data: bytes | None = None) -> Verdict:
    return verify_sgx(quote, collateral, policy, now=at(unix), expected_report_data=report_data)


# --- the pinned root ------------------------------------------------------------------------------------------------


def test_pinned_root_is_the_shared_intel_root(evidence_dir: Path) -> None:
    der = (evidence_dir / "roots" / "intel_sgx_root_ca.der").read_bytes()
    assert hashlib.sha256(der).hexdigest() == sgx_verify.INTEL_SGX_ROOT_CA_SHA256


def test_wrong_pin_fails_closed(monkeypatch: pytest.MonkeyPatch, quote: bytes, collateral: str) -> None:
    # The trust-anchor check is shared with TDX (enclave.attestation.dcap) and reads the pin from there.
    monkeypatch.setattr(dcap, "INTEL_SGX_ROOT_CA_SHA256", hashlib.sha256(b"another root").hexdigest())
    v = run(quote, collateral)
    assert check(v, "trust anchor").ok is False
    assert check(v, "DCAP verification").ok is False
    assert "no pinned trust anchor" in check(v, "DCAP verification").detail
    assert not v.ok


def test_the_pinned_certificate_is_the_anchor_dcap_qvl_uses(
    monkeypatch: pytest.MonkeyPatch, quote: bytes, collateral: str
) -> None:
    """Pin the PCK Platform CA instead: dcap-qvl must then fail, so it verifies against the pinned certificate."""
    ders = dcap.pem_certificates(parse_quote(quote).pck_chain_pem)
    assert [hashlib.sha256(d).hexdigest() == sgx_verify.INTEL_SGX_ROOT_CA_SHA256 for d in ders] == [
        False, False, True]
    monkeypatch.setattr(dcap, "INTEL_SGX_ROOT_CA_SHA256", hashlib.sha256(ders[1]).hexdigest())
    v = run(quote, collateral)
    assert check(v, "trust anchor").ok is True
    assert check(v, "DCAP verification").ok is False
    assert not v.ok


# --- the sample, with its documented result -------------------------------------------------------------------------


def test_sample_fails_the_default_policy_on_tcb_status(quote: bytes, collateral: str) -> None:
    v = run(quote, collateral, SgxPolicy(mrenclaves=(MRENCLAVE,)), report_data=REPORT_DATA)
    assert not v.ok
    assert failed(v) == ["TCB status"], v.document()
    status = check(v, "TCB status")
    assert status.found == STATUS
    assert status.expected == "one of UpToDate"
    assert status.detail == "advisories: " + ", ".join(ADVISORIES)
    assert v.claims["tcb_status"] == STATUS
    assert v.claims["advisory_ids"] == ADVISORIES
    for name in ("quote format", "parser cross-check", "QE vendor", "collateral", "collateral validity",
                 "trust anchor", "DCAP verification", "enclave debug", "measurement", "REPORTDATA binding"):
        assert check(v, name).ok is True, v.document()
    # the bare default policy also has an empty allow list
    assert failed(run(quote, collateral, SgxPolicy())) == ["TCB status", "measurement"]


def test_sample_passes_when_the_policy_allows_its_status(quote: bytes, collateral: str) -> None:
    v = run(quote, collateral, LENIENT, report_data=REPORT_DATA)
    assert check(v, "TCB status").ok is True
    assert v.ok, v.document()
    assert v.measurement == MRENCLAVE
    assert v.report_data == REPORT_DATA
    assert v.claims["fmspc"] == FMSPC
    assert v.claims["mrsigner"] == MRSIGNER.hex()
    assert (v.claims["isv_prod_id"], v.claims["isv_svn"]) == (0, 0)
    json.dumps(v.to_json())
    # allowing some other status does not help
    other = dataclasses.replace(LENIENT, allowed_status=("UpToDate", "SWHardeningNeeded", "OutOfDate"))
    assert failed(run(quote, collateral, other)) == ["TCB status"]
    assert failed(run(quote, collateral, dataclasses.replace(LENIENT, allowed_status=()))) == ["TCB status"]


def test_revoked_is_never_allowed(quote: bytes, collateral: str) -> None:
    v = run(quote, collateral, dataclasses.replace(LENIENT, allowed_status=(STATUS, "Revoked")))
    assert check(v, "TCB status").expected == f"one of {STATUS}"
    with pytest.raises(EvidenceFormatError, match="Revoked"):
        SgxPolicy.from_dict({"allowed_status": ["Revoked"]})


def test_parsed_fields_agree_with_the_verified_report(quote: bytes, collateral: str) -> None:
    q = parse_quote(quote)
    assert (q.version, q.att_key_type, q.qe_svn, q.pce_svn) == (3, 2, 10, 15)
    assert q.mr_enclave == MRENCLAVE and q.mr_signer == MRSIGNER and q.report_data == REPORT_DATA
    assert q.attributes.hex() == "0500000000000000e700000000000000" and not q.debug  # INIT | MODE64BIT
    assert q.structure_size == len(quote) == 4600
    assert q.pck_chain_pem.count(b"BEGIN CERTIFICATE") == 3
    result = dcap_qvl.verify(quote, dcap_qvl.QuoteCollateralV3.from_json(collateral), T_PHALA)
    body = json.loads(result.to_json())["report"]["SgxEnclave"]
    assert bytes.fromhex(body["mr_enclave"]) == q.mr_enclave
    assert bytes.fromhex(body["mr_signer"]) == q.mr_signer
    assert bytes.fromhex(body["report_data"]) == q.report_data
    assert (body["isv_prod_id"], body["isv_svn"], body["misc_select"]) == (q.isv_prod_id, q.isv_svn, q.misc_select)


# --- measurement allow list -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mrenclaves", "signers", "ok", "detail"), [
    ((MRENCLAVE,), (), True, "MRENCLAVE matches mrenclaves[0]"),
    ((bytes(32), MRENCLAVE), (), True, "mrenclaves[1]"),
    ((flip(MRENCLAVE, 31),), (), False, "MRENCLAVE not among 1 entries"),
    ((MRSIGNER,), (), False, "MRENCLAVE not among"),  # the signer is not an enclave measurement
    ((MRENCLAVE.hex(),), (), False, ""),  # not bytes: never matches
    ((), (SgxSigner(MRSIGNER, 0, 0),), True, "matches signers[0]"),
    ((flip(MRENCLAVE, 0),), (SgxSigner(MRSIGNER, 0, 0),), True, "matches signers[0]"),
    ((), (SgxSigner(MRSIGNER, 0, 1),), False, "ISVSVN 0 < 1"),
    ((), (SgxSigner(MRSIGNER, 1, 0),), False, "ISVPRODID 0 != 1"),
    ((), (SgxSigner(MRENCLAVE, 0, 0),), False, "MRSIGNER differs"),
    ((), (SgxSigner(bytes(32), 0, 0), SgxSigner(MRSIGNER, 0, 0)), True, "matches signers[1]"),
    ((), (), False, ""),
])
def test_measurement_allow_list(quote: bytes, collateral: str, mrenclaves: tuple[Any, ...],
                                signers: tuple[SgxSigner, ...], ok: bool, detail: str) -> None:
    policy = dataclasses.replace(LENIENT, mrenclaves=mrenclaves, signers=signers)
    v = run(quote, collateral, policy)
    m = check(v, "measurement")
    assert m.ok is ok, v.document()
    assert detail in m.detail
    assert v.ok is ok


def test_any_measurement_passes_but_says_so(quote: bytes, collateral: str) -> None:
    v = run(quote, collateral, SgxPolicy(any_measurement=True, allowed_status=(STATUS,)))
    assert v.ok
    assert "NOT pinned" in check(v, "measurement").detail


# --- REPORTDATA binding ---------------------------------------------------------------------------------------------


def test_report_data_binding(quote: bytes, collateral: str) -> None:
    assert check(run(quote, collateral, report_data=REPORT_DATA), "REPORTDATA binding").ok is True
    for wrong in (flip(REPORT_DATA, 0), flip(REPORT_DATA, 63), bytes(64), b"Hello, world!".rjust(64, b"\x00")):
        v = run(quote, collateral, report_data=wrong)
        assert failed(v) == ["REPORTDATA binding"]
    skipped = check(run(quote, collateral), "REPORTDATA binding")
    assert skipped.ok is True and skipped.detail == "binding skipped (--no-binding)"
    for bad_length in (b"Hello, world!", REPORT_DATA + b"\x00"):
        with pytest.raises(ValueError, match="64 bytes"):
            run(quote, collateral, report_data=bad_length)


# --- time and collateral --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("unix", "why"), [
    (1750330000, "not valid before"),  # 2025-06-19T10:46:40Z: before the tcbInfo issueDate (10:56:11Z)
    (1752969600, "expired"),  # 2025-07-20: after both nextUpdates
    (1893456000, "expired"),  # 2030
])
def test_outside_the_collateral_window_fails(quote: bytes, collateral: str, unix: int, why: str) -> None:
    v = run(quote, collateral, unix=unix)
    assert check(v, "collateral validity").ok is False
    assert why in check(v, "collateral validity").detail
    assert check(v, "DCAP verification").ok is False, v.document()
    assert not v.ok


def test_missing_or_foreign_collateral_fails_closed(quote: bytes, evidence_dir: Path) -> None:
    tdx_collateral = (evidence_dir / "tdx" / "quote-v4-phala-with-collateral" / "collateral.json").read_text()
    for col in (None, "", {}, "not json", tdx_collateral):
        v = run(quote, col)
        assert check(v, "collateral").ok is False
        assert check(v, "DCAP verification").ok is False
        assert check(v, "TCB status").ok is not True
        assert not v.ok
    assert "not 'SGX'" in check(run(quote, tdx_collateral), "collateral").detail


def test_collateral_as_a_mapping(quote: bytes, collateral: str) -> None:
    assert run(quote, json.loads(collateral)).ok


def test_naive_time_is_refused(quote: bytes, collateral: str) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_sgx(quote, collateral, LENIENT, now=datetime.datetime(2025, 6, 19, 11), expected_report_data=None)


# --- tampering ------------------------------------------------------------------------------------------------------


def _signature_regions(quote: bytes) -> dict[str, int]:
    q = parse_quote(quote)
    sig = 48 + 384 + 4
    auth = sig + 64 + 64 + 384 + 64 + 2
    chain = auth + len(q.qe_auth_data) + 6
    return {
        "ISV report signature": sig,
        "ISV report signature s": sig + 63,
        "attestation key": sig + 64,
        "QE report": sig + 128,
        "QE report REPORTDATA": sig + 128 + 320,
        "QE report signature": sig + 128 + 384,
        "QE auth data": auth,
        "PCK leaf certificate": chain + 100,
    }


@pytest.mark.parametrize("region", [*OFFSETS, "signature data"])
def test_bit_flip_in_a_signed_field_fails(quote: bytes, collateral: str, region: str) -> None:
    offsets = _signature_regions(quote) if region == "signature data" else {region: OFFSETS[region]}
    for name, offset in offsets.items():
        tampered = flip(quote, offset)
        try:
            v = run(tampered, collateral)
        except EvidenceFormatError:
            assert name == "header.version"  # v2 is not a v3 quote
            continue
        assert check(v, "DCAP verification").ok is False, f"{name}\n{v.document()}"
        assert not v.ok


def test_debug_bit_fails_debug_and_signature(quote: bytes, collateral: str) -> None:
    tampered = flip(quote, OFFSETS["ATTRIBUTES"], 0x02)
    assert parse_quote(tampered).debug
    v = run(tampered, collateral)
    assert check(v, "enclave debug").ok is False
    assert check(v, "DCAP verification").ok is False
    allowed = run(tampered, collateral, dataclasses.replace(LENIENT, allow_debug=True))
    assert check(allowed, "enclave debug").ok is True
    assert "debug enclave accepted by policy" in check(allowed, "enclave debug").detail
    assert not allowed.ok  # the signature still fails


# --- malformed quotes -----------------------------------------------------------------------------------------------


def _sig_len(quote: bytes) -> int:
    value: int = struct.unpack_from("<I", quote, 432)[0]
    return value


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda q: q[:47], "truncated"),
    (lambda q: q[:432], "truncated"),
    (lambda q: q[:-1], "truncated"),
    (lambda q: q + b"\x01", "trailing"),
    (lambda q: struct.pack("<H", 4) + q[2:], "version 4"),
    (lambda q: q[:4] + struct.pack("<I", 0x81) + q[8:], "not an SGX quote"),
    (lambda q: q[:2] + struct.pack("<H", 3) + q[4:], "attestation key type 3"),
    (lambda q: q[:432] + struct.pack("<I", _sig_len(q) + 2) + q[436:] + b"\x00\x00", "unexpected bytes"),
    (lambda q: b"", "truncated"),
    (lambda q: bytes(1 << 17), "too large"),
])
def test_malformed_quotes_are_refused(quote: bytes, collateral: str, mutate: Any, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        run(mutate(quote), collateral)


def test_trailing_zero_padding_is_tolerated(quote: bytes) -> None:
    q = parse_quote(quote + bytes(70))
    assert q.structure_size == len(quote)


def test_a_tdx_quote_is_not_an_sgx_quote(evidence_dir: Path) -> None:
    tdx = (evidence_dir / "tdx" / "quote-v4-phala-with-collateral" / "quote.bin").read_bytes()
    with pytest.raises(EvidenceFormatError, match="version 4"):
        parse_quote(tdx)
    with pytest.raises(EvidenceFormatError, match="not an SGX quote"):
        parse_quote(struct.pack("<H", 3) + tdx[2:])


# --- policy from TOML -----------------------------------------------------------------------------------------------


def test_policy_from_toml_drives_the_verifier(quote: bytes, collateral: str) -> None:
    text = f"""
        [sgx]
        mrenclaves = ["{bytes(32).hex()}"]
        signers = [{{ mrsigner = "{MRSIGNER.hex()}", isv_prod_id = 0, min_isv_svn = 0 }}]
        allowed_status = ["UpToDate", "{STATUS}"]
        allow_debug = false
    """
    policy = sgx_policy.from_dict(tomllib.loads(text)["sgx"])
    assert policy == SgxPolicy(mrenclaves=(bytes(32),), signers=(SgxSigner(MRSIGNER, 0, 0),),
                               allowed_status=("UpToDate", STATUS))
    assert SgxPolicy.from_dict(tomllib.loads(text)["sgx"]) == policy
    v = run(quote, collateral, policy, report_data=REPORT_DATA)
    assert v.ok, v.document()
    assert "matches signers[0]" in check(v, "measurement").detail
    stricter = tomllib.loads(text.replace("min_isv_svn = 0", "min_isv_svn = 1"))["sgx"]
    assert failed(run(quote, collateral, SgxPolicy.from_dict(stricter))) == ["measurement"]
    assert SgxPolicy.from_dict({}) == SgxPolicy()


@pytest.mark.parametrize(("table", "message"), [
    ({"any_measurement": True}, "unknown keys"),
    ({"measurements": []}, "unknown keys"),
    ({"mrenclaves": "00" * 32}, "array"),
    ({"mrenclaves": ["00" * 31]}, "64 hex"),
    ({"mrenclaves": ["00" * 48]}, "64 hex"),
    ({"signers": [{"mrsigner": "00" * 32, "isv_prod_id": 0}]}, "exactly the keys"),
    ({"signers": [{"mrsigner": "00" * 32, "isv_prod_id": 0, "min_isv_svn": 0, "x": 1}]}, "exactly the keys"),
    ({"signers": [{"mrsigner": "00" * 32, "isv_prod_id": 65536, "min_isv_svn": 0}]}, "0..65535"),
    ({"signers": [{"mrsigner": "00" * 32, "isv_prod_id": 0, "min_isv_svn": -1}]}, "0..65535"),
    ({"signers": [{"mrsigner": "00" * 32, "isv_prod_id": True, "min_isv_svn": 0}]}, "0..65535"),
    ({"allowed_status": ["Uptodate"]}, "not among"),
    ({"allowed_status": "UpToDate"}, "array"),
    ({"allow_debug": 1}, "allow_debug"),
])
def test_policy_errors(table: dict[str, Any], message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        SgxPolicy.from_dict(table)
