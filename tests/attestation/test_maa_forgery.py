"""The MAA forgery of issue 15: a relay serves its own OHTTP key and a ``platform = "maa"`` bundle whose token it
signed itself, with its own JWKS in the bundle and the key's REPORT_DATA as runtime data. The token names the real
issuer and the measurement the policy pins, so only the signing key can tell it apart. MAA signing keys now come from
the policy (``[maa] key_thumbprints`` / ``jwks_file``), never from the evidence; a policy that accepts MAA without
naming keys does not load. The real instance's JWKS in ``$VEIL_SHARED_DATA/evidence/azure-maa`` is the trusted one.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

import ohttp
from enclave.attestation import Bundle
from enclave.attestation.azure import MaaPolicy
from enclave.attestation.azure.maa import jwk_thumbprint
from enclave.attestation.bundle import report_data
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.policy import Policy
from enclave.attestation.verify import verify_bundle

REPO = Path(__file__).resolve().parents[2]
SGX_ISS = "https://sharedeus.eus.attest.azure.net"
SGX_KID = "rFl9xM+g7TvX63y0iseZtIn20MD5SYAnGblKFasau8I="  # the real instance's kid: the forger reuses it
MRENCLAVE = "f56735aa42563627a832e0c7ba9911382eb68afed75830b3f97266f3e67bdc99"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class Forger:
    """The relay: its own OHTTP key configuration, its own RSA key, a token for that key and a bundle to serve."""

    def __init__(self, kid: str = SGX_KID, exp_in: int = 3600) -> None:
        now = int(time.time())
        self.exp = now + exp_in
        self.keys_body = ohttp.encode_list([ohttp.GatewayKey.generate(7).config])
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nums = self.rsa.public_key().public_numbers()
        self.jwks: dict[str, Any] = {"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                                               "n": b64url(uint(nums.n)), "e": b64url(uint(nums.e))}]}
        header = {"alg": "RS256", "typ": "JWT", "kid": kid, "jku": SGX_ISS + "/certs"}
        claims = {"iss": SGX_ISS, "iat": now - 60, "nbf": now - 60, "exp": self.exp,
                  "x-ms-attestation-type": "sgx", "x-ms-sgx-is-debuggable": False, "x-ms-sgx-mrenclave": MRENCLAVE,
                  "x-ms-sgx-ehd": b64url(report_data(self.keys_body))}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}".encode()
        signature = self.rsa.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        self.token = f"{signing_input.decode()}.{b64url(signature)}"
        self.bundle = Bundle(platform="maa", key_config=self.keys_body, report=self.token.encode(),
                             certs={"jwks": json.dumps(self.jwks)}, issued_at=now)
        self.thumbprint = jwk_thumbprint(self.rsa.public_key())


@pytest.fixture(scope="module")
def forger() -> Forger:
    return Forger()


@pytest.fixture(scope="module")
def real_jwks_path(evidence_dir: Path) -> Path:
    return evidence_dir / "azure-maa" / "sgx-sharedeus-teaclave" / "jwks.json"


def real_thumbprints(jwks_path: Path) -> list[str]:
    """RFC 7638 thumbprints of the real instance's keys (its JWKS carries them as x5c certificates)."""
    out = []
    for jwk in json.loads(jwks_path.read_text())["keys"]:
        key = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0])).public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        out.append(jwk_thumbprint(key))
    return out


def maa_table(**extra: Any) -> dict[str, Any]:
    return {"platforms": ["maa"], "maa": {"issuers": [SGX_ISS], "measurements": [MRENCLAVE], **extra}}


def failed(bundle: Bundle, keys_body: bytes, policy: Policy) -> set[str]:
    v = verify_bundle(Bundle.from_json(bundle.to_json()), keys_body, policy)
    return {c.name for c in v.checks if c.ok is not True}


