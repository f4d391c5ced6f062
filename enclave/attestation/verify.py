"""Verify an evidence bundle against a policy: the one entry point for clients (proxy, transport, ``veil attest``).

Order (fail closed; every step is a check in the verdict):
1. the bundle binds exactly the key configuration the client fetched (byte equality);
2. the platform is one the policy accepts (simulated only with ``allow_simulated``);
3. the CPU evidence verifies (the registry's verifier for the bundle's platform: chain, signature, TCB, policy,
   measurement) and its
   REPORT_DATA equals the binding recomputed here from the bytes received (key list, GPU evidence, nonce);
4. GPU evidence (with the NVSwitch evidence it carries), when present or required (``require_gpu``, ``[nvidia]
   gpu_count`` or ``switch_count``), verifies with the nonce derived from the key configuration;
5. the gateway's configuration (bound by REPORT_DATA with the keys) has every value the policy's ``[config]``
   requires; the document lists every value either way;
6. with ``require_post_quantum``, the bound key list offers an X-Wing configuration; the verdict names the KEM of
   every bound configuration either way.
"""

from __future__ import annotations

import datetime as dt
import hmac

import orjson

import ohttp

from .bundle import Bundle, gpu_nonce, report_data
from .errors import EvidenceFormatError
from .nvidia.policy import NvidiaPolicy
from .policy import Policy
from .registry import GPU, VERIFIERS
from .result import Verdict


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

    platform = VERIFIERS.get(bundle.platform)
    if platform is not None and platform.simulated:
        verdict.simulated = True
        if not allow_simulated:
            verdict.add("platform accepted", False, "a real TEE (" + ", ".join(policy.platforms) + ")",
                        "simulated", "simulated evidence is refused without --insecure-allow-simulated")
            return verdict
    elif bundle.platform not in policy.platforms:
        verdict.add("platform accepted", False, " or ".join(policy.platforms), bundle.platform)
        return verdict
    else:
        verdict.add("platform accepted", True, " or ".join(policy.platforms), bundle.platform)
    if platform is None or platform.verify is None:
        raise EvidenceFormatError(f"unknown platform {bundle.platform!r}")
    cpu = platform.verify(bundle, policy, when, expected_rd)
    verdict.extend(cpu)
    verdict.measurement, verdict.report_data, verdict.claims = cpu.measurement, cpu.report_data, dict(cpu.claims)

    # A policy counting GPUs or switches needs their evidence as much as require_gpu does: without it, fail.
    nvidia = policy.get(NvidiaPolicy)
    if bundle.gpu_evidence or policy.require_gpu or nvidia.gpu_count is not None or nvidia.switch_count is not None:
        if not bundle.gpu_evidence:
            verdict.add("GPU evidence present", False, "NVIDIA CC evidence", "none")
        elif GPU.verify is not None:
            nonce = gpu_nonce(bundle.key_config) if check_binding else None
            gpu = GPU.verify(bundle, policy, when, nonce)
            verdict.extend(gpu)
            verdict.claims["gpus"] = gpu.claims
    _check_config(verdict, bundle, policy, check_binding)
    _check_kems(verdict, bundle, policy)
    return verdict


def _check_kems(verdict: Verdict, bundle: Bundle, policy: Policy) -> None:
    """Name the KEM of every bound key configuration; with ``require_post_quantum``, demand an X-Wing one."""
    try:
        configs = ohttp.decode_list(bundle.key_config) if bundle.key_config else None
    except ohttp.OHTTPError:
        configs = None
    if configs is not None:
        verdict.key_configs = [{"key_id": c.key_id, "kem": c.kem.name, "kem_id": int(c.kem),
                                "post_quantum": c.kem.post_quantum} for c in configs]
    if policy.require_post_quantum:
        offered = ", ".join(f"{c.kem.name} (key {c.key_id})" for c in configs or []) or "no key configuration"
        verdict.add("post-quantum key configuration", any(c.kem.post_quantum for c in configs or []),
                    "X-Wing (KEM 0x647a)", offered)


def evidence_expiry(bundle: Bundle) -> float | None:
    """When ``bundle``'s evidence stops verifying by itself (unix time), or None if it does not (an MAA token's
    ``exp``, a Nitro document's leaf certificate). Read, not verified: call it on a bundle that just verified."""
    platform = VERIFIERS.get(bundle.platform)
    return platform.expiry(bundle) if platform is not None and platform.expiry is not None else None


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
