"""Stapled OCSP for NVIDIA chains, with responses signed under a test CA (no recorded NVIDIA OCSP response could be
obtained; real NVIDIA OCSP has not been exercised): good, revoked, unknown, expired, wrong signer, delegated responder,
and the policy (revoked always refused; missing refused only with require_ocsp) on a real GPU sample."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.nvidia import load_nvtrust_evidence_list
from enclave.attestation.nvidia.ocsp import (
    OcspStatus,
    check_ocsp,
    decode_ocsp_list,
    encode_ocsp_list,
    ocsp_ok,
)
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.nvidia.verify import verify_nvidia

NOW = datetime.datetime(2026, 9, 16, 14, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool, ocsp_signing: bool = False) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    iname, ikey = issuer if issuer else (name, key)
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, iname)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - 30 * DAY).not_valid_after(NOW + 365 * DAY)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ocsp_signing:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return b.sign(ikey, hashes.SHA384())


@pytest.fixture(scope="module")
def ca() -> dict[str, object]:
    root_key, leaf_key, resp_key, other_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(4))
    root = _cert("Test NVIDIA-like CA", root_key, None, ca=True)
    leaf = _cert("Test L3", leaf_key, ("Test NVIDIA-like CA", root_key), ca=True)
    responder = _cert("Test OCSP responder", resp_key, ("Test NVIDIA-like CA", root_key), ca=False, ocsp_signing=True)
    rogue = _cert("Rogue responder", other_key, None, ca=False, ocsp_signing=True)
    return {"root": root, "root_key": root_key, "leaf": leaf, "responder": responder, "resp_key": resp_key,
            "rogue": rogue, "rogue_key": other_key}


def _response(ca: dict[str, object], status: ocsp.OCSPCertStatus, *, signer: str = "root",
              this: datetime.datetime = NOW - DAY, nxt: datetime.datetime | None = NOW + DAY) -> bytes:
    leaf, root = ca["leaf"], ca["root"]
    assert isinstance(leaf, x509.Certificate) and isinstance(root, x509.Certificate)
    b = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf, issuer=root, algorithm=hashes.SHA384(), cert_status=status, this_update=this, next_update=nxt,
        revocation_time=NOW - 2 * DAY if status == ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=None)
    key = ca[{"root": "root_key", "responder": "resp_key", "rogue": "rogue_key"}[signer]]
    cert = ca[signer]
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(cert, x509.Certificate)
    b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, cert)
    if signer != "root":
        b = b.certificates([cert])
    return b.sign(key, hashes.SHA384()).public_bytes(Encoding.DER)


def _status(ca: dict[str, object], *responses: bytes, now: datetime.datetime = NOW) -> OcspStatus:
    leaf, root = ca["leaf"], ca["root"]
    assert isinstance(leaf, x509.Certificate) and isinstance(root, x509.Certificate)
    return check_ocsp(leaf, root, decode_ocsp_list(encode_ocsp_list(list(responses))), now)


def test_good_revoked_unknown(ca: dict[str, object]) -> None:
    assert _status(ca, _response(ca, ocsp.OCSPCertStatus.GOOD)).status == "good"
    revoked = _status(ca, _response(ca, ocsp.OCSPCertStatus.REVOKED))
    assert revoked.status == "revoked" and "revoked 2026-09-14" in revoked.detail
    assert _status(ca, _response(ca, ocsp.OCSPCertStatus.UNKNOWN)).status == "unknown"
    assert _status(ca).status == "missing"


def test_delegated_responder_and_rogue_signer(ca: dict[str, object]) -> None:
    assert _status(ca, _response(ca, ocsp.OCSPCertStatus.GOOD, signer="responder")).status == "good"
    rogue = _status(ca, _response(ca, ocsp.OCSPCertStatus.GOOD, signer="rogue"))
    assert rogue.status == "missing" and "signature does not verify" in rogue.detail
    # A rogue "revoked" cannot revoke either, and a rogue "good" does not hide a genuine "revoked".
    both = _status(ca, _response(ca, ocsp.OCSPCertStatus.GOOD, signer="rogue"),
                   _response(ca, ocsp.OCSPCertStatus.REVOKED))
    assert both.status == "revoked"


def test_response_window_is_checked_at_the_clients_clock(ca: dict[str, object]) -> None:
    resp = _response(ca, ocsp.OCSPCertStatus.GOOD)
    assert _status(ca, resp, now=NOW + 2 * DAY).status == "missing"
    assert "validity window" in _status(ca, resp, now=NOW + 2 * DAY).detail
    assert _status(ca, resp, now=NOW - 2 * DAY).status == "missing"
    assert _status(ca, _response(ca, ocsp.OCSPCertStatus.GOOD, nxt=None)).status == "missing"


def test_policy_revoked_always_refused_missing_only_with_require_ocsp() -> None:
    for required in (False, True):
        assert ocsp_ok(OcspStatus("good", ""), required)
        assert not ocsp_ok(OcspStatus("revoked", ""), required)
        assert ocsp_ok(OcspStatus("missing", ""), required) is not required
        assert ocsp_ok(OcspStatus("unknown", ""), required) is not required


def test_stapled_list_is_strict() -> None:
    with pytest.raises(EvidenceFormatError):
        decode_ocsp_list('["AAAA"]')
    with pytest.raises(EvidenceFormatError):
        decode_ocsp_list("{}")


def test_real_gpu_with_require_ocsp_and_no_nvidia_response_fails(evidence_dir: Path, ca: dict[str, object]) -> None:
    obj = json.loads((evidence_dir / "nvidia-gpu" / "hopper-595-azure-full-rim-match" / "gpu-evidence.json").read_text())
    gpus = load_nvtrust_evidence_list(json.dumps(obj["evidence_list"]).encode())
    nonce = bytes.fromhex(obj["nonce"])
    foreign = decode_ocsp_list(encode_ocsp_list([_response(ca, ocsp.OCSPCertStatus.GOOD)]))
    required = verify_nvidia(gpus, NvidiaPolicy(any_version=True, accept_unverifiable_cc_mode=True, require_ocsp=True),
                             now=NOW, expected_nonce=nonce, ocsp_responses=foreign)
    failing = {c.name: c.ok for c in required.checks if c.ok is not True}
    assert failing == {"gpu[0] ocsp device chain": False}
    assert "NVIDIA GH100 Identity: missing" in next(c.found for c in required.checks
                                                    if c.name == "gpu[0] ocsp device chain")
    assert required.claims["revocation"] == "unknown"
    tolerated = verify_nvidia(gpus, NvidiaPolicy(any_version=True, accept_unverifiable_cc_mode=True), now=NOW,
                              expected_nonce=nonce, ocsp_responses=foreign)
    assert tolerated.ok and tolerated.claims["revocation"] == "unknown"
