"""Gateway-side evidence on an Azure confidential VM (SEV-SNP or TDX behind Azure's paravisor, the HCL).

A guest on Azure cannot ask the hardware for a report itself: the paravisor (HCL) owns it and exposes it through
the vTPM. One collection, in the order the binding needs::

    n  = SHA-256(Veil binding)                        (azure_tpm_nonce: vTPMs take <= 48 bytes of nonce)
    write n || 0^32 to NV 0x01400002                  -> the paravisor refreshes the HCL report: its runtime JSON's
    read NV 0x01400001 until its user-data is ours       user-data is n || 0^32, and hash(runtime JSON) is in the
                                                         hardware REPORT_DATA, so the hardware report binds n too
    TPM2_Quote(AK 0x81000003, SHA-256 PCR0-23, n)     -> the AK is HCLAkPub in the same runtime JSON
    SNP: VCEK + ASK/ARK from the IMDS THIM endpoint    TDX: TD report -> TD quote from the IMDS quote endpoint
    optional: a Microsoft Azure Attestation token over the same hardware report and runtime JSON

The bundle is what :func:`enclave.attestation.verify._verify_azure` checks: ``report`` the HCL report; ``certs``
the TPM quote, its signature and PCRs, the VCEK chain or the TD quote (TDX collateral is added by
``GatewayEvidence``), and ``maa_token``/``maa_jwks`` when MAA is configured. Network calls go to Azure's
link-local IMDS (169.254.169.254) and the configured MAA instance only.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Final, Protocol

from ..bundle import Bundle, ConfigValue, azure_tpm_nonce, report_data
from ..errors import AttestationError, EvidenceFormatError
from .hcl import HclReport, b64url_decode, parse_hcl_report
from .verify import PLATFORM_SNP, PLATFORM_TDX
from .vtpm import (
    AK_HANDLE,
    HCL_REPORT_NV_INDEX,
    QUOTE_PCRS,
    USER_DATA_NV_INDEX,
    USER_DATA_SIZE,
    Tpm2Tools,
    TpmError,
    TpmOps,
)

IMDS_URL: Final = "http://169.254.169.254"
THIM_PATH: Final = "/metadata/THIM/amd/certification"
TDQUOTE_PATH: Final = "/acc/tdquote"
MAA_SNP_PATH: Final = "/attest/SevSnpVm?api-version=2022-08-01"
MAA_TDX_PATH: Final = "/attest/TdxVm?api-version=2025-06-01"


class AzureEvidenceError(AttestationError):
    """Evidence could not be collected on this Azure CVM (vTPM, IMDS or MAA); the message says what to do."""


class HttpGetPost(Protocol):
    """The two HTTP calls the provider makes (IMDS and MAA); tests answer them with recorded responses."""

    def get(self, url: str, headers: dict[str, str]) -> bytes: ...

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> bytes: ...


class UrllibHttp:
    """Plain blocking HTTP (the provider runs in a worker thread); IMDS is link-local, so no proxy is used."""

    def __init__(self, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _open(self, req: urllib.request.Request) -> bytes:
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError as exc:
            raise AzureEvidenceError(f"{req.get_method()} {req.full_url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AzureEvidenceError(f"{req.get_method()} {req.full_url}: {exc}") from None

    def get(self, url: str, headers: dict[str, str]) -> bytes:
        return self._open(urllib.request.Request(url, headers=headers, method="GET"))

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> bytes:
        return self._open(urllib.request.Request(url, data=body, headers=headers, method="POST"))


class AzureVtpmProvider:
    """An :class:`~enclave.attestation.provider.EvidenceProvider` for Azure SEV-SNP and TDX confidential VMs.

    ``platform`` (``az-snp-vtpm`` or ``az-tdx-vtpm``) is read from the HCL report at construction, so a gateway
    that starts on the wrong kind of machine says so before it serves. Collections are serialised: the user-data
    index is one shared slot.
    """

    def __init__(self, tpm: TpmOps | None = None, http: HttpGetPost | None = None, *, imds_url: str = IMDS_URL,
                 maa_url: str | None = None, refresh_tries: int = 20, refresh_delay: float = 0.25) -> None:
        self.tpm = tpm if tpm is not None else Tpm2Tools()
        self.http = http if http is not None else UrllibHttp()
        self.imds_url = imds_url.rstrip("/")
        self.maa_url = maa_url.rstrip("/") if maa_url else None
        self.refresh_tries = refresh_tries
        self.refresh_delay = refresh_delay
        self._lock = threading.Lock()
        self._vcek: dict[str, str] | None = None
        try:
            first = parse_hcl_report(self.tpm.nv_read(HCL_REPORT_NV_INDEX))
        except TpmError as exc:
            raise AzureEvidenceError(f"cannot read the HCL report from vTPM NV index 0x{HCL_REPORT_NV_INDEX:08x} "
                                     f"({exc}); is this an Azure confidential VM?") from None
        except EvidenceFormatError as exc:
            raise AzureEvidenceError(f"vTPM NV index 0x{HCL_REPORT_NV_INDEX:08x} holds no HCL report: {exc}") from None
        self.platform = PLATFORM_SNP if first.is_snp else PLATFORM_TDX

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> Bundle:
        tpm_nonce = azure_tpm_nonce(report_data(key_config, gpu_evidence, nonce, config))
        user_data = tpm_nonce + bytes(USER_DATA_SIZE - len(tpm_nonce))
        with self._lock:
            hcl = self._refresh_hcl(user_data)
            quote = self.tpm.quote(AK_HANDLE, QUOTE_PCRS, tpm_nonce)
        certs = {
            "tpm_quote": base64.b64encode(quote.message).decode(),
            "tpm_signature": base64.b64encode(quote.signature).decode(),
            "pcrs": json.dumps([quote.pcrs[i].hex() for i in range(max(quote.pcrs) + 1)]),
        }
        if hcl.is_snp:
            certs.update(self._vcek_chain())
        else:
            certs["td_quote"] = base64.b64encode(self._td_quote(hcl)).decode()
        if self.maa_url:
            certs.update(self._maa_token(hcl, certs))
        return Bundle(platform=self.platform, key_config=key_config, report=hcl.raw, gpu_evidence=gpu_evidence,
                      nonce=nonce, certs=certs, issued_at=time.time(), config=dict(config or {}))

    def evidence_expiry(self, bundle: Bundle) -> float | None:
        """An attached MAA token's ``exp`` (tokens live 8 hours); vTPM evidence itself does not expire."""
        token = bundle.certs.get("maa_token")
        if token is None:
            return None
        try:  # read, not verified: this only schedules the next collection
            exp = json.loads(b64url_decode(token.split(".")[1])).get("exp")
        except (IndexError, TypeError, ValueError):
            return None
        return float(exp) if isinstance(exp, (int, float)) else None

    # --- the vTPM --------------------------------------------------------------------------------------------------

    def _refresh_hcl(self, user_data: bytes) -> HclReport:
        """Write ``user_data`` and read the HCL report until the paravisor has refreshed it with them."""
        if USER_DATA_NV_INDEX not in self.tpm.nv_indices():
            self.tpm.nv_define(USER_DATA_NV_INDEX, USER_DATA_SIZE)
        self.tpm.nv_write(USER_DATA_NV_INDEX, user_data)
        seen: bytes | None = None
        for attempt in range(self.refresh_tries):
            hcl = parse_hcl_report(self.tpm.nv_read(HCL_REPORT_NV_INDEX))
            seen = hcl.user_data
            if seen == user_data:
                return hcl
            if attempt + 1 < self.refresh_tries:
                time.sleep(self.refresh_delay)
        raise AzureEvidenceError(
            f"the HCL report did not pick up the user data after {self.refresh_tries} reads (its user-data is "
            f"{seen.hex() if seen is not None else 'absent'}); the paravisor may be too old to refresh the report "
            "on NV writes: update the VM image, or report this with the output of `tpm2_nvread 0x01400001 -C o`"
        )

    # --- IMDS --------------------------------------------------------------------------------------------------------

    def _vcek_chain(self) -> dict[str, str]:
        """VCEK and ASK+ARK from Azure's THIM cache (IMDS). Cached: they change only with a TCB update, and a
        stale VCEK fails the client's signature check loudly rather than passing anything."""
        if self._vcek is None:
            raw = self.http.get(self.imds_url + THIM_PATH, {"Metadata": "true"})
            obj = _json(raw, "IMDS THIM certification response")
            vcek, chain = obj.get("vcekCert"), obj.get("certificateChain")
            if not (isinstance(vcek, str) and "BEGIN CERTIFICATE" in vcek and isinstance(chain, str)
                    and "BEGIN CERTIFICATE" in chain):
                raise AzureEvidenceError("IMDS THIM response lacks vcekCert / certificateChain PEMs")
            self._vcek = {"vcek": vcek, "ask": chain}
        return dict(self._vcek)

    def _td_quote(self, hcl: HclReport) -> bytes:
        """The TD quote for the HCL report's TD report (IMDS quotes it with the host's quoting enclave)."""
        body = json.dumps({"report": _b64url(hcl.td_report)}).encode()
        raw = self.http.post(self.imds_url + TDQUOTE_PATH, body, {"Content-Type": "application/json"})
        return _b64url_field(_json(raw, "IMDS TD quote response"), "quote", "IMDS TD quote response")

    # --- Microsoft Azure Attestation ---------------------------------------------------------------------------------

    def _maa_token(self, hcl: HclReport, certs: dict[str, str]) -> dict[str, str]:
        """An MAA token over the same hardware evidence, with the HCL runtime JSON as runtime data (so the token's
        ``x-ms-runtime.user-data`` carries the binding), and the instance's signing keys for clients."""
        assert self.maa_url is not None
        runtime = {"data": _b64url(hcl.runtime_data), "dataType": "JSON"}
        if hcl.is_snp:
            report = json.dumps({"SnpReport": _b64url(hcl.snp_report),
                                 "VcekCertChain": _b64url((certs["vcek"] + certs["ask"]).encode())}).encode()
            url, body = self.maa_url + MAA_SNP_PATH, {"report": _b64url(report), "runtimeData": runtime}
        else:
            url = self.maa_url + MAA_TDX_PATH
            body = {"quote": _b64url(base64.b64decode(certs["td_quote"])), "runtimeData": runtime}
        raw = self.http.post(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        token = _json(raw, "MAA attest response").get("token")
        if not isinstance(token, str) or token.count(".") != 2:
            raise AzureEvidenceError(f"MAA at {self.maa_url} returned no token")
        jwks = _json(self.http.get(self.maa_url + "/certs", {}), "MAA signing keys")
        if not isinstance(jwks.get("keys"), list):
            raise AzureEvidenceError(f"MAA at {self.maa_url}/certs returned no JWKS")
        return {"maa_token": token, "maa_jwks": json.dumps(jwks)}


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AzureEvidenceError(f"{what} is not JSON") from None
    if not isinstance(obj, dict):
        raise AzureEvidenceError(f"{what} is not a JSON object")
    return obj


def _b64url_field(obj: dict[str, Any], key: str, what: str) -> bytes:
    try:
        return b64url_decode(obj.get(key))
    except (TypeError, ValueError):
        raise AzureEvidenceError(f"{what} has no base64url {key!r}") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
