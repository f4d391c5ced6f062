"""The gateway gathers the RIMs its GPUs need (``veil gateway --gpu-rim-dir`` / ``--gpu-rim-url``): from the
operator's folder, from NVIDIA's RIM service (here a local aiohttp stand-in serving the shared RIM files under their
service ids), once per RIM; they travel in the bundle and the client compares every index with them. A GPU whose
RIM is nowhere stops the gateway at start with a message naming the RIM."""

from __future__ import annotations

import base64
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

import ohttp
from enclave.attestation import SimulatedProvider
from enclave.attestation.errors import CollateralUnavailableError, ProviderError
from enclave.attestation.gateway_evidence import GatewayEvidence, GpuEvidenceCommand
from enclave.attestation.nvidia import encode_gpu_evidence, load_nvtrust_evidence_list
from enclave.attestation.nvidia.collect import NeededRim, http_fetch, needed_rims
from enclave.attestation.nvidia.policy import NvidiaPolicy
from enclave.attestation.nvidia.rim import RIMS_CERT_KEY, decode_rim_list
from enclave.attestation.policy import Policy
from enclave.attestation.provider import ProviderOptions, make_provider
from enclave.attestation.verify import verify_bundle

from .standin import serve

AZURE = "hopper-595-azure-full-rim-match"
AT = datetime.datetime(2026, 9, 16, 14, tzinfo=datetime.UTC)
DRIVER_ID, VBIOS_ID = "NV_GPU_DRIVER_GH100_595.71.05", "NV_GPU_VBIOS_1010_0210_886_96009F0004"
REPO = Path(__file__).resolve().parents[2]


def _dir(evidence_dir: Path) -> Path:
    return evidence_dir / "nvidia-gpu" / AZURE


def _gpu_evidence(evidence_dir: Path) -> bytes:
    obj = json.loads((_dir(evidence_dir) / "gpu-evidence.json").read_text())
    return encode_gpu_evidence(load_nvtrust_evidence_list(json.dumps(obj["evidence_list"]).encode()))


class Recorded:
    def __init__(self, evidence: bytes) -> None:
        self.evidence = evidence

    def collect(self, nonce: bytes) -> bytes:
        return self.evidence


def _rim_service(files: dict[str, Path], asked: list[str]) -> web.Application:
    """NVIDIA's ``GET /v1/rim/<id>`` answering ``{"id", "rim": base64(XML), "sha256"}``, 404 for unknown ids."""
    import hashlib

    async def rim(request: web.Request) -> web.Response:
        rim_id = request.match_info["id"]
        asked.append(rim_id)
        if rim_id not in files:
            return web.json_response({"error": "not found"}, status=404)
        data = files[rim_id].read_bytes()
        return web.json_response({"id": rim_id, "rim": base64.b64encode(data).decode(),
                                  "sha256": hashlib.sha256(data).hexdigest()})

    app = web.Application()
    app.router.add_get("/v1/rim/{id}", rim)
    return app


def test_the_reports_name_their_rims_by_service_id(evidence_dir: Path) -> None:
    assert needed_rims(_gpu_evidence(evidence_dir)) == [
        NeededRim(DRIVER_ID, "driver", "595.71.05", "GH100"), NeededRim(VBIOS_ID, "vbios", "96.00.9F.00.04", "GH100")]


def test_rims_from_the_rim_service_travel_in_the_bundle_and_are_fetched_once(evidence_dir: Path) -> None:
    d = _dir(evidence_dir)
    asked: list[str] = []
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    with serve(_rim_service({DRIVER_ID: d / f"{DRIVER_ID}.xml", VBIOS_ID: d / f"{VBIOS_ID}.xml"}, asked)) as url:
        provider = GatewayEvidence(SimulatedProvider(), gpu=Recorded(_gpu_evidence(evidence_dir)), gpu_rim_url=url)
        bundle = provider.collect(keys)
        again = provider.collect(keys, b"\x01" * 32)
    assert asked == [DRIVER_ID, VBIOS_ID]  # once per RIM, not once per bundle
    rims = [(d / f"{DRIVER_ID}.xml").read_bytes(), (d / f"{VBIOS_ID}.xml").read_bytes()]
    assert decode_rim_list(bundle.certs[RIMS_CERT_KEY]) == rims == decode_rim_list(again.certs[RIMS_CERT_KEY])
    verdict = verify_bundle(bundle, keys, Policy(nvidia=NvidiaPolicy(any_version=True)), now=AT,
                            allow_simulated=True)
    checks = {c.name: c.ok for c in verdict.checks}
    compared = [n for n in checks if n.startswith("gpu[0] measurement ")]
    assert len(compared) == 34 and all(checks[n] is not False for n in compared)  # 33 matched, index 35 skipped
    assert checks["gpu[0] cc mode"] is True
    assert checks["gpu[0] nonce"] is False  # recorded evidence answers another nonce: the binding must fail


