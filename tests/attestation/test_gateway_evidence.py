"""The gateway's evidence composition: GPU evidence collected with the key-derived nonce, bound into REPORT_DATA,
and checked by the client's verify_bundle."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import ohttp
from enclave.attestation import SimulatedProvider, gpu_nonce, report_data
from enclave.attestation.gateway_evidence import GatewayEvidence, GpuEvidenceCommand
from enclave.attestation.policy import NvidiaPolicy, Policy
from enclave.attestation.verify import verify_bundle

HGX = "nvidia-gpu/hgx-8gpu-ppcie-nvtrust/gpu_evidence.json"


def test_gpu_evidence_is_collected_with_the_key_nonce_and_bound(evidence_dir: Path, tmp_path: Path) -> None:
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    seen = tmp_path / "nonce.txt"
    # A stand-in for NVIDIA's tools: records the nonce it was asked for and prints real (recorded) GPU evidence.
    script = tmp_path / "gpu.py"
    script.write_text(
        "import sys\n"
        f"open({str(seen)!r}, 'w').write(sys.argv[-1])\n"
        f"sys.stdout.write(open({str(evidence_dir / HGX)!r}).read())\n"
    )
    provider = GatewayEvidence(SimulatedProvider(), gpu=GpuEvidenceCommand([sys.executable, str(script)]))
    bundle = provider.collect(keys)
    assert seen.read_text() == gpu_nonce(keys).hex()
    assert bundle.gpu_evidence and report_data(keys, bundle.gpu_evidence) in bundle.report

    policy = Policy(nvidia=NvidiaPolicy(any_version=True, accept_unverifiable_cc_mode=True))
    now = datetime.datetime(2026, 11, 26, tzinfo=datetime.UTC)
    verdict = verify_bundle(bundle, keys, policy, now=now, allow_simulated=True)
    checks = {c.name: c.ok for c in verdict.checks}
    # Eight real GPUs verify (chain, signature, FWID) but the recorded evidence answers another nonce: the binding
    # to this key configuration fails, which is exactly what must happen to replayed GPU evidence.
    assert checks["gpu[0] signature"] is True and checks["gpu[7] signature"] is True
    assert checks["gpu[0] nonce"] is False
    assert not verdict.ok
    assert "gpu[0] nonce" in verdict.document()


def test_gpu_evidence_in_the_bundle_changes_report_data() -> None:
    keys = b"\x00\x01k"
    a = SimulatedProvider().collect(keys)
    b = SimulatedProvider().collect(keys, gpu_evidence=b"gpu")
    assert report_data(keys) in a.report and report_data(keys, b"gpu") in b.report
    assert report_data(keys) not in b.report


def test_real_snp_evidence_through_verify_bundle_fails_only_on_the_key_binding(evidence_dir: Path) -> None:
    """Genuine SEV-SNP evidence that was not made for these keys: every hardware check passes, the binding fails
    (what a gateway replaying someone else's report would get)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from enclave.attestation import Bundle
    from enclave.attestation.policy import SnpPolicy
    from enclave.attestation.snp import parse_report

    d = evidence_dir / "sev-snp" / "milan-vcek-v2-virtee"
    report = (d / "report.bin").read_bytes()
    certs = {"vcek": x509.load_der_x509_certificate((d / "vcek.der").read_bytes()).public_bytes(Encoding.PEM).decode()}
    for cert in x509.load_pem_x509_certificates((d / "ask_ark.pem").read_bytes()):
        role = "ark" if "ARK-" in cert.subject.rfc4514_string() else "ask"
        certs[role] = cert.public_bytes(Encoding.PEM).decode()
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    bundle = Bundle(platform="sev-snp", key_config=keys, report=report, certs=certs)
    policy = Policy(snp=SnpPolicy(measurements=(parse_report(report).measurement,)))
    now = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    verdict = verify_bundle(bundle, keys, policy, now=now)
    failed = [c.name for c in verdict.failures]
    assert failed == ["REPORT_DATA binding"], verdict.document()
    # Without a measurement allow list the default policy refuses even genuine hardware (fail closed).
    strict = verify_bundle(bundle, keys, Policy(), now=now)
    assert "measurement" in [c.name for c in strict.failures]


def test_azure_cvm_bundle_through_verify_bundle(evidence_dir: Path) -> None:
    """An Azure SNP CVM's evidence carried in a Veil bundle: hardware, HCL and vTPM checks pass; the binding to
    Veil's keys (the TPM nonce) fails, since this recorded quote answered b"challenge"."""
    import base64

    import orjson

    from enclave.attestation import Bundle
    from enclave.attestation.azure import AzurePolicy, load_trustee_evidence
    from enclave.attestation.azure import parse_hcl_report
    from enclave.attestation.policy import SnpPolicy
    from enclave.attestation.snp import parse_report

    d = evidence_dir / "sev-snp" / "milan-vcek-v3-azure-vtpm-trustee"
    chain = (evidence_dir / "roots" / "amd_milan_ask_ark.pem").read_text()
    ev = load_trustee_evidence((d / "evidence-v1.json").read_text(), amd_chain_pem=chain)
    certs = {**(ev.certs or {}), "tpm_quote": base64.b64encode(ev.tpm_quote).decode(),
             "tpm_signature": base64.b64encode(ev.tpm_signature).decode(),
             "pcrs": orjson.dumps([ev.pcrs[i].hex() for i in sorted(ev.pcrs)]).decode()}
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    bundle = Bundle.from_json(Bundle(platform="az-snp-vtpm", key_config=keys, report=ev.hcl_report,
                                     certs=certs).to_json())
    measurement = parse_report(parse_hcl_report(ev.hcl_report).snp_report).measurement
    policy = Policy(platforms=("az-snp-vtpm",), snp=SnpPolicy(measurements=(measurement,)),
                    azure=AzurePolicy(any_measurement=True))
    now = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    verdict = verify_bundle(bundle, keys, policy, now=now)
    assert [c.name for c in verdict.failures] == ["TPM nonce binding"], verdict.document()
    audit = verify_bundle(bundle, keys, policy, now=now, check_binding=False)
    assert audit.ok, audit.document()