def test_forged_token_is_refused_by_verify_bundle(forger: Forger, real_jwks_path: Path) -> None:
    # The policy of the issue (issuer and measurement pinned, no keys) is now a policy error, not an open door.
    with pytest.raises(EvidenceFormatError, match="names no MAA signing key"):
        Policy.from_dict(maa_table())
    # Built in code, bypassing the loader, it still accepts nothing: the bundle's JWKS is not a key source.
    unkeyed = Policy(platforms=("maa",), maa=MaaPolicy(issuers=(SGX_ISS,), measurements=(bytes.fromhex(MRENCLAVE),)))
    assert failed(forger.bundle, forger.keys_body, unkeyed) == {"signing key", "signing key pinned",
                                                                "token signature"}
    # The real instance's keys from a file the user supplies: the forger's key is not among them (it reuses the real
    # kid, so the real key is found, and the forged signature does not verify under it).
    with_file = Policy.from_dict(maa_table(jwks_file=str(real_jwks_path)))
    assert failed(forger.bundle, forger.keys_body, with_file) == {"token signature"}
    # Pinned thumbprints of the real keys: the bundle's JWKS is only searched for pinned keys, and the forger's isn't.
    pinned = Policy.from_dict(maa_table(key_thumbprints=real_thumbprints(real_jwks_path)))
    assert failed(forger.bundle, forger.keys_body, pinned) == {"signing key", "signing key pinned", "token signature"}
    # The forgery is otherwise perfect: a user who trusts the forger's key (and only then) accepts it.
    own = Policy.from_dict(maa_table(key_thumbprints=[forger.thumbprint]))
    assert failed(forger.bundle, forger.keys_body, own) == set()


def attest(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veil_cli", "attest", "verify", *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_forged_token_is_refused_by_veil_attest_verify(forger: Forger, real_jwks_path: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.json"
    bundle.write_bytes(forger.bundle.to_json())
    policy = tmp_path / "policy.toml"
    head = f'platforms = ["maa"]\n[maa]\nissuers = ["{SGX_ISS}"]\nmeasurements = ["{MRENCLAVE}"]\n'
    policy.write_text(head)
    out = attest(bundle, "--policy", policy)
    assert out.returncode == 2 and "names no MAA signing key" in out.stderr and "PASS" not in out.stdout
    # jwks_file is read relative to the policy file (here a relative path from tmp_path to the shared data).
    policy.write_text(head + f'jwks_file = "{os.path.relpath(real_jwks_path, tmp_path)}"\n')
    out = attest(bundle, "--policy", policy, "--json")
    assert out.returncode == 4, out.stdout + out.stderr
    verdict = json.loads(out.stdout)
    assert [c["name"] for c in verdict["checks"] if c["ok"] is not True] == ["token signature"]
    # The same bundle passes only when the user hands over the forger's keys as theirs (--jwks = [maa] jwks_file).
    forged_jwks = tmp_path / "forged_jwks.json"
    forged_jwks.write_text(json.dumps(forger.jwks))
    policy.write_text(head)
    assert attest(bundle, "--policy", policy, "--jwks", forged_jwks).returncode == 0


def test_policy_must_name_maa_keys(tmp_path: Path, real_jwks_path: Path) -> None:
    for data in ({"platforms": ["maa"]}, {"platforms": ["maa"], "maa": {}},
                 {"platforms": ["az-snp-vtpm"], "maa": {"issuers": [SGX_ISS]}}):
        with pytest.raises(EvidenceFormatError, match="key_thumbprints or \\[maa\\] jwks_file"):
            Policy.from_dict(data)
    # An [maa] table that accepts no token (no issuers, maa not a platform) needs no keys.
    assert Policy.from_dict({"platforms": ["az-snp-vtpm"], "maa": {"allow_rsa1024": True}}).get(MaaPolicy).jwks == ()
    # jwks_file: relative to the policy file; unreadable or not a JWKS is a policy error.
    (tmp_path / "sub").mkdir()
    policy = tmp_path / "sub" / "policy.toml"
    policy.write_text(f'platforms = ["maa"]\n[maa]\nissuers = ["{SGX_ISS}"]\n'
                      f'jwks_file = "{os.path.relpath(real_jwks_path, policy.parent)}"\n')
    loaded = Policy.load(policy).get(MaaPolicy)
    assert len(loaded.jwks) == len(json.loads(real_jwks_path.read_text())["keys"]) and loaded.has_keys
    for content in ("", "[]", '{"keys": []}', '{"keys": [1]}'):
        (tmp_path / "sub" / "bad.json").write_text(content)
        with pytest.raises(EvidenceFormatError, match="jwks_file"):
            Policy.from_dict({"maa": {"jwks_file": "bad.json"}}, base=tmp_path / "sub")
    with pytest.raises(EvidenceFormatError, match="jwks_file"):
        Policy.from_dict({"maa": {"jwks_file": "missing.json"}}, base=tmp_path)


def test_nothing_in_the_document_says_the_evidence_keys_were_trusted(forger: Forger) -> None:
    unkeyed = Policy(platforms=("maa",), maa=MaaPolicy(issuers=(SGX_ISS,), measurements=(bytes.fromhex(MRENCLAVE),)))
    v = verify_bundle(Bundle.from_json(forger.bundle.to_json()), forger.keys_body, unkeyed,
                      now=datetime.datetime.now(datetime.UTC))
    assert not v.ok and "never trusted" in v.document()