def test_the_folder_first_then_the_service_and_a_missing_rim_is_named(evidence_dir: Path, tmp_path: Path) -> None:
    d = _dir(evidence_dir)
    shutil.copy(d / f"{DRIVER_ID}.xml", tmp_path / "driver.xml")
    (tmp_path / "notes.xml").write_text("<not-a-rim/>")  # skipped with a warning
    asked: list[str] = []
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])
    with serve(_rim_service({VBIOS_ID: d / f"{VBIOS_ID}.xml"}, asked)) as url:
        both = GatewayEvidence(SimulatedProvider(), gpu=Recorded(_gpu_evidence(evidence_dir)), gpu_rim_dir=tmp_path,
                               gpu_rim_url=url)
        assert len(decode_rim_list(both.collect(keys).certs[RIMS_CERT_KEY])) == 2
        assert asked == [VBIOS_ID]  # the driver RIM came from the folder
        alone = GatewayEvidence(SimulatedProvider(), gpu=Recorded(_gpu_evidence(evidence_dir)), gpu_rim_url=url)
        with pytest.raises(CollateralUnavailableError, match=f"no driver RIM {DRIVER_ID} .*{url}"):
            alone.collect(keys)
        with pytest.raises(OSError, match="HTTP Error 404"):
            http_fetch(f"{url}/v1/rim/NV_GPU_NOTHING")
    folder = GatewayEvidence(SimulatedProvider(), gpu=Recorded(_gpu_evidence(evidence_dir)), gpu_rim_dir=tmp_path)
    with pytest.raises(CollateralUnavailableError, match=f"no vbios RIM {VBIOS_ID} \\(version 96.00.9F.00.04\\)"):
        folder.collect(keys)


def test_a_service_that_answers_no_rim_or_is_unreachable_is_an_error(evidence_dir: Path) -> None:
    keys = ohttp.encode_list([ohttp.GatewayKey.generate(1).config])

    async def junk(request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "rim": base64.b64encode(b"<x/>").decode()})

    app = web.Application()
    app.router.add_get("/v1/rim/{id}", junk)
    with serve(app) as url:
        p = GatewayEvidence(SimulatedProvider(), gpu=Recorded(_gpu_evidence(evidence_dir)), gpu_rim_url=url)
        with pytest.raises(CollateralUnavailableError, match="answered no RIM"):
            p.collect(keys)
    gone = GatewayEvidence(SimulatedProvider(), gpu=Recorded(_gpu_evidence(evidence_dir)), gpu_rim_url=url)
    with pytest.raises(CollateralUnavailableError, match="cannot fetch"):
        gone.collect(keys)


def test_rim_options_need_gpu_evidence_and_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match="need GPU evidence"):
        make_provider("simulated", ProviderOptions(gpu_rim_dir=str(tmp_path)))
    with pytest.raises(ProviderError, match="not a directory"):
        make_provider("simulated", ProviderOptions(gpu_evidence_command="true", gpu_rim_dir=str(tmp_path / "no")))
    with pytest.raises(ProviderError, match="not an http"):
        make_provider("simulated", ProviderOptions(gpu_evidence_command="true", gpu_rim_url="file:///etc"))
    p = make_provider("simulated", ProviderOptions(gpu_evidence_command="true", gpu_rim_dir=str(tmp_path)))
    assert isinstance(p, GatewayEvidence) and isinstance(p.gpu, GpuEvidenceCommand) and p.rims is not None


def test_veil_gateway_refuses_to_start_without_the_rims_its_gpus_need(evidence_dir: Path, tmp_path: Path) -> None:
    listing = tmp_path / "evidence.json"
    listing.write_text(json.dumps(json.loads((_dir(evidence_dir) / "gpu-evidence.json").read_text())["evidence_list"]))
    # The command prints recorded evidence whatever the nonce (its last argument) is.
    command = f"{sys.executable} -c 'import sys; sys.stdout.write(open(sys.argv[1]).read())' {listing}"
    empty = tmp_path / "rims"
    empty.mkdir()
    out = subprocess.run([sys.executable, "-m", "veil_cli", "gateway", "--engine", "echo", "--attestation",
                          "simulated", "--listen", "127.0.0.1:1", "--gpu-evidence-command", command,
                          "--gpu-rim-dir", str(empty)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert f"cannot collect evidence: GPU RIMs: no driver RIM {DRIVER_ID} (version 595.71.05) in {empty}" in out.stderr
