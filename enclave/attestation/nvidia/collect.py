"""Gateway side of the NVIDIA collateral: which RIMs this machine's GPUs need, from the operator's folder or NVIDIA's
RIM service, gathered once and shipped in every bundle so that clients verify offline.

The gateway does not judge the RIMs (every client authenticates each one against the pinned NVIDIA RIM root); it
only picks them. A GPU whose RIM cannot be found is an error at start: evidence whose RIMs are missing would only
fail at every client.

NVIDIA's RIM service answers ``GET <url>/v1/rim/<id>`` with JSON ``{"id": ..., "rim": base64(XML), ...}``. The
network is behind :data:`Fetch` (``fetch(url) -> body``), so tests serve the shared RIM files from a local stand-in.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from ..errors import CollateralUnavailableError, EvidenceFormatError
from .abi import decode_gpu_evidence, parse_gpu_report
from .rim import MAX_RIM_SIZE, RimDocument, driver_rim_id, gpu_chip, parse_rim, vbios_rim_id

log = logging.getLogger("veil.attestation")

#: ``fetch(url) -> response body``; raises OSError (urllib's errors are OSErrors) when the URL cannot be fetched
Fetch = Callable[[str], bytes]
#: NVIDIA's public RIM service (``--gpu-rim-url``)
NVIDIA_RIM_SERVICE: Final = "https://rim.attestation.nvidia.com"
MAX_SERVICE_RESPONSE: Final = 2 * MAX_RIM_SIZE


def http_fetch(url: str, timeout: float = 30.0) -> bytes:
    """GET ``url`` (http or https only) and return at most :data:`MAX_SERVICE_RESPONSE` bytes of its body."""
    if not url.startswith(("https://", "http://")):
        raise OSError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
        body: bytes = resp.read(MAX_SERVICE_RESPONSE + 1)
    if len(body) > MAX_SERVICE_RESPONSE:
        raise OSError(f"{url}: response larger than {MAX_SERVICE_RESPONSE} bytes")
    return body


@dataclass(frozen=True, slots=True)
class NeededRim:
    """One RIM a GPU of the evidence needs."""

    rim_id: str  # NVIDIA's service id (NV_GPU_DRIVER_GH100_595.71.05, NV_GPU_VBIOS_1010_0210_886_96009F0004, ...)
    role: str  # driver | vbios
    version: str  # colloquialVersion, upper case
    chip: str | None  # GH100, GB100, ... (None when neither CHIP_INFO nor the device leaf names it)


def needed_rims(gpu_evidence: bytes) -> list[NeededRim]:
    """The distinct driver and VBIOS RIMs the GPUs of ``gpu_evidence`` (Veil's encoding) name, in report order."""
    out: list[NeededRim] = []
    for report_bytes, chain in decode_gpu_evidence(gpu_evidence):
        report = parse_gpu_report(report_bytes)
        chip = gpu_chip(report.chip_info, _leaf_cn(chain))
        wanted: list[NeededRim] = []
        if report.driver_version is not None:
            wanted.append(NeededRim(driver_rim_id(chip or "GH100", report.driver_version), "driver",
                                    report.driver_version.upper(), chip))
        if report.vbios_version is not None:
            wanted.append(NeededRim(vbios_rim_id(report.project, report.project_sku, report.chip_sku,
                                                 report.vbios_version), "vbios", report.vbios_version.upper(), chip))
        out.extend(n for n in wanted if n not in out)
    return out


def _leaf_cn(chain: str) -> str | None:
    try:
        leaf = x509.load_pem_x509_certificate(chain.encode("ascii"))  # the first PEM block: the leaf
    except ValueError:
        return None
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


class RimDirectory:
    """The operator's folder of RIM files (``*.xml``, ``*.swidtag``), matched by ``colloquialVersion`` and, among
    several of one version, by chip (``product``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def find(self, need: NeededRim) -> bytes | None:
        """The one file for ``need``; None when there is none.

        Raises:
            CollateralUnavailableError: several files fit and the chip does not tell them apart.
        """
        found = [(doc.product.upper(), data) for doc, data in self._documents() if doc.version.upper() == need.version]
        if len(found) > 1 and need.chip is not None:
            found = [f for f in found if f[0] == need.chip.upper()] or found
        if len(found) > 1:
            raise CollateralUnavailableError(f"GPU RIMs: {len(found)} files in {self.path} have version "
                                             f"{need.version} for {need.chip or 'this chip'} (need exactly one)")
        return found[0][1] if found else None

    def _documents(self) -> list[tuple[RimDocument, bytes]]:
        docs: list[tuple[RimDocument, bytes]] = []
        for path in sorted(self.path.iterdir()):
            if path.suffix not in (".xml", ".swidtag") or not path.is_file():
                continue
            data = path.read_bytes()
            try:
                docs.append((parse_rim(data), data))
            except EvidenceFormatError as exc:
                log.warning("ignoring %s: not a RIM (%s)", path.name, exc)
        return docs

    def __str__(self) -> str:
        return str(self.path)


class RimService:
    """NVIDIA's RIM service (or a mirror of it): ``GET <url>/v1/rim/<id>``."""

    def __init__(self, url: str, fetch: Fetch | None = None) -> None:
        self.url = url.rstrip("/")
        self.fetch = fetch or http_fetch

    def find(self, need: NeededRim) -> bytes | None:
        """The RIM document the service holds under ``need.rim_id``; None when it answers 404.

        Raises:
            CollateralUnavailableError: the service cannot be reached or answers something that is not a RIM.
        """
        url = f"{self.url}/v1/rim/{need.rim_id}"
        try:
            body = self.fetch(url)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise CollateralUnavailableError(f"GPU RIMs: {url}: HTTP {exc.code}") from None
        except OSError as exc:
            raise CollateralUnavailableError(f"GPU RIMs: cannot fetch {url}: {exc}") from None
        try:
            answer = json.loads(body)
            if not isinstance(answer, dict) or answer.get("id") != need.rim_id or not isinstance(answer.get("rim"), str):
                raise ValueError(f"expected {{\"id\": {need.rim_id!r}, \"rim\": base64}}")
            data = base64.b64decode(answer["rim"], validate=True)
            doc = parse_rim(data)
        except (ValueError, binascii.Error, EvidenceFormatError) as exc:
            raise CollateralUnavailableError(f"GPU RIMs: {url} answered no RIM: {exc}") from None
        if doc.version.upper() != need.version:
            raise CollateralUnavailableError(f"GPU RIMs: {url} answered version {doc.version}, not {need.version}")
        return data

    def __str__(self) -> str:
        return self.url


RimSource = RimDirectory | RimService


class RimCollector:
    """The RIMs a machine's GPUs need, looked up in each source in turn and kept once found (the GPUs and their
    firmware do not change while the gateway runs; NVIDIA's service is asked once per RIM, not per bundle)."""

    def __init__(self, sources: list[RimSource]) -> None:
        if not sources:
            raise ValueError("no RIM source")
        self.sources = sources
        self._found: dict[NeededRim, bytes] = {}

    def rims(self, gpu_evidence: bytes) -> list[bytes]:
        """One document per needed RIM, in :func:`needed_rims` order.

        Raises:
            CollateralUnavailableError: a RIM is in none of the sources (the message names its id and version).
        """
        out: list[bytes] = []
        for need in needed_rims(gpu_evidence):
            if need not in self._found:
                for source in self.sources:
                    if (data := source.find(need)) is not None:
                        self._found[need] = data
                        break
                else:
                    where = " or ".join(str(s) for s in self.sources)
                    raise CollateralUnavailableError(
                        f"GPU RIMs: no {need.role} RIM {need.rim_id} (version {need.version}) in {where}; the "
                        "gateway will not publish GPU evidence its clients cannot compare")
            if self._found[need] not in out:
                out.append(self._found[need])
        return out
