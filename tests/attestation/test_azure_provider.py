"""The Azure CVM evidence provider (gateway side), driven through its TPM and HTTP interfaces.

Two kinds of test:
* replay: the vTPM and IMDS answer with recorded outputs of real Azure CVMs (trustee's ``az-snp-vtpm`` and
  ``az-tdx-vtpm`` evidence); the bundle the provider assembles must pass the client's verifier everywhere except
  the binding of *our* key (the recorded quote was made for another nonce), and fail exactly there;
* real tools: :class:`Tpm2Tools` against ``swtpm``, a TPM 2.0 in software (NV define/write/read, a quote the
  client-side TPM code verifies). swtpm cannot hold the 2.6 KB HCL report (its NV indices stop at 2 KiB), so the
  whole provider against swtpm ends at the clear "no HCL report" error a non-Azure machine gives.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from enclave.attestation.azure.verify import AzureCvmEvidence, load_trustee_evidence, PLATFORM_SNP, PLATFORM_TDX
from enclave.attestation.azure.maa import jwk_thumbprint
from enclave.attestation.azure import provider as azure_provider
from enclave.attestation.azure.hcl import parse_hcl_report
from enclave.attestation.azure.policy import AzurePolicy, MaaPolicy
from enclave.attestation.azure.provider import AzureEvidenceError, AzureVtpmProvider
from enclave.attestation.azure.tpm import digest_matches, parse_quote, parse_signature, verify_signature
from enclave.attestation.azure.vtpm import (
    AK_HANDLE,
    HCL_REPORT_NV_INDEX,
    QUOTE_PCRS,
    USER_DATA_NV_INDEX,
    QuoteOutput,
    Tpm2Tools,
    TpmError,
)
from enclave.attestation.bundle import Bundle, azure_tpm_nonce, report_data
from enclave.attestation.policy import Policy
from enclave.attestation.snp.policy import SnpPolicy
from enclave.attestation.verify import verify_bundle

pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")

NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
KEYS = b"\x00\x2a" + bytes(range(42))  # any key-configuration bytes: the binding is what matters here
V2_LAUNCH = "5b0ce64ad1c1f6375dbda5f760b98526ca1bcf91b8195091afc28e7b024251d68fe32e05af34048d6607678cd23283ff"
MAA_CVM_ISS = "https://sharedweu.weu.attest.azure.net"
MAA_CVM_NBF = 1680173374


class RecordedVtpm:
    """A vTPM that answers with one recorded Azure evidence, and records what it was asked."""

    def __init__(self, ev: AzureCvmEvidence, *, defined: bool = True) -> None:
        self.ev = ev
        self.indices = {HCL_REPORT_NV_INDEX} | ({USER_DATA_NV_INDEX} if defined else set())
        self.calls: list[tuple[Any, ...]] = []

    def nv_indices(self) -> set[int]:
        return set(self.indices)

    def nv_define(self, index: int, size: int) -> None:
        self.calls.append(("define", index, size))
        self.indices.add(index)

    def nv_write(self, index: int, data: bytes) -> None:
        self.calls.append(("write", index, data))

    def nv_read(self, index: int) -> bytes:
        self.calls.append(("read", index))
        return self.ev.hcl_report

    def quote(self, ak_handle: int, pcrs: Sequence[int], nonce: bytes) -> QuoteOutput:
        self.calls.append(("quote", ak_handle, tuple(pcrs), nonce))
        return QuoteOutput(self.ev.tpm_quote, self.ev.tpm_signature, dict(self.ev.pcrs))


class RecordedHttp:
    """IMDS / MAA answering from a table of (method, url) -> body; records the requests."""

    def __init__(self, answers: dict[tuple[str, str], bytes]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, str, bytes, dict[str, str]]] = []

    def get(self, url: str, headers: dict[str, str]) -> bytes:
        self.requests.append(("GET", url, b"", headers))
        return self.answers[("GET", url)]

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> bytes:
        self.requests.append(("POST", url, body, headers))
        return self.answers[("POST", url)]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def v2(evidence_dir: Path) -> AzureCvmEvidence:
    d = evidence_dir / "sev-snp" / "milan-vcek-v3-azure-vtpm-trustee"
    return load_trustee_evidence((d / "evidence-v2.json").read_text())


@pytest.fixture(scope="module")
def tdx(evidence_dir: Path) -> AzureCvmEvidence:
    return load_trustee_evidence((evidence_dir / "tdx" / "quote-v4-azure-vtpm-trustee" / "evidence-v1.json").read_text())


@pytest.fixture(scope="module")
def thim(v2: AzureCvmEvidence, evidence_dir: Path) -> bytes:
    """The IMDS THIM answer of that VM: its VCEK and the Milan ASK + ARK."""
    chain = (evidence_dir / "roots" / "amd_milan_ask_ark.pem").read_text()
    return json.dumps({"vcekCert": v2.certs["vcek"], "certificateChain": chain, "tcbm": "DB18000000000004"}).encode()


def recorded_nonce(monkeypatch: pytest.MonkeyPatch, nonce: bytes) -> list[bytes]:
    """Make the provider ask for the nonce the recorded vTPM was asked for; returns the bindings it derived it from."""
    seen: list[bytes] = []

    def fake(binding: bytes) -> bytes:
        seen.append(binding)
        return nonce

    monkeypatch.setattr(azure_provider, "azure_tpm_nonce", fake)
    return seen


def snp_policy() -> Policy:
    return Policy(platforms=(PLATFORM_SNP,), snp=SnpPolicy(measurements=(bytes.fromhex(V2_LAUNCH),)),
                  azure=AzurePolicy(any_measurement=True))


def failed(v: Any) -> set[str]:
    return {c.name for c in v.checks if c.ok is not True}


# --- replay of a real Azure SNP CVM ----------------------------------------------------------------------------------


def test_snp_bundle_from_recorded_vtpm_verifies_and_fails_only_at_our_binding(
    v2: AzureCvmEvidence, thim: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = parse_quote(v2.tpm_quote).extra_data  # 48 bytes, also in the HCL user-data
    bindings = recorded_nonce(monkeypatch, recorded)
    tpm = RecordedVtpm(v2)
    http = RecordedHttp({("GET", "http://imds.test/metadata/THIM/amd/certification"): thim})
    provider = AzureVtpmProvider(tpm, http, imds_url="http://imds.test/", refresh_delay=0)
    assert provider.platform == PLATFORM_SNP
    client_nonce = bytes(range(32))
    bundle = provider.collect(KEYS, client_nonce)

    # What the vTPM was asked: user data = nonce || zero padding into 0x01400002, then the HCL report, then a quote
    # of all 24 SHA-256 PCRs by the AK with that nonce.
    assert bindings == [report_data(KEYS, b"", client_nonce)]
    assert tpm.calls[1] == ("write", USER_DATA_NV_INDEX, recorded + bytes(16))
    assert tpm.calls[2] == ("read", HCL_REPORT_NV_INDEX)
    assert tpm.calls[-1] == ("quote", AK_HANDLE, QUOTE_PCRS, recorded)
    assert http.requests == [("GET", "http://imds.test/metadata/THIM/amd/certification", b"",
                              {"Metadata": "true"})]
    assert bundle.platform == PLATFORM_SNP and bundle.report == v2.hcl_report and bundle.nonce == client_nonce

    # Through JSON, as a client receives it.
    received = Bundle.from_json(bundle.to_json())
    audit = verify_bundle(received, KEYS, snp_policy(), now=NOW, check_binding=False)
    assert audit.ok, failed(audit)
    names = {c.name for c in audit.checks}
    assert {"SNP: report signature", "TPM quote signature", "PCR digest", "TPM nonce binding"} <= names

    bound = verify_bundle(received, KEYS, snp_policy(), now=NOW)
    assert failed(bound) == {"TPM nonce binding"}


def test_cached_vcek_chain_is_fetched_once(v2: AzureCvmEvidence, thim: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded_nonce(monkeypatch, parse_quote(v2.tpm_quote).extra_data)
    http = RecordedHttp({("GET", "http://169.254.169.254/metadata/THIM/amd/certification"): thim})
    provider = AzureVtpmProvider(RecordedVtpm(v2), http, refresh_delay=0)
    first, second = provider.collect(KEYS), provider.collect(KEYS)
    assert first.certs["vcek"] == second.certs["vcek"] and len(http.requests) == 1


def test_user_data_index_is_defined_when_missing(v2: AzureCvmEvidence, thim: bytes,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    recorded_nonce(monkeypatch, parse_quote(v2.tpm_quote).extra_data)
    tpm = RecordedVtpm(v2, defined=False)
    http = RecordedHttp({("GET", "http://169.254.169.254/metadata/THIM/amd/certification"): thim})
    AzureVtpmProvider(tpm, http, refresh_delay=0).collect(KEYS)
    assert ("define", USER_DATA_NV_INDEX, 64) in tpm.calls


def test_report_that_never_takes_our_user_data_is_an_error(v2: AzureCvmEvidence) -> None:
    # Without the recorded nonce the HCL report's user-data is never ours: a stale report must not be published.
    tpm = RecordedVtpm(v2)
    provider = AzureVtpmProvider(tpm, RecordedHttp({}), refresh_tries=3, refresh_delay=0)
    with pytest.raises(AzureEvidenceError, match="did not pick up the user data after 3 reads"):
        provider.collect(KEYS)
    assert [c[0] for c in tpm.calls].count("read") == 1 + 3  # one at start-up, three tries
    assert not any(c[0] == "quote" for c in tpm.calls)


def test_real_nonce_is_sha256_of_binding(v2: AzureCvmEvidence) -> None:
    tpm = RecordedVtpm(v2)
    with pytest.raises(AzureEvidenceError):
        AzureVtpmProvider(tpm, RecordedHttp({}), refresh_tries=1, refresh_delay=0).collect(KEYS, bytes(32))
    written = [c[2] for c in tpm.calls if c[0] == "write"]
    assert written == [hashlib.sha256(report_data(KEYS, b"", bytes(32))).digest() + bytes(32)]
    assert written[0][:32] == azure_tpm_nonce(report_data(KEYS, b"", bytes(32)))


@pytest.mark.parametrize("body,match", [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    (json.dumps({"vcekCert": "x", "certificateChain": "y"}).encode(), "lacks vcekCert"),
])
def test_bad_imds_answers_are_clear_errors(v2: AzureCvmEvidence, monkeypatch: pytest.MonkeyPatch, body: bytes,
                                          match: str) -> None:
    recorded_nonce(monkeypatch, parse_quote(v2.tpm_quote).extra_data)
    http = RecordedHttp({("GET", "http://169.254.169.254/metadata/THIM/amd/certification"): body})
    with pytest.raises(AzureEvidenceError, match=match):
        AzureVtpmProvider(RecordedVtpm(v2), http, refresh_delay=0).collect(KEYS)


def test_not_an_hcl_report_is_refused_at_start(v2: AzureCvmEvidence) -> None:
    broken = dataclasses.replace(v2, hcl_report=b"\x00" * 2600)
    with pytest.raises(AzureEvidenceError, match="holds no HCL report"):
        AzureVtpmProvider(RecordedVtpm(broken), RecordedHttp({}))


# --- replay of a real Azure TDX CVM ----------------------------------------------------------------------------------


def test_tdx_bundle_asks_imds_for_the_td_quote_of_the_hcl_td_report(
    tdx: AzureCvmEvidence, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This recording's HCL user-data is 64 zero bytes: ask for "no nonce" so the recorded report is the fresh one.
    recorded_nonce(monkeypatch, b"")
    assert tdx.td_quote is not None
    url = "http://169.254.169.254/acc/tdquote"
    http = RecordedHttp({("POST", url): json.dumps({"quote": b64url(tdx.td_quote)}).encode()})
    provider = AzureVtpmProvider(RecordedVtpm(tdx), http, refresh_delay=0)
    assert provider.platform == PLATFORM_TDX
    bundle = provider.collect(KEYS)
    (method, got_url, body, headers), = http.requests
    assert (method, got_url, headers) == ("POST", url, {"Content-Type": "application/json"})
    assert json.loads(body) == {"report": b64url(parse_hcl_report(tdx.hcl_report).td_report)}
    assert base64.b64decode(bundle.certs["td_quote"]) == tdx.td_quote
    # The client: binding and TPM pass with the TD quote attached; DCAP fails closed without collateral.
    v = verify_bundle(Bundle.from_json(bundle.to_json()), KEYS,
                      Policy(platforms=(PLATFORM_TDX,), azure=AzurePolicy(any_measurement=True)),
                      now=NOW, check_binding=False)
    assert "runtime data binding (TD quote REPORTDATA)" not in failed(v)
    assert "TPM quote signature" not in failed(v) and "PCR digest" not in failed(v)
    assert not v.ok


# --- the optional MAA token ------------------------------------------------------------------------------------------


def test_maa_token_is_requested_attached_and_verified_when_the_policy_names_maa(
    v2: AzureCvmEvidence, thim: bytes, evidence_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded_nonce(monkeypatch, parse_quote(v2.tpm_quote).extra_data)
    d = evidence_dir / "azure-maa" / "cvm-snp-sharedweu-guestattestation"
    token, jwks = (d / "token.jwt").read_text().strip(), (d / "maa_signing_keys.json").read_bytes()
    maa = "https://maa.test"
    http = RecordedHttp({
        ("GET", "http://169.254.169.254/metadata/THIM/amd/certification"): thim,
        ("POST", maa + "/attest/SevSnpVm?api-version=2022-08-01"): json.dumps({"token": token}).encode(),
        ("GET", maa + "/certs"): jwks,
    })
    provider = AzureVtpmProvider(RecordedVtpm(v2), http, maa_url=maa + "/", refresh_delay=0)
    bundle = provider.collect(KEYS)
    post = [r for r in http.requests if r[0] == "POST"][0]
    body = json.loads(post[2])
    hcl = parse_hcl_report(v2.hcl_report)
    report = json.loads(base64.urlsafe_b64decode(body["report"] + "=="))
    assert base64.urlsafe_b64decode(report["SnpReport"] + "==") == hcl.snp_report
    assert "BEGIN CERTIFICATE" in base64.urlsafe_b64decode(report["VcekCertChain"] + "==").decode()
    assert body["runtimeData"] == {"data": b64url(hcl.runtime_data), "dataType": "JSON"}
    assert bundle.certs["maa_token"] == token and json.loads(bundle.certs["maa_jwks"]) == json.loads(jwks)

    received = Bundle.from_json(bundle.to_json())
    when = datetime.datetime.fromtimestamp(MAA_CVM_NBF + 60, datetime.UTC)
    # No [maa] issuers: the token is carried but not used, and the document says so.
    plain = verify_bundle(received, KEYS, snp_policy(), now=when, check_binding=False)
    assert not any(c.name.startswith("MAA") for c in plain.checks)
    assert "not verified" in plain.claims["maa_token"]
    # With [maa] issuers and the signing key pinned: every token check is in the verdict and can fail it. This
    # recorded token (another VM's) is genuine, so all pass without binding; bound to our key, it fails at its
    # runtime binding, as the TPM quote does. (The recorded token, of March 2023, is older than this recorded VM's
    # VCEK: that check fails at the token's time.)
    pins = tuple(jwk_thumbprint(k) for k in json.loads(jwks)["keys"])
    policy = dataclasses.replace(snp_policy(), maa=MaaPolicy(issuers=(MAA_CVM_ISS,), any_measurement=True,
                                                             allow_rsa1024=True, key_thumbprints=pins))
    v = verify_bundle(received, KEYS, policy, now=when, check_binding=False)
    vcek_too_new = "SNP: certificate validity"
    maa_checks = {c.name for c in v.checks if c.name.startswith("MAA token: ")}
    assert len(maa_checks) == 12 and failed(v) == {vcek_too_new}
    bound = verify_bundle(received, KEYS, policy, now=when)
    assert failed(bound) == {vcek_too_new, "TPM nonce binding", "MAA token: runtime key binding"}
    late = verify_bundle(received, KEYS, policy, now=when + datetime.timedelta(days=1), check_binding=False)
    assert failed(late) == {vcek_too_new, "MAA token: validity"}
    # The attachments are not signed: a dropped token, or keys that are not pinned, fail when MAA is required.
    dropped = dataclasses.replace(received, certs={k: v for k, v in received.certs.items() if k != "maa_token"})
    assert failed(verify_bundle(dropped, KEYS, policy, now=when, check_binding=False)) == {vcek_too_new,
                                                                                          "MAA token present"}
    unpinned = dataclasses.replace(policy, maa=dataclasses.replace(policy.get(MaaPolicy), key_thumbprints=()))
    assert failed(verify_bundle(received, KEYS, unpinned, now=when, check_binding=False)) == {
        vcek_too_new, "MAA signing keys pinned"}
    # The gateway collects again halfway to the token's exp (8 hours after iat).
    exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    assert provider.evidence_expiry(bundle) == exp
    assert provider.evidence_expiry(dataclasses.replace(bundle, certs={})) is None


# --- tpm2-tools against swtpm ----------------------------------------------------------------------------------------

SWTPM_TOOLS = ("swtpm", "tpm2_createprimary", "tpm2_evictcontrol", "tpm2_readpublic", *Tpm2Tools.TOOLS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _free_port_pair() -> int:
    for _ in range(50):
        port = _free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two adjacent free ports on loopback")


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A fresh software TPM on loopback with an RSA-2048 RSASSA/SHA-256 restricted signing key at 0x81000003, as
    Azure's vTPM has its AK. Yields (TCTI, directory)."""
    missing = [t for t in SWTPM_TOOLS if shutil.which(t) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} missing: scripts/test installs swtpm and tpm2-tools")
        pytest.skip(f"{missing} not installed (apt install swtpm tpm2-tools)")
    d = tmp_path_factory.mktemp("swtpm")
    port = _free_port_pair()
    ctrl = port + 1  # the swtpm TCTI talks to the control channel at port + 1
    proc = subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={d}", "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1", "--flags", "not-need-init,startup-clear"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tcti = f"swtpm:host=127.0.0.1,port={port}"
    env = {**os.environ, "TPM2TOOLS_TCTI": tcti}
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("swtpm did not start")
                time.sleep(0.05)
        ctx = str(d / "ak.ctx")
        for argv in (
            ["tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "rsa2048:rsassa-sha256:null", "-a",
             "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda", "-c", ctx],
            ["tpm2_evictcontrol", "-C", "o", "-c", ctx, f"0x{AK_HANDLE:08x}"],
            ["tpm2_readpublic", "-c", f"0x{AK_HANDLE:08x}", "-f", "pem", "-o", str(d / "ak.pem")],
        ):
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{argv[0]}: {done.stderr}"
        yield tcti, d
    finally:
        proc.terminate()
        proc.wait(10)


