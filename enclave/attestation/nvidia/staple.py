"""Gateway side of OCSP for NVIDIA's chains: fetch a response for every certificate the client asks a status for
(:func:`.verify._check_revocation`: the device chains without leaf and root, each shipped RIM's chain without the
root), keep the ones that verify, staple them into the bundle (``certs["nvidia_ocsp"]``) and fetch again before they
lapse.

The client judges every stapled response at its own clock (:mod:`.ocsp`); the gateway staples only responses that
verify now (a responder answering garbage, or signing with a key the issuer did not authorise, would only fail every
client), revoked ones included (the client must see them). A responder that cannot be reached leaves the certificate
without a response (a client whose policy says ``require_ocsp`` then refuses) and keeps a cached response that has
not lapsed. A response is fetched again once half its window (thisUpdate..nextUpdate) has passed; the bundle's expiry
is its earliest nextUpdate, so the gateway collects a fresh bundle before a stapled response lapses.

The network is behind :data:`OcspFetch` (``fetch(url, DER request) -> DER response``: HTTP POST of
``application/ocsp-request``, RFC 6960 appendix A), so tests run a local stand-in responder.
"""

from __future__ import annotations

import datetime
import logging
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from ..errors import EvidenceFormatError
from .abi import decode_gpu_evidence
from .ocsp import MAX_OCSP_SIZE, check_ocsp, decode_ocsp_list

log = logging.getLogger("veil.attestation")

#: ``fetch(url, der_request) -> der_response``; raises OSError when the responder cannot be reached
OcspFetch = Callable[[str, bytes], bytes]
#: NVIDIA's OCSP responder (nvtrust's default)
NVIDIA_OCSP_URL: Final = "https://ocsp.ndis.nvidia.com"

Pair = tuple[x509.Certificate, x509.Certificate]  # (certificate, its issuer)


def http_ocsp_fetch(url: str, request: bytes, timeout: float = 30.0) -> bytes:
    """POST ``request`` to the responder at ``url`` (http or https only); at most :data:`MAX_OCSP_SIZE` bytes back."""
    if not url.startswith(("https://", "http://")):
        raise OSError(f"not an http(s) URL: {url}")
    req = urllib.request.Request(url, data=request, headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
        body: bytes = resp.read(MAX_OCSP_SIZE + 1)
    if len(body) > MAX_OCSP_SIZE:
        raise OSError(f"{url}: OCSP response larger than {MAX_OCSP_SIZE} bytes")
    return body


def ocsp_targets(gpu_evidence: bytes, rims: Sequence[bytes]) -> list[Pair]:
    """The (certificate, issuer) pairs a client checks: each GPU's device chain but its leaf and root, and each RIM's
    embedded chain but the embedded root, under the pinned NVIDIA RIM root; each pair once."""
    from .rim import _embedded_certs, _pinned_root, _root
    from .verify import parse_cert_chain

    pairs: list[Pair] = []
    for _report, pem in decode_gpu_evidence(gpu_evidence):
        device = parse_cert_chain(pem)
        pairs += [(device[i], device[i + 1]) for i in range(1, len(device) - 1)]
    for data in rims:
        chain = [*_embedded_certs(_root(data))[:-1], _pinned_root(None)]
        pairs += [(chain[i], chain[i + 1]) for i in range(len(chain) - 1)]
    out: list[Pair] = []
    seen: set[tuple[int, bytes]] = set()
    for cert, issuer in pairs:
        key = (cert.serial_number, issuer.fingerprint(hashes.SHA256()))
        if key not in seen:
            seen.add(key)
            out.append((cert, issuer))
    return out


def ocsp_expiry(stapled: str) -> float | None:
    """The earliest nextUpdate (unix time) of a bundle's stapled responses; None when none has one."""
    try:
        responses = decode_ocsp_list(stapled)
    except EvidenceFormatError:
        return None
    ends = [s.next_update_utc.timestamp() for r in responses if r.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            for s in r.responses if s.next_update_utc is not None]
    return min(ends) if ends else None


class OcspStapler:
    """Fetches, checks, caches and refreshes OCSP responses from one responder URL."""

    def __init__(self, url: str, fetch: OcspFetch | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.fetch = fetch or http_ocsp_fetch
        self.clock = clock
        # (serial, issuer fingerprint) -> (DER response, thisUpdate, nextUpdate) as unix times
        self._cache: dict[tuple[int, bytes], tuple[bytes, float, float]] = {}

    def responses(self, pairs: Sequence[Pair]) -> list[bytes]:
        """One DER response per pair that has one that verifies now (fetched, or cached and not half-way through its
        window), in ``pairs`` order."""
        now = self.clock()
        out: list[bytes] = []
        for cert, issuer in pairs:
            key = (cert.serial_number, issuer.fingerprint(hashes.SHA256()))
            cached = self._cache.get(key)
            if cached is None or now >= cached[1] + (cached[2] - cached[1]) / 2:
                fresh = self._fetch(cert, issuer, now)
                if fresh is not None:
                    self._cache[key] = cached = fresh
            if cached is not None and now <= cached[2]:
                out.append(cached[0])
            elif cached is not None:
                del self._cache[key]
        return out

    def _fetch(self, cert: x509.Certificate, issuer: x509.Certificate, now: float) -> tuple[bytes, float, float] | None:
        name = _cn(cert)
        request = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384()).build()
        try:
            der = self.fetch(self.url, request.public_bytes(Encoding.DER))
            resp = ocsp.load_der_ocsp_response(der)
        except (OSError, ValueError) as exc:
            log.warning("OCSP for %s: no response from %s (%s); not stapled", name, self.url, exc)
            return None
        at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        status = check_ocsp(cert, issuer, [resp], at)
        if status.status == "missing":
            log.warning("OCSP for %s: the response from %s does not verify (%s); not stapled", name, self.url,
                        status.detail)
            return None
        if status.status == "revoked":
            log.error("OCSP for %s: REVOKED (%s); stapled: clients will refuse this GPU", name, status.detail)
        single = next(s for s in resp.responses if s.serial_number == cert.serial_number)
        assert single.next_update_utc is not None  # check_ocsp refuses a response without one
        return der, single.this_update_utc.timestamp(), single.next_update_utc.timestamp()


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()
