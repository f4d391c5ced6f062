"""``veil attest verify``, run as a real process on the real samples: each raw form gives the documented result
and exit code (0 pass, 3 unparsable, 4 a check failed), a bundle file too, and the document says what it did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from enclave.attestation import SimulatedProvider

REPO = Path(__file__).resolve().parents[2]


def attest(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veil_cli", "attest", "verify", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


AUDIT = ("--no-binding", "--any-measurement")


def test_snp_report_with_its_chain(evidence_dir: Path) -> None:
    d = evidence_dir / "sev-snp" / "milan-vcek-v2-virtee"
    out = attest("--snp-report", d / "report.bin", "--cert", d / "vcek.der", "--chain", d / "ask_ark.pem", *AUDIT,
                 "--at", "2025-06-01T00:00Z")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[PASS] report signature" in out.stdout
    assert "NOTE: key binding not checked (--no-binding)" in out.stdout and out.stdout.rstrip().endswith("PASS")


def test_tdx_quote_with_collateral(evidence_dir: Path) -> None:
    coll = evidence_dir / "tdx" / "collateral-intel-pcs-2026-01-tinfoil" / "dcap-qvl_collateral_fmspc_90c06f000000.json"
    out = attest("--tdx-quote", evidence_dir / "tdx" / "quote-v4-tinfoil-ohttp-binding" / "quote.bin", "--collateral",
                 coll, *AUDIT, "--at", "1769904000")
    assert out.returncode == 0, out.stdout + out.stderr


def test_azure_hcl_report_and_tpm_quote(evidence_dir: Path) -> None:
    d = evidence_dir / "sev-snp" / "milan-vcek-v2-azure-trustee"
    out = attest("--azure-hcl", d / "hcl_report.bin", "--tpm-quote", d / "tpm_quote.json", "--cert",
                 d / "vcek_ask_ark.pem", *AUDIT, "--at", "2025-06-01T00:00Z")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[PASS] TPM quote signature" in out.stdout and "platform az-snp-vtpm added" in out.stdout


def test_azure_hcl_without_a_quote_is_a_usage_error(evidence_dir: Path) -> None:
    d = evidence_dir / "sev-snp" / "milan-vcek-v2-azure-trustee"
    out = attest("--azure-hcl", d / "hcl_report.bin", *AUDIT)
    assert out.returncode != 0 and "--azure-hcl needs --tpm-quote" in out.stderr


def test_azure_trustee_evidence(evidence_dir: Path) -> None:
    out = attest("--azure-evidence", evidence_dir / "sev-snp" / "milan-vcek-v3-azure-vtpm-trustee" / "evidence-v2.json",
                 "--amd-chain", evidence_dir / "roots" / "amd_milan_ask_ark.pem", *AUDIT, "--at", "2025-06-01T00:00Z")
    assert out.returncode == 0, out.stdout + out.stderr


def test_nitro_document_passes_and_the_mock_chain_fails_at_the_root(evidence_dir: Path) -> None:
    nitro = evidence_dir / "aws-nitro"
    ok = attest("--nitro-doc", nitro / "prod-nonce-evervault" / "attestation_doc.cbor", *AUDIT,
                "--at", "2022-10-13T08:58:03Z")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    mock = attest("--nitro-doc", nitro / "mock-chain-oyster" / "attestation_doc.cbor", *AUDIT,
                  "--at", "2024-12-13T07:38:00Z")
    assert mock.returncode == 4 and "[FAIL] root pinned" in mock.stdout


def test_sgx_quote_fails_at_its_tcb_status(evidence_dir: Path) -> None:
    d = evidence_dir / "sgx" / "quote-v3-phala-with-collateral"
    out = attest("--sgx-quote", d / "quote.bin", "--collateral", d / "collateral.json", *AUDIT, "--at", "1750331000")
    assert out.returncode == 4
    failed = [line for line in out.stdout.splitlines() if line.startswith("[FAIL]")]
    assert len(failed) == 1 and "ConfigurationAndSWHardeningNeeded" in failed[0]


def test_maa_token_with_a_policy_naming_its_issuer(evidence_dir: Path, tmp_path: Path) -> None:
    d = evidence_dir / "azure-maa" / "sgx-sharedeus-teaclave"
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["maa"]\n[maa]\nissuers = ["https://sharedeus.eus.attest.azure.net"]\n')
    args = ("--maa-token", d / "token.jwt", "--jwks", d / "jwks.json", "--policy", policy, *AUDIT)
    assert attest(*args, "--at", "1695737800").returncode == 0
    late = attest(*args, "--at", str(1695766547 + 1), "--json")  # one second past exp
    assert late.returncode == 4
    verdict = json.loads(late.stdout)
    assert [c["name"] for c in verdict["checks"] if c["ok"] is not True] == ["validity"]


def test_bundle_file_simulated_needs_the_flag(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(SimulatedProvider().collect(b"\x00\x2a" + bytes(40)).to_json())
    refused = attest(bundle)
    assert refused.returncode == 4 and "[FAIL] platform accepted" in refused.stdout
    accepted = attest(bundle, "--insecure-allow-simulated")
    assert accepted.returncode == 0 and "SIMULATED" in accepted.stdout.upper()


@pytest.mark.parametrize("content", [b"", b"not json", b'{"version": 9}'])
def test_unusable_bundle_exits_3(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    out = attest(bad)
    assert out.returncode == 3 and "evidence unusable" in out.stderr and "Traceback" not in out.stderr