def test_tpm2_tools_nv_user_data_round_trip(swtpm: tuple[str, Path]) -> None:
    tpm = Tpm2Tools(swtpm[0])
    if USER_DATA_NV_INDEX not in tpm.nv_indices():
        tpm.nv_define(USER_DATA_NV_INDEX, 64)
    assert USER_DATA_NV_INDEX in tpm.nv_indices()
    for data in (bytes(range(64)), b"\xff" * 64):
        tpm.nv_write(USER_DATA_NV_INDEX, data)
        assert tpm.nv_read(USER_DATA_NV_INDEX) == data


def test_tpm2_tools_reads_an_index_larger_than_one_tpm_buffer(swtpm: tuple[str, Path]) -> None:
    # The HCL report is read in several TPM2_NV_Read calls (NV buffers are 1 KiB); 2 KiB is swtpm's largest index.
    tpm = Tpm2Tools(swtpm[0])
    index = 0x01500010
    tpm.nv_define(index, 2048)
    data = hashlib.shake_256(b"hcl").digest(2048)
    tpm.nv_write(index, data)
    assert tpm.nv_read(index) == data


def test_tpm2_tools_quote_verifies_with_the_client_code(swtpm: tuple[str, Path]) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    tpm = Tpm2Tools(swtpm[0])
    nonce = azure_tpm_nonce(report_data(KEYS, b"", bytes(32)))
    out = tpm.quote(AK_HANDLE, QUOTE_PCRS, nonce)
    ak = load_pem_public_key((swtpm[1] / "ak.pem").read_bytes())
    assert isinstance(ak, rsa.RSAPublicKey)
    quote = parse_quote(out.message)
    assert quote.extra_data == nonce
    assert verify_signature(quote, parse_signature(out.signature, ak), ak) is None
    assert digest_matches(quote, out.pcrs)[0]
    assert sorted(out.pcrs) == list(QUOTE_PCRS)
    # A changed PCR value or a flipped message byte is caught by the same client code.
    assert not digest_matches(quote, {**out.pcrs, 0: b"\x01" * 32})[0]
    flipped = bytearray(out.message)
    flipped[-1] ^= 1
    assert verify_signature(parse_quote(bytes(flipped)), parse_signature(out.signature, ak), ak) is not None


