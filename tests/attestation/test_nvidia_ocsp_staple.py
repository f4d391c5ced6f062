"""Gateway-side OCSP stapling (``veil gateway --gpu-ocsp-url``): the gateway asks a responder (here a local aiohttp
stand-in signing under a test CA: no real NVIDIA OCSP response could be obtained) for every certificate the client
checks, staples the responses that verify into ``certs["nvidia_ocsp"]``, fetches again once half a response's
window has passed, and lets the bundle expire at the earliest nextUpdate."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import ohttp
from enclave.attestation import SimulatedProvider
from enclave.attestation.gateway_evidence import GatewayEvidence
from enclave.attestation.nvidia import encode_gpu_evidence, load_nvtrust_evidence_list
from enclave.attestation.nvidia import staple
from enclave.attestation.nvidia.ocsp import OCSP_CERT_KEY, check_ocsp, decode_ocsp_list, encode_ocsp_list, ocsp_ok
from enclave.attestation.nvidia.rim import NVIDIA_RIM_ROOT_SHA256
from enclave.attestation.nvidia.staple import OcspStapler, http_ocsp_fetch, ocsp_targets

from .standin import serve

NOW = datetime.datetime(2026, 9, 16, 14, tzinfo=datetime.UTC)
HOUR = datetime.timedelta(hours=1)
AZURE = "hopper-595-azure-full-rim-match"


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool, ocsp_signing: bool = False) -> x509.Certificate:
    iname, ikey = issuer if issuer else (name, key)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, iname)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - 30 * 24 * HOUR).not_valid_after(NOW + 365 * 24 * HOUR)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ocsp_signing:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    return b.sign(ikey, hashes.SHA384())


class Responder:
    """A stand-in OCSP responder: answers POSTed requests for the test CA's certificates, signed by the CA (or, when
    ``rogue``, by a key the CA never authorised); records the serials asked for."""

    def __init__(self) -> None:
        self.root_key, leaf_key, self.rogue_key = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
        self.root = _cert("Test CA", self.root_key, None, ca=True)
        self.leaf = _cert("Test L3", leaf_key, ("Test CA", self.root_key), ca=True)
        self.rogue_cert = _cert("Rogue", self.rogue_key, None, ca=False, ocsp_signing=True)
        self.status = ocsp.OCSPCertStatus.GOOD
        self.rogue = False
        self.window = 24 * HOUR
        self.now = NOW
        self.asked: list[int] = []

    def app(self) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            assert request.content_type == "application/ocsp-request"
            req = ocsp.load_der_ocsp_request(await request.read())
            self.asked.append(req.serial_number)
            if req.serial_number != self.leaf.serial_number:
                refused = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
                return web.Response(body=refused.public_bytes(Encoding.DER), content_type="application/ocsp-response")
            b = ocsp.OCSPResponseBuilder().add_response(
                cert=self.leaf, issuer=self.root, algorithm=hashes.SHA384(), cert_status=self.status,
                this_update=self.now, next_update=self.now + self.window,
                revocation_time=self.now - HOUR if self.status == ocsp.OCSPCertStatus.REVOKED else None,
                revocation_reason=None)
            signer, key = (self.rogue_cert, self.rogue_key) if self.rogue else (self.root, self.root_key)
            b = b.responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
            der = b.sign(key, hashes.SHA384()).public_bytes(Encoding.DER)
            return web.Response(body=der, content_type="application/ocsp-response")

        app = web.Application()
        app.router.add_post("/", answer)
        return app


@pytest.fixture
def responder() -> Iterator[tuple[Responder, str]]:
    r = Responder()
    with serve(r.app()) as url:
        yield r, url + "/"


def _client_status(der: bytes, r: Responder, at: datetime.datetime) -> str:
    return check_ocsp(r.leaf, r.root, decode_ocsp_list(encode_ocsp_list([der])), at).status


def test_a_good_response_is_stapled_cached_and_fetched_again_half_way(responder: tuple[Responder, str]) -> None:
    r, url = responder
    clock = [NOW.timestamp()]
    s = OcspStapler(url, clock=lambda: clock[0])
    pair = [(r.leaf, r.root)]
    first = s.responses(pair)
    assert len(first) == 1 and _client_status(first[0], r, NOW) == "good"
    clock[0] += 11 * 3600
    assert s.responses(pair) == first and len(r.asked) == 1  # before half its window: the cached one
    clock[0] += 3600
    r.now = NOW + 12 * HOUR
    second = s.responses(pair)
    assert len(r.asked) == 2 and second != first and _client_status(second[0], r, r.now) == "good"


def test_an_unreachable_responder_keeps_a_cached_response_until_it_lapses(responder: tuple[Responder, str]) -> None:
    r, url = responder
    clock = [NOW.timestamp()]
    s = OcspStapler(url, clock=lambda: clock[0])
    pair = [(r.leaf, r.root)]
    first = s.responses(pair)
    s.url = "http://127.0.0.1:1/"  # nothing listens there
    clock[0] += 20 * 3600
    assert s.responses(pair) == first
    clock[0] += 5 * 3600  # past nextUpdate: nothing to staple rather than a lapsed response
    assert s.responses(pair) == []


def test_responses_that_do_not_verify_are_not_stapled_and_revoked_ones_are(responder: tuple[Responder, str]) -> None:
    r, url = responder
    r.rogue = True
    assert OcspStapler(url, clock=NOW.timestamp).responses([(r.leaf, r.root)]) == []
    r.rogue, r.status = False, ocsp.OCSPCertStatus.REVOKED
    (der,) = OcspStapler(url, clock=NOW.timestamp).responses([(r.leaf, r.root)])
    status = check_ocsp(r.leaf, r.root, [ocsp.load_der_ocsp_response(der)], NOW)
    assert status.status == "revoked" and not ocsp_ok(status, require_ocsp=False)
    # an unsuccessful answer (the responder does not serve this certificate) is not stapled either
    assert OcspStapler(url, clock=NOW.timestamp).responses([(r.root, r.root)]) == []
    with pytest.raises(OSError, match="not an http"):
        http_ocsp_fetch("file:///etc/passwd", b"")


def _azure(evidence_dir: Path) -> tuple[bytes, list[bytes]]:
    d = evidence_dir / "nvidia-gpu" / AZURE
    obj = json.loads((d / "gpu-evidence.json").read_text())
    gpu = encode_gpu_evidence(load_nvtrust_evidence_list(json.dumps(obj["evidence_list"]).encode()))
    return gpu, [(d / "NV_GPU_DRIVER_GH100_595.71.05.xml").read_bytes(),
                 (d / "NV_GPU_VBIOS_1010_0210_886_96009F0004.xml").read_bytes()]


def test_the_targets_are_the_certificates_the_client_checks(evidence_dir: Path) -> None:
    gpu, rims = _azure(evidence_dir)
    pairs = ocsp_targets(gpu, rims)
    names = [p[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value for p in pairs]
    # The device chain without its leaf (GH100 A01 GSP FMC LF) and root, as nvtrust; each RIM's chain with its leaf
    # (the driver and VBIOS RIMs have their own L4 signers under one L3 and CA: those links are asked for once).
    assert names == ["GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1", "NVIDIA GH100 Identity",
                     "HCC RIM L4 Signer", "NVIDIA Reference Value L3 GH100 003", "NVIDIA Reference Value GH100 CA",
                     "HCC RIM L4 Signer"]
    assert pairs[0][0].serial_number != pairs[6][0].serial_number
    for cert, issuer in pairs:
        cert.verify_directly_issued_by(issuer)  # each pair is a real link
    assert pairs[5][1].fingerprint(hashes.SHA256()).hex() == NVIDIA_RIM_ROOT_SHA256  # the pin, not the embedded root


def test_the_gateway_staples_into_the_bundle_and_expires_it_at_the_earliest_next_update(
    evidence_dir: Path, responder: tuple[Responder, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r, url = responder
    gpu, _ = _azure(evidence_dir)

    class Recorded:
        def collect(self, nonce: bytes) -> bytes:
            return gpu

    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    # Real NVIDIA certificates: the stand-in cannot sign for them (it is asked, answers "unauthorized"): no staple.
    provider = GatewayEvidence(SimulatedProvider(), gpu=Recorded(), gpu_rim_dir=evidence_dir / "nvidia-gpu" / AZURE,
                               gpu_ocsp_url=url)
    plain = provider.collect(keys)
    assert OCSP_CERT_KEY not in plain.certs and len(r.asked) == len(ocsp_targets(gpu, _azure(evidence_dir)[1]))
    assert provider.evidence_expiry(plain) is None
    # With the test CA's certificate as the target, the stapled response travels and bounds the bundle's life.
    monkeypatch.setattr(staple, "ocsp_targets", lambda g, rims: [(r.leaf, r.root)])
    provider.ocsp.clock = NOW.timestamp  # type: ignore[union-attr]
    bundle = provider.collect(keys)
    (der,) = decode_ocsp_list(bundle.certs[OCSP_CERT_KEY])
    assert check_ocsp(r.leaf, r.root, [der], NOW).status == "good"
    assert provider.evidence_expiry(bundle) == (NOW + 24 * HOUR).timestamp()


def test_the_ocsp_option_needs_gpu_evidence_and_an_http_url() -> None:
    from enclave.attestation.errors import ProviderError
    from enclave.attestation.provider import ProviderOptions, make_provider

    with pytest.raises(ProviderError, match="need GPU evidence"):
        make_provider("simulated", ProviderOptions(gpu_ocsp_url="http://127.0.0.1:1/"))
    with pytest.raises(ProviderError, match="--gpu-ocsp-url ftp://x: not an http"):
        make_provider("simulated", ProviderOptions(gpu_evidence_command="true", gpu_ocsp_url="ftp://x"))
    p = make_provider("simulated", ProviderOptions(gpu_evidence_command="true", gpu_ocsp_url="http://127.0.0.1:1/"))
    assert isinstance(p, GatewayEvidence) and isinstance(p.ocsp, OcspStapler)
