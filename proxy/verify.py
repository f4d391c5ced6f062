"""The client's check of a gateway's evidence before it sends anything (fail closed).

The verification itself lives in ``enclave.attestation`` (one implementation, shared with the gateway side and
``veil attest``); this module adapts it to :class:`proxy.transport.OhttpClient`'s verifier hook.
"""

from __future__ import annotations

import logging
from typing import Callable

from enclave.attestation import Bundle, BundleError
from enclave.attestation.errors import AttestationError
from enclave.attestation.policy import Policy
from enclave.attestation.result import Verdict
from enclave.attestation.verify import verify_bundle

log = logging.getLogger("veil.client")


class AttestationRefused(Exception):
    """The gateway's evidence does not pass; nothing may be sent to its keys."""

    def __init__(self, message: str, verdict: Verdict | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


def make_verifier(
    *, allow_simulated: bool, policy: Policy | None = None
) -> Callable[[bytes, bytes], tuple[object, bool]]:
    """A verifier for :class:`proxy.transport.OhttpClient`: ``(bundle_json, keys_body) -> (verdict, simulated)``.

    Without a policy, the default one applies: no measurement is allowed, so every real platform is refused until
    the user names the measurements they trust (fail closed).
    """
    pol = policy or Policy()

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
