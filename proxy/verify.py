"""The client's check of a gateway's evidence before it sends anything (fail closed).

The verification itself lives in ``enclave.attestation`` (one implementation, shared with the gateway side and
``veil attest``); this module adapts it to :class:`proxy.transport.OhttpClient`'s verifier hook.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from enclave.attestation import AttestationError, Bundle, BundleError, Policy, Verdict, verify_bundle
from enclave.attestation import evidence_expiry as bundle_expiry

log = logging.getLogger("veil.client")


class AttestationRefused(Exception):
    """The gateway's evidence does not pass; nothing may be sent to its keys."""

    def __init__(self, message: str, verdict: Verdict | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


#: A policy as callers give it: loaded already, or the path of its TOML file (``veil proxy --policy FILE``).
PolicyLike = Policy | str | os.PathLike[str]


def load_policy(policy: PolicyLike | None) -> Policy:
    """``policy`` as a :class:`Policy`: a path is loaded (relative files it names are read from its folder); None is
    the default policy, which accepts no measurement.

    Raises:
        AttestationError: the file cannot be read or is not a valid policy (a typo must not loosen it).
    """
    if policy is None:
        return Policy()
    if isinstance(policy, Policy):
        return policy
    return Policy.load(os.fspath(policy))


def make_verifier(
    *, allow_simulated: bool, policy: PolicyLike | None = None
) -> Callable[[bytes, bytes], tuple[object, bool]]:
    """A verifier for :class:`proxy.transport.OhttpClient`: ``(bundle_json, keys_body) -> (verdict, simulated)``.

    ``policy`` is a :class:`Policy` or the path of a policy file (loaded now: a bad file fails here, not at the first
    request). Without a policy, the default one applies: no measurement is allowed, so every real platform is refused
    until the user names the measurements they trust (fail closed).
    """
    pol = load_policy(policy)

    def verify(bundle_json: bytes, keys_body: bytes) -> tuple[object, bool]:
        try:
            bundle = Bundle.from_json(bundle_json)
            verdict = verify_bundle(bundle, keys_body, pol, allow_simulated=allow_simulated)
        except (BundleError, AttestationError) as exc:
            raise AttestationRefused(f"evidence unusable: {exc}") from None
        if not verdict.ok:
            failed = "; ".join(c.line() for c in verdict.failures[:3])
            if verdict.simulated and not allow_simulated:
                failed = ("the gateway presents SIMULATED attestation (no TEE); refusing it. Start the client with "
                          "--insecure-allow-simulated for development only.")
            raise AttestationRefused(failed, verdict)
        if verdict.simulated:
            log.warning("accepted SIMULATED attestation (--insecure-allow-simulated): no TEE protects this gateway")
        return verdict, verdict.simulated

    return verify


def evidence_expiry(bundle_json: bytes) -> float | None:
    """When a bundle's evidence stops verifying by itself (unix time), or None if it does not: an MAA token's
    ``exp`` (a ``platform = "maa"`` bundle or a token attached to Azure evidence), a Nitro document's leaf
    certificate's ``not_after`` (the NSM reuses the leaf): the platform registry's ``expiry``. Read, not verified:
    call it on bytes that just verified, to know when to verify again. Unparsable bundles give None (they did not
    verify anyway)."""
    try:
        bundle = Bundle.from_json(bundle_json)
    except BundleError:
        return None
    return bundle_expiry(bundle)
