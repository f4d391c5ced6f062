"""The policy's ``require_post_quantum`` and the KEM names in a verdict: ``veil attest verify`` and the proxy's
``/v1/veil/attestation`` say which key configurations the evidence binds and whether one is post-quantum."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ohttp
from enclave.attestation import EvidenceFormatError, Policy, SimulatedProvider, verify_bundle
from tests.helpers import REPO

BOTH = ohttp.KeyRing([ohttp.GatewayKey.generate(0, ohttp.KemId.XWING),
                      ohttp.GatewayKey.generate(1, ohttp.KemId.X25519_SHA256)]).encode_published()
CLASSIC = ohttp.encode_list([ohttp.GatewayKey.generate(4, ohttp.KemId.X25519_SHA256).config])



def test_policy_option_parses() -> None:
    assert Policy.from_dict({"require_post_quantum": True}).require_post_quantum is True
    assert Policy.from_dict({}).require_post_quantum is False
    assert Policy(require_post_quantum=True).auditing().require_post_quantum is True
    with pytest.raises(EvidenceFormatError):
        Policy.from_dict({"require_post_quantum": "yes"})
    with pytest.raises(EvidenceFormatError, match="unknown policy keys"):
        Policy.from_dict({"require_postquantum": True})


def test_required_and_offered_passes_and_names_the_kems() -> None:
    v = verify_bundle(SimulatedProvider().collect(BOTH), BOTH, Policy(require_post_quantum=True), allow_simulated=True)
    assert v.ok, v.document()
    assert [(k["kem"], k["post_quantum"]) for k in v.key_configs or []] == [("XWING", True), ("X25519_SHA256", False)]
    assert "key 0: XWING (0x647a), post-quantum" in v.document()
    assert "[PASS] post-quantum key configuration" in v.document()
    assert v.to_json()["key_configs"][0]["kem_id"] == 0x647A


def test_required_and_not_offered_fails() -> None:
    v = verify_bundle(SimulatedProvider().collect(CLASSIC), CLASSIC, Policy(require_post_quantum=True),
                      allow_simulated=True)
    assert not v.ok
    assert [c.name for c in v.failures] == ["post-quantum key configuration"]
    assert "X25519_SHA256 (key 4)" in v.failures[0].found


def test_not_required_lists_without_a_check() -> None:
    v = verify_bundle(SimulatedProvider().collect(CLASSIC), CLASSIC, Policy(), allow_simulated=True)
    assert v.ok
    assert v.key_configs == [{"key_id": 4, "kem": "X25519_SHA256", "kem_id": 0x20, "post_quantum": False}]
    assert not any("post-quantum" in c.name for c in v.checks)


def test_veil_attest_verify_names_the_kem(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(SimulatedProvider().collect(BOTH).to_json())
    policy = tmp_path / "p.toml"
    policy.write_text("require_post_quantum = true\n")
    out = subprocess.run([sys.executable, "-m", "veil_cli", "attest", "verify", str(bundle), "--policy", str(policy),
                          "--insecure-allow-simulated"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "key 0: XWING (0x647a), post-quantum" in out.stdout
    assert "[PASS] post-quantum key configuration" in out.stdout
    js = subprocess.run([sys.executable, "-m", "veil_cli", "attest", "verify", str(bundle), "--json",
                         "--insecure-allow-simulated"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert json.loads(js.stdout)["key_configs"][1]["kem"] == "X25519_SHA256"