def test_tpm2_tools_errors_are_clear(swtpm: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    tpm = Tpm2Tools(swtpm[0])
    with pytest.raises(TpmError, match="tpm2_quote failed"):
        tpm.quote(0x81000099, QUOTE_PCRS, b"n")
    with pytest.raises(TpmError, match="at most 48"):
        tpm.quote(AK_HANDLE, QUOTE_PCRS, bytes(49))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TpmError, match="install tpm2-tools"):
        Tpm2Tools()


def test_provider_on_a_tpm_without_hcl_report_says_so(swtpm: tuple[str, Path]) -> None:
    with pytest.raises(AzureEvidenceError, match="0x01400001.*Azure confidential VM"):
        AzureVtpmProvider(Tpm2Tools(swtpm[0]))


def test_gateway_refuses_to_start_with_azure_attestation_on_a_plain_tpm(swtpm: tuple[str, Path]) -> None:
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "veil_cli", "gateway", "--attestation", "azure", "--engine", "echo",
                          "--tpm-tcti", swtpm[0], "--listen", f"127.0.0.1:{_free_port()}"],
                         capture_output=True, text=True, timeout=60, cwd=repo)
    assert out.returncode != 0
    assert "--attestation azure" in out.stderr and "Azure confidential VM" in out.stderr
    assert "Traceback" not in out.stderr


def test_simulated_attestation_is_refused_where_the_tpm_holds_an_hcl_report(swtpm: tuple[str, Path]) -> None:
    # Last in this module: it defines the HCL index in the shared swtpm, and removes it again.
    tcti = swtpm[0]
    env = {**os.environ, "TPM2TOOLS_TCTI": tcti}
    index = f"0x{HCL_REPORT_NV_INDEX:08x}"
    subprocess.run(["tpm2_nvdefine", index, "-C", "o", "-s", "64", "-a", "ownerread|ownerwrite|authread|authwrite"],
                   env=env, check=True, capture_output=True)
    try:
        repo = Path(__file__).resolve().parents[2]
        out = subprocess.run([sys.executable, "-m", "veil_cli", "gateway", "--attestation", "simulated", "--engine",
                              "echo", "--tpm-tcti", tcti, "--listen", f"127.0.0.1:{_free_port()}"],
                             capture_output=True, text=True, timeout=60, cwd=repo)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert "an Azure HCL report in the vTPM" in out.stderr and "refusing to publish simulated" in out.stderr
    finally:
        subprocess.run(["tpm2_nvundefine", index, "-C", "o"], env=env, check=True, capture_output=True)
