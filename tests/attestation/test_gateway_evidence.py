"""The gateway's evidence composition: GPU evidence collected with the key-derived nonce, bound into REPORT_DATA,
and checked by the client's verify_bundle."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import ohttp
from enclave.attestation import SimulatedProvider, gpu_nonce, report_data
from enclave.attestation.gateway_evidence import GatewayEvidence, GpuEvidenceCommand
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.policy import Policy
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
    from enclave.attestation.snp.policy import SnpPolicy
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
    from enclave.attestation.azure import AzurePolicy
    from enclave.attestation.azure.verify import load_trustee_evidence
    from enclave.attestation.azure.hcl import parse_hcl_report
    from enclave.attestation.snp.policy import SnpPolicy
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


# -- the gateway's configuration, bound with the keys ----------------------------------------------------------------

CONFIG = {"engine": "echo", "model": "echo", "model_manifest_sha256": None, "model_key_origin": None,
          "key_origin": "generated", "pad_to": 256, "replay_window_ms": 60000, "require_date": True,
          "api_keys_required": False, "cache_salt": "tenant"}


def test_the_configuration_is_bound_and_one_altered_after_the_fact_fails_the_binding() -> None:
    from dataclasses import replace

    from enclave.attestation import Bundle

    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    bundle = SimulatedProvider().collect(keys, config=CONFIG)
    assert report_data(keys, b"", b"", CONFIG) in bundle.report and report_data(keys) not in bundle.report
    parsed = Bundle.from_json(bundle.to_json())
    assert parsed.config == CONFIG
    assert verify_bundle(parsed, keys, Policy(), allow_simulated=True).ok
    for name, value in (("key_origin", "file"), ("pad_to", 0), ("require_date", False), ("model", "other")):
        altered = replace(parsed, config={**CONFIG, name: value})
        verdict = verify_bundle(Bundle.from_json(altered.to_json()), keys, Policy(), allow_simulated=True)
        assert not verdict.ok, name
        assert "report data does not bind" in verdict.document(), name
    dropped = replace(parsed, config={k: v for k, v in CONFIG.items() if k != "pad_to"})
    assert not verify_bundle(dropped, keys, Policy(), allow_simulated=True).ok


def test_report_data_covers_the_canonical_configuration() -> None:
    """Every platform's verifier compares its report with this one REPORT_DATA: a report over the keys with one
    configuration does not match the same keys with another; only JSON that hashes alike everywhere is bound."""
    from enclave.attestation.bundle import canonical_config

    keys = b"\x00\x01k"
    assert report_data(keys, config=CONFIG) != report_data(keys, config={**CONFIG, "pad_to": 0})
    assert report_data(keys, config={}) == report_data(keys)
    assert canonical_config({"b": 1, "a": None}) == b'{"a":null,"b":1}'
    import pytest

    for bad in ({"pad": 1.5}, {"n": {"x": 1}}, {"Upper": 1}, {"big": 2**53}, {"l": [1]}):
        with pytest.raises(ValueError, match="configuration"):
            canonical_config(bad)  # type: ignore[arg-type]


def test_a_version_1_bundle_is_refused_saying_it_binds_no_configuration() -> None:
    import base64

    import orjson
    import pytest

    from enclave.attestation import Bundle, BundleError

    v1 = orjson.dumps({"version": 1, "platform": "simulated", "key_config": base64.b64encode(b"k").decode(),
                       "report": "", "gpu_evidence": "", "nonce": "", "certs": {}, "issued_at": 0})
    with pytest.raises(BundleError, match="version 1 binds no gateway configuration"):
        Bundle.from_json(v1)
    good = SimulatedProvider().collect(b"k", config=CONFIG).to_json()
    for bad in (good.replace(b'"pad_to":256', b'"pad_to":256.0'), good.replace(b'"config":{', b'"config":{"x":[],')):
        with pytest.raises(BundleError, match="malformed"):
            Bundle.from_json(bad)


def test_policy_config_requirements_are_checked_and_the_document_lists_every_value() -> None:
    import pytest

    from enclave.attestation.errors import EvidenceFormatError

    keys = b"\x00\x01k"
    bundle = SimulatedProvider().collect(keys, config={**CONFIG, "key_origin": "file"})
    policy = Policy.from_dict({"config": {"require": {"key_origin": "generated", "require_date": True}}})
    verdict = verify_bundle(bundle, keys, policy, allow_simulated=True)
    checks = {c.name: c for c in verdict.checks}
    assert checks["gateway configuration key_origin"].ok is False
    assert checks["gateway configuration key_origin"].found == '"file"'
    assert checks["gateway configuration require_date"].ok is True
    assert not verdict.ok
    doc = verdict.document()
    for name, value in CONFIG.items():
        assert f"  {name} = " in doc, name
    assert '  key_origin = "file"' in doc and "  pad_to = 256" in doc and "  model_manifest_sha256 = null" in doc
    assert verdict.to_json()["config"]["key_origin"] == "file"
    # Satisfied requirements pass; unbound values (--no-binding) never do.
    ok = verify_bundle(SimulatedProvider().collect(keys, config=CONFIG), keys, policy, allow_simulated=True)
    assert ok.ok
    unbound = verify_bundle(SimulatedProvider().collect(keys, config=CONFIG), keys, policy, allow_simulated=True,
                            check_binding=False)
    assert {c.name: c.ok for c in unbound.checks}["gateway configuration key_origin"] is None
    # Typos and wrong types are errors, never a looser policy; a number never satisfies a boolean.
    for bad, why in (({"config": {"require": {"key_orgin": "generated"}}}, "unknown configuration name"),
                     ({"config": {"requires": {}}}, "unknown keys in \\[config\\]"),
                     ({"config": {"require": {"require_date": 1}}}, "expected bool"),
                     ({"config": {"require": {"pad_to": True}}}, "expected int"),
                     ({"config": {"require": {"key_origin": 1}}}, "expected str")):
        with pytest.raises(EvidenceFormatError, match=why):
            Policy.from_dict(bad)
    one = SimulatedProvider().collect(keys, config={**CONFIG, "require_date": 1})
    assert not verify_bundle(one, keys, policy, allow_simulated=True).ok


def test_the_gateway_binds_the_configuration_it_runs_with() -> None:
    """Values flow from GatewayConfig (and the API's settings): whatever is configured is what the bundle binds."""
    from enclave.api import Api
    from enclave.engines import EchoEngine
    from enclave.gateway import GatewayConfig, create_app
    from enclave.gateway.app_state_keys import STATE

    engine = EchoEngine()
    cfg = GatewayConfig(pad_to=512, replay_window=2.5, require_date=True, key_origin="broker", model="m",
                        model_manifest_sha256="ab" * 32, model_key_origin="broker", coalesce_ms=20.0,
                        engine_launch="/venv/bin/python -m vllm.entrypoints.openai.api_server --dtype float32",
                        key_broker="https://broker:8443", key_broker_policy_sha256="cd" * 32,
                        switch_tnvl_checked="nscq", switch_count=4)
    app = create_app(engine=engine, keyring=ohttp.KeyRing([ohttp.GatewayKey.generate(0)]),
                     provider=SimulatedProvider(), config=cfg, api=Api(engine, cache_salt="request"))
    state = app[STATE]
    assert state.bundle is not None and state.bundle.config == {
        "engine": "echo", "model": "m", "model_manifest_sha256": "ab" * 32, "model_key_origin": "broker",
        "key_origin": "broker", "pad_to": 512, "replay_window_ms": 2500, "require_date": True,
        "api_keys_required": False, "cache_salt": "request", "coalesce_ms": 20,
        "engine_launch": "/venv/bin/python -m vllm.entrypoints.openai.api_server --dtype float32",
        "gpu_cc_checked": None, "gpu_count": None, "switch_tnvl_checked": "nscq", "switch_count": 4,
        "key_broker": "https://broker:8443",
        "key_broker_policy_sha256": "cd" * 32}
    assert verify_bundle(state.bundle, state.keys_body, Policy(), allow_simulated=True).ok
    fresh = state.collect(state.keys_body, b"\x01" * 32)
    assert fresh.config == state.bundle.config and verify_bundle(fresh, state.keys_body, Policy(),
                                                                 allow_simulated=True).ok
