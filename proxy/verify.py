"""The client's check of a gateway's evidence before it sends anything (fail closed).

Real SEV-SNP/TDX/NVIDIA verifiers arrive with the attestation work; until then every real platform is refused
with a clear message, and simulated evidence is accepted only when the user asked for it explicitly.
"""

from __future__ import annotations

import hmac

from enclave.attestation import Bundle, BundleError, SimulatedEvidenceError, verify_simulated


class AttestationRefused(Exception):
    """The gateway's evidence does not pass; nothing may be sent to its keys."""


def make_verifier(*, allow_simulated: bool):  # type: ignore[no-untyped-def]
    """A verifier for :class:`proxy.transport.OhttpClient`: ``(bundle_json, keys_body) -> (result, simulated)``."""

    def verify(bundle_json: bytes, keys_body: bytes) -> tuple[object, bool]:
        try:
            bundle = Bundle.from_json(bundle_json)
        except BundleError as exc:
            raise AttestationRefused(str(exc)) from None
        # The bundle must be about exactly the keys we fetched (key consistency through the relay's cache).
        if not hmac.compare_digest(bundle.key_config, keys_body):
            raise AttestationRefused("the evidence binds a different key configuration than the one served")
        if bundle.platform == "simulated":
            try:
                return verify_simulated(bundle, allow_simulated=allow_simulated), True
            except SimulatedEvidenceError as exc:
                raise AttestationRefused(str(exc)) from None
        raise AttestationRefused(f"no verifier for platform {bundle.platform!r} in this build; refusing (fail closed)")

    return verify
