"""Azure in the registry: confidential VMs (bundles ``az-snp-vtpm`` and ``az-tdx-vtpm``: HCL report + vTPM
quote, ``[azure]``, the vTPM provider ``--attestation azure``) and Microsoft Azure Attestation tokens (bundles
``maa``, ``[maa]``, also checked when attached to a CVM bundle)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from ..bundle import Bundle, azure_tpm_nonce
from ..errors import AttestationError, EvidenceFormatError, ProviderError
from ..platform import Platform
from ..result import Verdict
from ..snp.policy import SnpPolicy
from ..tdx.policy import TdxPolicy
from .policy import AzurePolicy, MaaPolicy

if TYPE_CHECKING:
    from ..policy import Policy
    from ..provider import EvidenceProvider, ProviderOptions


def _verify_cvm(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    """Azure CVM bundles: ``report`` is the HCL report; ``certs`` carries the VCEK chain (SNP) or ``collateral`` and
    ``td_quote`` (TDX), and the vTPM quote as ``tpm_quote``/``tpm_signature`` (base64) and ``pcrs`` (JSON list of
    hex, PCR0 first). Veil's binding travels in the TPM quote's nonce (see :func:`azure_tpm_nonce`)."""
    from .verify import verify_azure_cvm

    c = bundle.certs
    try:
        pcrs = {i: bytes.fromhex(v) for i, v in enumerate(orjson.loads(c.get("pcrs", "[]")))}
        tpm_quote = base64.b64decode(c.get("tpm_quote", ""), validate=True)
        tpm_sig = base64.b64decode(c.get("tpm_signature", ""), validate=True)
        td_quote = base64.b64decode(c["td_quote"], validate=True) if "td_quote" in c else None
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise EvidenceFormatError(f"malformed Azure attachments: {exc}") from None
    chain = {k: v for k, v in c.items() if k in ("vcek", "vlek", "ask", "asvk", "ark")} or None
    nonce = azure_tpm_nonce(expected_rd) if expected_rd is not None else None
    verdict = verify_azure_cvm(
        bundle.report, tpm_quote, tpm_sig, pcrs, chain, c.get("collateral"), policy.get(AzurePolicy), now=now,
        expected_nonce=nonce, td_quote=td_quote, snp_policy=policy.get(SnpPolicy), tdx_policy=policy.get(TdxPolicy),
    )
    _verify_attached_maa(verdict, c, policy.get(MaaPolicy), now, nonce)
    return verdict


def _verify_attached_maa(verdict: Verdict, c: Mapping[str, str], maa: MaaPolicy, now: dt.datetime,
                         nonce: bytes | None) -> None:
    """An MAA token a gateway attached beside its vTPM evidence. The client verified the evidence itself; the token
    adds Microsoft's appraisal for relying parties that trust an MAA instance. When the policy names MAA issuers the
    token is required (the bundle's attachments are not signed: a relay could drop it) and its signing key must be
    one the policy names (``key_thumbprints`` or ``jwks_file``): the JWKS travels in the same unsigned bundle, so it
    only supplies pinned keys. Without MAA issuers the document says the token was not used."""
    from .maa import verify_maa_token

    if not maa.issuers:
        if "maa_token" in c:
            verdict.claims["maa_token"] = "attached, not verified: the policy names no [maa] issuers"
        return
    if not verdict.add("MAA token present", "maa_token" in c, "a token (the policy names [maa] issuers)",
                       "attached" if "maa_token" in c else "none"):
        return
    if not verdict.add("MAA signing keys pinned", maa.has_keys, "[maa] key_thumbprints or jwks_file",
                       f"{len(maa.key_thumbprints)} pinned, {len(maa.jwks)} in the policy's JWKS",
                       "" if maa.has_keys else "the signing keys come with the bundle: name them in the policy"):
        return
    try:
        jwks = _evidence_jwks(c.get("maa_jwks"))
    except EvidenceFormatError:
        jwks = None  # a malformed attachment supplies no key; the policy's own keys still apply
    sub = verify_maa_token(c["maa_token"], jwks, maa, now=now, expected_runtime_key=nonce)
    for check in sub.checks:
        verdict.add(f"MAA token: {check.name}", check.ok, check.expected, check.found, check.detail)
    verdict.claims["maa"] = sub.claims


def _verify_maa(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    from .maa import verify_maa_token

    # The bundle's JWKS is untrusted (a relay can write it): it only supplies keys the policy pins.
    return verify_maa_token(bundle.report.decode("ascii", "replace"), _evidence_jwks(bundle.certs.get("jwks")),
                            policy.get(MaaPolicy), now=now, expected_runtime_key=expected_rd)


def _evidence_jwks(text: str | None) -> dict[str, object] | None:
    """A JWKS that came in a bundle (untrusted: only keys the policy pins are taken from it), or None."""
    if text is None:
        return None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise EvidenceFormatError(f"the bundle's JWKS is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise EvidenceFormatError("the bundle's JWKS is not a JSON object")
    return doc


def _check_maa_keys(policy: Policy, data: Mapping[str, Any]) -> None:
    # An MAA token is only as good as the key that signed it, and a bundle's JWKS is as unsigned as the token:
    # a policy that would accept tokens must name the keys itself, or a relay could sign its own.
    if "maa" in policy.platforms or "maa" in data:
        maa = policy.get(MaaPolicy)
        if ("maa" in policy.platforms or maa.issuers) and not maa.has_keys:
            raise EvidenceFormatError(
                "the policy accepts MAA tokens but names no MAA signing key: set [maa] key_thumbprints or "
                "[maa] jwks_file (keys that come with the evidence are never trusted)")


def _provider(options: ProviderOptions) -> EvidenceProvider:
    from .provider import AzureVtpmProvider
    from .vtpm import Tpm2Tools

    try:
        return AzureVtpmProvider(Tpm2Tools(options.tpm_tcti), imds_url=options.azure_imds_url,
                                 maa_url=options.maa_url)
    except AttestationError as exc:
        raise ProviderError(f"--attestation azure: {exc}") from None


def _token_expiry(token: str | None) -> float | None:
    """A JWT's ``exp`` (read, not verified), or None."""
    try:
        payload = (token or "").strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


AZURE = Platform(
    key="azure", table="azure", policy=AzurePolicy, parse_policy=lambda data, base: AzurePolicy.from_dict(data),
    names=("az-snp-vtpm", "az-tdx-vtpm"), verify=_verify_cvm, provider_kind="azure", provider=_provider,
    audit=lambda section: replace(section, any_measurement=True),
    expiry=lambda bundle: _token_expiry(bundle.certs.get("maa_token")),
)
MAA = Platform(
    key="maa", table="maa", policy=MaaPolicy, parse_policy=lambda data, base: MaaPolicy.from_dict(data, base=base),
    names=("maa",), verify=_verify_maa, audit=lambda section: replace(section, any_measurement=True),
    check_policy=_check_maa_keys, expiry=lambda bundle: _token_expiry(bundle.report.decode("ascii", "replace")),
)
