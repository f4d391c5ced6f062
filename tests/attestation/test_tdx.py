"""TDX quote parsing and verification against the real samples in ``shared/data/evidence/tdx``, at pinned times.

Expected results come from each sample's SOURCE.md (and, for the tinfoil quote, from tinfoil's own test expectations,
so the binding and measurement tests do not compare the quote with itself).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import dcap_qvl
import pytest

from enclave.attestation import dcap
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.policy import Policy
from enclave.attestation.tdx.policy import TdxPolicy
from enclave.attestation.result import Check, Verdict
from enclave.attestation.tdx import parse_quote, TdxQuote
from enclave.attestation.tdx.verify import verify_tdx
from enclave.attestation.tdx import verify as tdx_verify

# Verification times from the SOURCE.md files.
T_PCS_2026_01 = 1769904000  # 2026-02-01T00:00Z, inside the intel-pcs-2026-01 collateral windows
T_BEFORE_PCK_2026_01_27 = 1768867200  # 2026-01-20T00:00Z: go-tdx-guest's PCK leaf is valid only from 2026-01-27
T_PHALA = 1750331000  # 2025-06-19T11:03:20Z
T_PHALA_OUTDATED = 1771416000  # 2026-02-18T12:00Z

PCS = "collateral-intel-pcs-2026-01-tinfoil"
TINFOIL = "quote-v4-tinfoil-ohttp-binding"
GO_TDX_V5 = "quote-v5-go-tdx-guest"
TRUSTEE_OUTOFDATE = "quote-v4-trustee-outofdate"
TRUSTEE_NO_TCB = "quote-v5-trustee-no-tcb-level"
PHALA_V4 = "quote-v4-phala-with-collateral"
PHALA_V5_OUTDATED = "quote-v5-phala-outdated-with-collateral"
AZURE = "quote-v4-azure-vtpm-trustee"

# tinfoilsh/verifier attestation_test.go (TestGuestVerify) expectations for the tinfoil quote.
TINFOIL_TLS_KEY_FP = bytes.fromhex("a23b0e7747d73bba1c4a9dc4610584e37b6e9fba4d9133c2804d95572c13c0fa")
TINFOIL_HPKE_KEY = bytes.fromhex("d34fcf36c21e383632ed361527c68db541e84f89ec9268addccb892c60ea2824")
TINFOIL_MRTD = bytes.fromhex(
    "7357a10d2e2724dffe68813e3cc4cfcde6814d749f2fb62e3953e54f6e0b50a219786afe2cd478f684b52c61837e1114"
)
TINFOIL_RTMR0 = bytes.fromhex(
    "18945fe4f04d952afb91035b74c2527e38458fd972bee01b7ba02004dc0f2fec2ec90825702956cb76f52f5c1d9f5021"
)
TINFOIL_RTMR1 = bytes.fromhex(
    "896d8b9138548e63779a121b8c2b1a087ddaa39901e1fd096319ff0005b9699fe04dd13adb33063a1d65dd4bcdc2f5b1"
)
TINFOIL_RTMR2 = bytes.fromhex(
    "96a980ecd429079996c94413bc4c4c2bfcf652d626b6daf2a520206ead5065dd53001c2b583a5fbe41921581e25f669c"
)
TINFOIL_ENTRY = {"mrtd": TINFOIL_MRTD, "rtmr0": TINFOIL_RTMR0, "rtmr1": TINFOIL_RTMR1, "rtmr2": TINFOIL_RTMR2}

#: Platform tests: the workload is not what they test, so they accept any measurement (and check that it says so).
ANY = TdxPolicy(any_measurement=True)
TINFOIL_POLICY = TdxPolicy(measurements=(TINFOIL_ENTRY,))


def at(unix: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC)


def check(verdict: Verdict, name: str) -> Check:
    found = [c for c in verdict.checks if c.name == name]
    assert len(found) == 1, f"expected one {name!r} check in:\n{verdict.document()}"
    return found[0]


@pytest.fixture(scope="session")
def tdx_dir(evidence_dir: Path) -> Path:
    return evidence_dir / "tdx"


@pytest.fixture(scope="session")
def load_quote(tdx_dir: Path) -> Callable[[str], bytes]:
    def load(sample: str) -> bytes:
        if sample == AZURE:
            # az-tdx-vtpm evidence: the TD quote is base64url (unpadded) inside the JSON
            text = json.loads((tdx_dir / AZURE / "evidence-v1.json").read_text())["td_quote"]
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return (tdx_dir / sample / "quote.bin").read_bytes()

    return load


@pytest.fixture(scope="session")
def load_collateral(tdx_dir: Path) -> Callable[[str], str]:
    """By sample name (its own collateral.json) or by FMSPC (the intel-pcs-2026-01 snapshot)."""

    def load(which: str) -> str:
        if (tdx_dir / which / "collateral.json").is_file():
            return (tdx_dir / which / "collateral.json").read_text()
        return (tdx_dir / PCS / f"dcap-qvl_collateral_fmspc_{which}.json").read_text()

    return load


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def body_offset(q: TdxQuote) -> int:
    return 48 if q.version == 4 else 54


# --- the pinned root ------------------------------------------------------------------------------------------------


def test_pinned_root_is_the_shared_intel_root(evidence_dir: Path) -> None:
    der = (evidence_dir / "roots" / "intel_sgx_root_ca.der").read_bytes()
    assert hashlib.sha256(der).hexdigest() == tdx_verify.INTEL_SGX_ROOT_CA_SHA256


def test_wrong_pin_fails_closed(
    monkeypatch: pytest.MonkeyPatch, load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    monkeypatch.setattr(dcap, "INTEL_SGX_ROOT_CA_SHA256", hashlib.sha256(b"some other root").hexdigest())
    v = verify_tdx(load_quote(TINFOIL), load_collateral("90c06f000000"), ANY, now=at(T_PCS_2026_01),
                   expected_report_data=None)
    assert not v.ok
    assert check(v, "trust anchor").ok is False
    assert check(v, "DCAP verification").ok is False
    assert "no pinned trust anchor" in check(v, "DCAP verification").detail


def test_the_pinned_certificate_is_the_anchor_dcap_qvl_uses(
    monkeypatch: pytest.MonkeyPatch, load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    """Pin the Intel PCK Platform CA (an intermediate in the quote) instead: dcap-qvl must then fail, so the anchor
    it verifies against is the certificate the pin selects, not the root compiled into the library."""
    raw = load_quote(TINFOIL)
    chain = parse_quote(raw).pck_chain_pem
    assert chain is not None
    ders = [base64.b64decode(b"".join(block.split(b"-----")[0].split()))
            for block in chain.split(b"-----BEGIN CERTIFICATE-----")[1:]]
    assert [hashlib.sha256(d).hexdigest() == tdx_verify.INTEL_SGX_ROOT_CA_SHA256 for d in ders] == [False, False, True]
    monkeypatch.setattr(dcap, "INTEL_SGX_ROOT_CA_SHA256", hashlib.sha256(ders[1]).hexdigest())
    v = verify_tdx(raw, load_collateral("90c06f000000"), ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(v, "trust anchor").ok is True
    assert check(v, "DCAP verification").ok is False
    assert not v.ok


# --- every sample, with its documented result -----------------------------------------------------------------------

# (sample, collateral, unix time, verdict ok, TCB status claim, DCAP ok, substring of the DCAP detail)
SAMPLES = [
    (TINFOIL, "90c06f000000", T_PCS_2026_01, True, "UpToDate", True, ""),
    (GO_TDX_V5, "90c06f000000", T_PCS_2026_01, True, "UpToDate", True, ""),
    (GO_TDX_V5, "90c06f000000", T_BEFORE_PCK_2026_01_27, False, None, False, "Failed to verify certificate chain"),
    (TRUSTEE_OUTOFDATE, "00a06d080000", T_PCS_2026_01, False, "OutOfDate", True, ""),
    (TRUSTEE_NO_TCB, "90c06f000000", T_PCS_2026_01, False, None, False, "No matching TCB level"),
    (PHALA_V4, PHALA_V4, T_PHALA, True, "UpToDate", True, ""),
    (PHALA_V5_OUTDATED, PHALA_V5_OUTDATED, T_PHALA_OUTDATED, False, None, False, "No matching TCB level"),
]


@pytest.mark.parametrize(("sample", "collateral", "unix", "ok", "status", "dcap_ok", "dcap_detail"), SAMPLES)
def test_sample(
    load_quote: Callable[[str], bytes],
    load_collateral: Callable[[str], str],
    sample: str,
    collateral: str,
    unix: int,
    ok: bool,
    status: str | None,
    dcap_ok: bool,
    dcap_detail: str,
) -> None:
    raw = load_quote(sample)
    v = verify_tdx(raw, load_collateral(collateral), ANY, now=at(unix), expected_report_data=None)
    assert v.ok is ok, v.document()
    assert v.claims["tcb_status"] == status
    dcap = check(v, "DCAP verification")
    assert dcap.ok is dcap_ok, v.document()
    assert dcap_detail in dcap.detail
    # platform checks that hold for every sample at its documented time
    platform = ("quote format", "parser cross-check", "QE vendor", "collateral", "collateral validity", "trust anchor")
    for name in platform:
        assert check(v, name).ok is True, v.document()
    assert "any measurement was accepted" in check(v, "measurement").detail
    assert check(v, "REPORTDATA binding").detail == "binding skipped (--no-binding)"
    q = parse_quote(raw)
    assert v.measurement == q.mr_td
    assert v.report_data == q.report_data
    assert v.claims["quote_version"] == q.version
    assert v.claims["rtmrs"] == [r.hex() for r in q.rtmrs]
    assert v.claims["td_attributes"] == q.td_attributes.hex()
    assert v.claims["xfam"] == q.xfam.hex()
    assert v.claims["fmspc"] == dcap_qvl.parse_quote(raw).fmspc().lower()
    assert isinstance(v.claims["advisory_ids"], list)


def test_outofdate_passes_only_when_the_policy_allows_it(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    raw, col = load_quote(TRUSTEE_OUTOFDATE), load_collateral("00a06d080000")
    strict = verify_tdx(raw, col, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(strict, "TCB status").ok is False
    assert check(strict, "TCB status").found == "OutOfDate"
    assert [c.name for c in strict.failures] == ["TCB status"]
    lenient = TdxPolicy(any_measurement=True, allowed_status=("UpToDate", "OutOfDate"))
    v = verify_tdx(raw, col, lenient, now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(v, "TCB status").ok is True
    assert v.ok, v.document()
    nothing = dataclasses.replace(lenient, allowed_status=())
    assert not verify_tdx(raw, col, nothing, now=at(T_PCS_2026_01), expected_report_data=None).ok


@pytest.mark.parametrize(("sample", "collateral", "unix"), [
    (TRUSTEE_NO_TCB, "90c06f000000", T_PCS_2026_01),
    (PHALA_V5_OUTDATED, PHALA_V5_OUTDATED, T_PHALA_OUTDATED),
])
def test_no_matching_tcb_level_is_a_failed_check_not_an_exception(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str], sample: str, collateral: str, unix: int
) -> None:
    lenient = TdxPolicy(any_measurement=True, allowed_status=("UpToDate", "SWHardeningNeeded", "OutOfDate"))
    v = verify_tdx(load_quote(sample), load_collateral(collateral), lenient, now=at(unix), expected_report_data=None)
    status = check(v, "TCB status")
    assert status.ok is False
    assert status.found == "no matching TCB level"
    assert "No matching TCB level" in status.detail
    assert not v.ok


def test_trustee_v5_has_a_nonzero_mrservicetd(load_quote: Callable[[str], bytes]) -> None:
    q = parse_quote(load_quote(TRUSTEE_NO_TCB))
    assert q.mr_service_td is not None and any(q.mr_service_td)
    v = verify_tdx(q.raw, None, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(v, "MRSERVICETD").ok is False
    v5 = verify_tdx(load_quote(GO_TDX_V5), None, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(v5, "MRSERVICETD").ok is True


# --- the Azure vTPM TD quote: parse only, DCAP fails closed without collateral -------------------------------------


def test_azure_vtpm_quote_parses(load_quote: Callable[[str], bytes]) -> None:
    q = parse_quote(load_quote(AZURE))
    assert (q.version, q.tee_type, q.att_key_type, q.body_type) == (4, 0x81, 2, 2)
    assert q.mr_td.hex().startswith("024a32b070383331")
    assert q.td_attributes == bytes(8) and not q.debug
    assert q.report_data[32:] == bytes(32)
    assert q.pck_chain_pem is not None and q.pck_chain_pem.count(b"BEGIN CERTIFICATE") == 3
    assert dcap_qvl.parse_quote(q.raw).fmspc().lower() == "00806f050000"


@pytest.mark.parametrize("collateral", [None, "", {}, "90c06f000000"])
def test_azure_vtpm_quote_without_its_collateral_fails_closed(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str], collateral: str | dict[str, str] | None
) -> None:
    col = load_collateral(collateral) if isinstance(collateral, str) and collateral else collateral
    v = verify_tdx(load_quote(AZURE), col, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert not v.ok
    assert check(v, "collateral").ok is False
    assert check(v, "DCAP verification").ok is False
    assert check(v, "TCB status").ok is not True
    assert v.claims["tcb_status"] is None


# --- REPORTDATA binding (tinfoil: SHA-256(TLS key) || X25519 HPKE key) ----------------------------------------------


def test_report_data_binding(load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]) -> None:
    raw, col = load_quote(TINFOIL), load_collateral("90c06f000000")
    right = TINFOIL_TLS_KEY_FP + TINFOIL_HPKE_KEY
    v = verify_tdx(raw, col, TINFOIL_POLICY, now=at(T_PCS_2026_01), expected_report_data=right)
    assert check(v, "REPORTDATA binding").ok is True
    assert v.ok, v.document()
    assert v.report_data == right
    other_hpke = bytes(31) + b"\x01"
    for wrong in (
        TINFOIL_TLS_KEY_FP + other_hpke,  # a different HPKE key
        flip(right, 0),  # a different TLS key
        TINFOIL_HPKE_KEY + TINFOIL_TLS_KEY_FP,  # halves swapped
        right[:32],  # truncated
        right + b"\x00",  # too long
        bytes(64),
    ):
        v = verify_tdx(raw, col, TINFOIL_POLICY, now=at(T_PCS_2026_01), expected_report_data=wrong)
        assert check(v, "REPORTDATA binding").ok is False
        assert not v.ok
    skipped = verify_tdx(raw, col, TINFOIL_POLICY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(skipped, "REPORTDATA binding").ok is True
    assert check(skipped, "REPORTDATA binding").detail == "binding skipped (--no-binding)"


# --- measurement allow list ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entries", "ok", "detail"), [
    ((TINFOIL_ENTRY,), True, "matches entry 0 (mrtd, rtmr0, rtmr1, rtmr2)"),
    (({"mrtd": TINFOIL_MRTD},), True, "matches entry 0 (mrtd)"),
    (({"mrtd": bytes(48)}, TINFOIL_ENTRY), True, "matches entry 1"),
    ((), False, ""),
    (({**TINFOIL_ENTRY, "rtmr1": flip(TINFOIL_RTMR1, 47)},), False, "entry 0: rtmr1 differ"),
    (({**TINFOIL_ENTRY, "mrtd": TINFOIL_RTMR0},), False, "entry 0: mrtd differ"),
    (({"rtmr0": TINFOIL_RTMR0, "rtmr1": TINFOIL_RTMR1, "rtmr2": TINFOIL_RTMR2},), False, "no mrtd"),
    (({**TINFOIL_ENTRY, "rtmr3": bytes(48)},), False, "unknown keys ['rtmr3']"),
    (({**TINFOIL_ENTRY, "rtmr0": TINFOIL_RTMR0.hex()},), False, "rtmr0 differ"),  # not bytes: never matches
])
def test_measurement_allow_list(
    load_quote: Callable[[str], bytes],
    load_collateral: Callable[[str], str],
    entries: tuple[dict[str, bytes], ...],
    ok: bool,
    detail: str,
) -> None:
    policy = TdxPolicy(measurements=entries)
    v = verify_tdx(load_quote(TINFOIL), load_collateral("90c06f000000"), policy, now=at(T_PCS_2026_01),
                   expected_report_data=None)
    m = check(v, "measurement")
    assert m.ok is ok, v.document()
    assert detail in m.detail
    assert v.ok is ok


def test_measurement_allow_list_from_toml_policy(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    entry = {k: b.hex() for k, b in TINFOIL_ENTRY.items()}
    good = Policy.from_dict({"tdx": {"measurements": [entry]}}).get(TdxPolicy)
    bad = Policy.from_dict({"tdx": {"measurements": [{**entry, "rtmr2": bytes(48).hex()}]}}).get(TdxPolicy)
    raw, col = load_quote(TINFOIL), load_collateral("90c06f000000")
    assert verify_tdx(raw, col, good, now=at(T_PCS_2026_01), expected_report_data=None).ok
    assert not verify_tdx(raw, col, bad, now=at(T_PCS_2026_01), expected_report_data=None).ok
    default = verify_tdx(raw, col, TdxPolicy(), now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(default, "measurement").ok is False  # empty allow list: fail closed


# --- tampering: every signed range and the signature data ----------------------------------------------------------


def _regions(q: TdxQuote) -> dict[str, int]:
    b = body_offset(q)
    sig = q.signed_size + 4
    qe_report = sig + 64 + 64 + 6
    auth = qe_report + 384 + 64 + 2
    pck_chain = auth + len(q.qe_auth_data) + 6
    regions = {
        "header.qe_svn": 8,
        "header.pce_svn": 10,
        "header.qe_vendor_id": 12,
        "header.user_data": 28,
        "body.TEE_TCB_SVN": b,
        "body.MRSEAM": b + 16,
        "body.TDATTRIBUTES.DEBUG": b + 120,
        "body.XFAM": b + 128,
        "body.MRTD": b + 136 + 47,
        "body.MRCONFIGID": b + 184,
        "body.RTMR0": b + 328,
        "body.RTMR1": b + 376 + 20,
        "body.RTMR2": b + 424,
        "body.RTMR3": b + 472,
        "body.REPORTDATA": b + 520,
        "body.REPORTDATA.last": b + 583,
        "signature.r": sig,
        "signature.s": sig + 63,
        "attestation_key": sig + 64,
        "qe_report": qe_report + 100,
        "qe_report.report_data": qe_report + 320,
        "qe_report_signature": qe_report + 384,
        "qe_auth_data": auth,
        # a byte inside the PCK leaf certificate (PEM); the chain is not covered by the quote signature
        "pck_leaf": pck_chain + 1000,
    }
    if q.mr_service_td is not None:
        regions["body.TEE_TCB_SVN2"] = b + 584
        regions["body.MRSERVICETD"] = b + 600
    return regions


@pytest.mark.parametrize("sample", [TINFOIL, GO_TDX_V5])
def test_tampering_fails(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str], sample: str
) -> None:
    raw, col = load_quote(sample), load_collateral("90c06f000000")
    q = parse_quote(raw)
    assert verify_tdx(raw, col, ANY, now=at(T_PCS_2026_01), expected_report_data=None).ok
    regions = _regions(q)
    assert regions["pck_leaf"] < q.structure_size
    for region, offset in regions.items():
        tampered = flip(raw, offset, 0x02)
        v = verify_tdx(tampered, col, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
        assert not v.ok, f"{sample}: tampering with {region} @ {offset} still passes"
        assert check(v, "DCAP verification").ok is False, f"{region}:\n{v.document()}"
        assert v.claims["tcb_status"] is None
        assert check(v, "QE vendor").ok is (region != "header.qe_vendor_id")


def test_tampered_debug_bit_fails_the_debug_check_too(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    raw, col = load_quote(TINFOIL), load_collateral("90c06f000000")
    debug = flip(raw, 48 + 120, 0x01)
    assert parse_quote(debug).debug
    v = verify_tdx(debug, col, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert check(v, "TD debug").ok is False
    allowed = verify_tdx(debug, col, dataclasses.replace(ANY, allow_debug=True), now=at(T_PCS_2026_01),
                         expected_report_data=None)
    assert check(allowed, "TD debug").ok is True
    assert not allowed.ok  # the signature still fails


def test_tampered_report_data_fails_binding_and_signature(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    raw = load_quote(TINFOIL)
    tampered = flip(raw, 48 + 520 + 40)
    v = verify_tdx(tampered, load_collateral("90c06f000000"), TINFOIL_POLICY, now=at(T_PCS_2026_01),
                   expected_report_data=TINFOIL_TLS_KEY_FP + TINFOIL_HPKE_KEY)
    assert check(v, "REPORTDATA binding").ok is False
    assert check(v, "DCAP verification").ok is False


# --- time and collateral -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "collateral", "when", "reason"), [
    (TINFOIL, "90c06f000000", "2026-02-12T00:00:00+00:00", "expired"),  # tcbInfo/QE identity/PCK CRL nextUpdate 02-11
    (TINFOIL, "90c06f000000", "2026-01-12T00:00:00+00:00", "not valid before"),  # issued 2026-01-12T16:03Z
    (TINFOIL, "90c06f000000", "2026-06-01T00:00:00+00:00", "root CA CRL expired"),
    (PHALA_V4, PHALA_V4, "2025-06-19T10:00:00+00:00", "not valid before"),
    (PHALA_V4, PHALA_V4, "2025-08-01T00:00:00+00:00", "expired"),
])
def test_outside_collateral_validity_fails(
    load_quote: Callable[[str], bytes],
    load_collateral: Callable[[str], str],
    sample: str,
    collateral: str,
    when: str,
    reason: str,
) -> None:
    v = verify_tdx(load_quote(sample), load_collateral(collateral), ANY,
                   now=datetime.datetime.fromisoformat(when), expected_report_data=None)
    assert not v.ok
    validity = check(v, "collateral validity")
    assert validity.ok is False
    assert reason in validity.detail
    assert check(v, "DCAP verification").ok is False  # dcap-qvl agrees independently


def test_collateral_for_another_platform_fails(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    v = verify_tdx(load_quote(TINFOIL), load_collateral("00a06d080000"), ANY, now=at(T_PCS_2026_01),
                   expected_report_data=None)
    assert check(v, "collateral").ok is False
    assert "FMSPC 00a06d080000" in check(v, "collateral").detail
    assert check(v, "DCAP verification").ok is False


def test_collateral_as_object_or_string(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    raw, text = load_quote(GO_TDX_V5), load_collateral("90c06f000000")
    as_str = verify_tdx(raw, text, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    as_obj = verify_tdx(raw, json.loads(text), ANY, now=at(T_PCS_2026_01), expected_report_data=None)
    assert as_str.ok and as_obj.ok
    assert [c.ok for c in as_str.checks] == [c.ok for c in as_obj.checks]


def _mangle(text: str, key: str, value: object) -> dict[str, object]:
    obj: dict[str, object] = json.loads(text)
    if value is None:
        del obj[key]
    else:
        obj[key] = value
    return obj


@pytest.mark.parametrize(("mangle", "failing", "detail"), [
    (lambda t: "not json", "collateral", "not JSON"),
    (lambda t: "[1, 2]", "collateral", "must be a JSON object"),
    (lambda t: _mangle(t, "tcb_info", None), "collateral", "lacks (or has non-string) tcb_info"),
    (lambda t: _mangle(t, "pck_crl", 5), "collateral", "lacks (or has non-string) pck_crl"),
    (lambda t: _mangle(t, "tcb_info", "{}"), "collateral", "tcb_info is not a JSON object"),
    (lambda t: _mangle(t, "qe_identity", "[]"), "collateral", "qe_identity is not a JSON object"),
    (lambda t: _mangle(t, "pck_crl", "zz"), "collateral", "dcap-qvl refuses the collateral"),
    (lambda t: _mangle(t, "extra", b"bytes"), "collateral", "not JSON-serializable"),
    (lambda t: _mangle(t, "pck_crl", "3082"), "collateral validity", "PCK CRL: no readable validity window"),
    (lambda t: _mangle(t, "tcb_info_signature", "00" * 64), "DCAP verification", "Signature is invalid for tcb_info"),
    (lambda t: _mangle(t, "tcb_info", json.loads(t)["tcb_info"].replace('"UpToDate"', '"OutOfDate"', 1)),
     "DCAP verification", "Signature is invalid for tcb_info"),
    (lambda t: _mangle(t, "tcb_info_issuer_chain", "garbage"), "DCAP verification", "chain"),
])
def test_bad_collateral_is_a_failed_check(
    load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str],
    mangle: Callable[[str], str | dict[str, object]], failing: str, detail: str,
) -> None:
    v = verify_tdx(load_quote(TINFOIL), mangle(load_collateral("90c06f000000")), ANY,
                   now=at(T_PCS_2026_01), expected_report_data=None)
    assert not v.ok
    assert check(v, failing).ok is False
    assert detail in check(v, failing).detail
    assert check(v, "DCAP verification").ok is False
    assert v.claims["tcb_status"] is None


def test_naive_time_is_a_caller_error(load_quote: Callable[[str], bytes]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_tdx(load_quote(TINFOIL), None, ANY, now=datetime.datetime(2026, 2, 1), expected_report_data=None)


def test_a_parser_differential_fails(
    monkeypatch: pytest.MonkeyPatch, load_quote: Callable[[str], bytes], load_collateral: Callable[[str], str]
) -> None:
    """If our parse ever disagreed with the bytes dcap-qvl verified, the verdict must fail (never trust either)."""
    real_parse = tdx_verify.parse_quote

    def skewed(raw: bytes) -> TdxQuote:
        return dataclasses.replace(real_parse(raw), rtmr2=bytes(48))

    monkeypatch.setattr(tdx_verify, "parse_quote", skewed)
    v = verify_tdx(load_quote(GO_TDX_V5), load_collateral("90c06f000000"), ANY, now=at(T_PCS_2026_01),
                   expected_report_data=None)
    assert check(v, "parser cross-check").ok is False
    assert check(v, "parser cross-check").found == "differ: rtmr2"
    assert check(v, "DCAP verification").ok is False
    assert "differs from the parsed quote in rtmr2" in check(v, "DCAP verification").detail
    assert not v.ok


# --- parsing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", [TINFOIL, GO_TDX_V5, TRUSTEE_OUTOFDATE, TRUSTEE_NO_TCB, PHALA_V4,
                                    PHALA_V5_OUTDATED, AZURE])
def test_parse_agrees_with_dcap_qvl(load_quote: Callable[[str], bytes], sample: str) -> None:
    raw = load_quote(sample)
    q = parse_quote(raw)
    lib = dcap_qvl.parse_quote(raw)
    assert (q.version, q.att_key_type, q.tee_type) == (lib.header.version, lib.header.attestation_key_type, 0x81)
    assert q.qe_vendor_id == bytes(lib.header.qe_vendor_id) == bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
    r = lib.report
    assert (q.mr_td, q.rtmr0, q.rtmr1, q.rtmr2, q.rtmr3) == (r.mr_td, r.rt_mr0, r.rt_mr1, r.rt_mr2, r.rt_mr3)
    assert (q.report_data, q.td_attributes, q.xfam, q.mr_config_id) == (r.report_data, r.td_attributes, r.xfam,
                                                                        r.mr_config_id)
    assert q.signed_bytes == raw[: q.signed_size]
    assert raw[q.structure_size:] == bytes(len(raw) - q.structure_size)
    if q.version == 4:
        assert q.body_type == 2 and q.mr_service_td is None and q.tee_tcb_svn2 is None
        assert q.signed_size == 48 + 584 and len(raw) - q.structure_size == 70  # QGS buffer padding
    else:
        assert q.body_type == 3 and q.signed_size == 54 + 648
        assert (q.tee_tcb_svn2, q.mr_service_td) == (r.tee_tcb_svn2, r.mr_service_td)


def test_parse_known_fields(load_quote: Callable[[str], bytes]) -> None:
    tinfoil = parse_quote(load_quote(TINFOIL))
    assert (tinfoil.mr_td, tinfoil.rtmr0, tinfoil.rtmr1, tinfoil.rtmr2) == (
        TINFOIL_MRTD, TINFOIL_RTMR0, TINFOIL_RTMR1, TINFOIL_RTMR2)
    assert tinfoil.rtmr3 == bytes(48)
    assert tinfoil.report_data == TINFOIL_TLS_KEY_FP + TINFOIL_HPKE_KEY
    assert tinfoil.td_attributes.hex() == "0000001000000000" and not tinfoil.debug
    v5 = parse_quote(load_quote(GO_TDX_V5))
    assert v5.td_report_version == "1.5"
    assert v5.tee_tcb_svn2 is not None and v5.tee_tcb_svn2.hex().startswith("0d0104")
    assert v5.mr_service_td == bytes(48)
    assert v5.report_data.hex().startswith("945eaacf") and v5.report_data.hex().endswith("5c3a")
    phala = parse_quote(load_quote(PHALA_V4))
    assert phala.mr_td.hex().startswith("91eb2b44") and phala.mr_td.hex().endswith("18b7")
    assert phala.report_data.hex().startswith("9a9d48e7") and phala.report_data.hex().endswith("3f20")


def test_sgx_quote_is_rejected(evidence_dir: Path) -> None:
    sample = evidence_dir / "sgx" / "quote-v3-phala-with-collateral"
    raw = (sample / "quote.bin").read_bytes()
    with pytest.raises(EvidenceFormatError, match="TEE type"):
        parse_quote(raw)
    with pytest.raises(EvidenceFormatError, match="TEE type 0x00"):
        verify_tdx(raw, (sample / "collateral.json").read_text(), ANY, now=at(T_PHALA), expected_report_data=None)
    # an SGX quote relabelled as version 4 is still refused for its TEE type
    with pytest.raises(EvidenceFormatError, match="TEE type"):
        parse_quote(struct.pack("<H", 4) + raw[2:])


@pytest.mark.parametrize("sample", [TINFOIL, GO_TDX_V5])
def test_every_truncation_is_a_format_error(load_quote: Callable[[str], bytes], sample: str) -> None:
    raw = load_quote(sample)
    q = parse_quote(raw)
    for cut in range(q.structure_size):
        with pytest.raises(EvidenceFormatError):
            parse_quote(raw[:cut])
    # the padding is not part of the structure: without it (or with more) the quote is the same
    assert parse_quote(raw[: q.structure_size]).mr_td == q.mr_td
    assert parse_quote(raw + bytes(10)).mr_td == q.mr_td


def _with(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(("sample", "edit", "message"), [
    (TINFOIL, lambda r: _with(r, 0, "<H", 3), "version 3"),
    (TINFOIL, lambda r: _with(r, 0, "<H", 6), "version 6"),
    (TINFOIL, lambda r: _with(r, 2, "<H", 3), "attestation key type 3"),
    (TINFOIL, lambda r: _with(r, 4, "<I", 0x82), "TEE type 0x82"),
    (TINFOIL, lambda r: r[:-1] + b"\x01", "trailing bytes"),
    (TINFOIL, lambda r: r + b"\x00\x01", "trailing bytes"),
    (TINFOIL, lambda r: _with(r, 48 + 584, "<I", 4300 + 100), "signature data needs 4400 bytes"),
    (TINFOIL, lambda r: _with(r, 48 + 584, "<I", 4300 + 1), "1 unexpected bytes after the certification data"),
    (TINFOIL, lambda r: _with(r, 48 + 584, "<I", 4300 - 1), "certification data needs 4166 bytes"),
    (TINFOIL, lambda r: _with(r, 48 + 584 + 4 + 128 + 2, "<I", 4166 + 1), "certification data needs 4167 bytes"),
    (TINFOIL, lambda r: _with(r, 48 + 584 + 4 + 128 + 6 + 384 + 64, "<H", 0xFFFF), "QE auth data needs 65535"),
    (TINFOIL, lambda r: _with(r, 48 + 584 + 4 + 128 + 6 + 384 + 64 + 2 + 32 + 2, "<I", 3679),
     "nested certification data needs 3679"),
    (TINFOIL, lambda r: _with(r, 48 + 584 + 4 + 128, "<H", 5), "certification data type 5"),
    (TINFOIL, lambda r: _with(_with(r, 48 + 584, "<I", 4300 + 1), 48 + 584 + 4 + 128 + 2, "<I", 4166 + 1),
     "1 unexpected bytes after the nested certification data"),
    (GO_TDX_V5, lambda r: _with(r, 48, "<H", 4), "body type 4"),
    (GO_TDX_V5, lambda r: _with(r, 48, "<H", 1), "body type 1"),
    (GO_TDX_V5, lambda r: _with(r, 48, "<H", 2), "body size 648"),
    (GO_TDX_V5, lambda r: _with(r, 50, "<I", 584), "body size 584"),
    (TINFOIL, lambda r: b"", "truncated"),
    (TINFOIL, lambda r: bytes(100_000), "too large"),
])
def test_malformed_quotes(
    load_quote: Callable[[str], bytes], sample: str, edit: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_quote(edit(load_quote(sample)))
    with pytest.raises(EvidenceFormatError):
        verify_tdx(edit(load_quote(sample)), None, ANY, now=at(T_PCS_2026_01), expected_report_data=None)
