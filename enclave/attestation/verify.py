"""Verify an evidence bundle against a policy: the one entry point for clients (proxy, transport, ``veil attest``).

Order (fail closed; every step is a check in the verdict):
1. the bundle binds exactly the key configuration the client fetched (byte equality);
2. the platform is one the policy accepts (simulated only with ``allow_simulated``);
3. the CPU evidence verifies (SEV-SNP or TDX verifier: chain, signature, TCB, policy, measurement) and its
   REPORT_DATA equals the binding recomputed here from the bytes received (key list, GPU evidence, nonce);
4. GPU evidence, when present or required, verifies with the nonce derived from the key configuration;
5. the gateway's configuration (bound by REPORT_DATA with the keys) has every value the policy's ``[config]``
   requires; the document lists every value either way.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac

import orjson

from .bundle import Bundle, azure_tpm_nonce, gpu_nonce, report_data
from .errors import EvidenceFormatError
from .policy import Policy
from .result import Verdict
from .simulated import SimulatedEvidenceError, verify_simulated


def verify_bundle(
    bundle: Bundle,
    keys_body: bytes | None,
    policy: Policy,
    *,
    now: dt.datetime | None = None,
    allow_simulated: bool = False,
    check_binding: bool = True,
) -> Verdict:
    """Check ``bundle`` for ``keys_body`` (the exact ``application/ohttp-keys`` bytes the client will use).

    ``check_binding=False`` is for auditing raw evidence (``veil attest verify --no-binding``) and says so.
    Raises :class:`EvidenceFormatError` only for evidence that cannot be parsed at all.
    """
    when = now or dt.datetime.now(dt.timezone.utc)
    verdict = Verdict(platform=bundle.platform)
    if keys_body is not None:
        verdict.add("bundle binds the fetched key configuration", hmac.compare_digest(bundle.key_config, keys_body),
                    "identical bytes", f"{len(bundle.key_config)} vs {len(keys_body)} bytes")
    expected_rd = (report_data(bundle.key_config, bundle.gpu_evidence, bundle.nonce, bundle.config)
                   if check_binding else None)
    verdict.config = dict(bundle.config)

    if bundle.platform == "simulated":
        verdict.simulated = True
        if not allow_simulated:
            verdict.add("platform accepted", False, "a real TEE (" + ", ".join(policy.platforms) + ")",
                        "simulated", "simulated evidence is refused without --insecure-allow-simulated")
            return verdict
        try:
            sim = verify_simulated(bundle, allow_simulated=True)
            verdict.add("simulated evidence signature and binding", True, detail="INSECURE: no TEE")
            verdict.measurement = sim.measurement
        except SimulatedEvidenceError as exc:
            verdict.add("simulated evidence", False, detail=str(exc))
    elif bundle.platform not in policy.platforms:
        verdict.add("platform accepted", False, " or ".join(policy.platforms), bundle.platform)
        return verdict
    else:
        verdict.add("platform accepted", True, " or ".join(policy.platforms), bundle.platform)
        cpu = _verify_cpu(bundle, policy, when, expected_rd)
        verdict.extend(cpu)
        verdict.measurement, verdict.report_data, verdict.claims = cpu.measurement, cpu.report_data, dict(cpu.claims)

    if bundle.gpu_evidence or policy.require_gpu:
        if not bundle.gpu_evidence:
            verdict.add("GPU evidence present", False, "NVIDIA CC evidence", "none")
        else:
            from .nvidia import decode_gpu_evidence, verify_nvidia

            gpus = decode_gpu_evidence(bundle.gpu_evidence)
            nonce = gpu_nonce(bundle.key_config) if check_binding else None
            gpu = verify_nvidia(gpus, policy.nvidia, now=when, expected_nonce=nonce)
            verdict.extend(gpu)
            verdict.claims["gpus"] = gpu.claims
    _check_config(verdict, bundle, policy, check_binding)
    return verdict


def _check_config(verdict: Verdict, bundle: Bundle, policy: Policy, check_binding: bool) -> None:
    """One check per value ``[config] require`` names. The values are bound by the same REPORT_DATA as the keys
    (checked above); without the binding check they are unproven, so the checks are not passes."""
    for name, wanted in sorted(policy.config.require.items()):
        found = bundle.config.get(name, _ABSENT)
        shown = "(absent)" if found is _ABSENT else _show(found)
        if not check_binding:
            verdict.add(f"gateway configuration {name}", None, _show(wanted), shown, "not bound: --no-binding")
            continue
        # type-exact: a gateway saying 1 does not satisfy true, and "0" does not satisfy 0
        ok = found is not _ABSENT and type(found) is type(wanted) and found == wanted
        verdict.add(f"gateway configuration {name}", ok, _show(wanted), shown)


_ABSENT = object()


def _show(value: object) -> str:
    return orjson.dumps(value).decode()


def _verify_cpu(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    if bundle.platform in ("az-snp-vtpm", "az-tdx-vtpm"):
        return _verify_azure(bundle, policy, now, expected_rd)
    if bundle.platform == "aws-nitro":
        from .nitro import verify_nitro

        # Nitro documents carry no key of their own: Veil's binding goes in user_data (64 bytes). The client checks
        # certificates at its own clock, not the document's timestamp: the evidence must be valid now.
        return verify_nitro(bundle.report, policy.for_platform("nitro"), now=now, expected_user_data=expected_rd)
    if bundle.platform == "sgx":
        from .sgx import verify_sgx

        return verify_sgx(bundle.report, bundle.certs.get("collateral"), policy.for_platform("sgx"), now=now,
                          expected_report_data=expected_rd)
    if bundle.platform == "maa":
        from .azure import verify_maa_token

        # The bundle's JWKS is untrusted (a relay can write it): it only supplies keys the policy pins.
        return verify_maa_token(bundle.report.decode("ascii", "replace"), _evidence_jwks(bundle.certs.get("jwks")),
                                policy.for_platform("maa"), now=now, expected_runtime_key=expected_rd)
    if bundle.platform == "sev-snp":
        from .snp import verify_snp

        return verify_snp(bundle.report, bundle.certs, policy.snp, now=now, expected_report_data=expected_rd)
    if bundle.platform == "tdx":
        from .tdx import verify_tdx

        collateral = bundle.certs.get("collateral")
        if collateral is None:
            v = Verdict(platform="tdx")
            v.add("TDX collateral present", False, "collateral in the bundle", "none")
            return v
        return verify_tdx(bundle.report, collateral, policy.tdx, now=now, expected_report_data=expected_rd)
    raise EvidenceFormatError(f"unknown platform {bundle.platform!r}")


def _verify_azure(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    """Azure CVM bundles: ``report`` is the HCL report; ``certs`` carries the VCEK chain (SNP) or ``collateral`` and
    ``td_quote`` (TDX), and the vTPM quote as ``tpm_quote``/``tpm_signature`` (base64) and ``pcrs`` (JSON list of
    hex, PCR0 first). Veil's binding travels in the TPM quote's nonce (see :func:`azure_tpm_nonce`)."""
    from .azure import verify_azure_cvm

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
        bundle.report, tpm_quote, tpm_sig, pcrs, chain, c.get("collateral"), policy.for_platform("azure"), now=now,
        expected_nonce=nonce, td_quote=td_quote, snp_policy=policy.snp, tdx_policy=policy.tdx,
    )
    _verify_attached_maa(verdict, c, policy, now, nonce)
    return verdict


def _verify_attached_maa(verdict: Verdict, c: dict[str, str], policy: Policy, now: dt.datetime,
                         nonce: bytes | None) -> None:
    """An MAA token a gateway attached beside its vTPM evidence. The client verified the evidence itself; the token
    adds Microsoft's appraisal for relying parties that trust an MAA instance. When the policy names MAA issuers the
    token is required (the bundle's attachments are not signed: a relay could drop it) and its signing key must be
    one the policy names (``key_thumbprints`` or ``jwks_file``): the JWKS travels in the same unsigned bundle, so it
    only supplies pinned keys. Without MAA issuers the document says the token was not used."""
    from .azure import verify_maa_token

    maa = policy.for_platform("maa")
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
