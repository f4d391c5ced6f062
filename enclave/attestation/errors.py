"""Attestation errors (go-sev-guest's split): malformed evidence, failed cryptography, failed policy, missing collateral."""

from __future__ import annotations


class AttestationError(Exception):
    """Base of attestation failures; ``exit_code`` is what ``veil attest verify`` exits with."""

    exit_code = 1


class EvidenceFormatError(AttestationError):
    """The evidence cannot be parsed (wrong size, version, reserved bits set, ...)."""

    exit_code = 3


class VerificationError(AttestationError):
    """A signature, certificate chain or binding does not verify."""

    exit_code = 4


class PolicyError(AttestationError):
    """The evidence is genuine but the policy does not accept it (debug, TCB, measurement, ...)."""

    exit_code = 5


class CollateralUnavailableError(AttestationError):
    """Collateral needed for the check is missing or outside its validity (retryable; never a pass)."""

    exit_code = 6


class ProviderError(AttestationError):
    """An evidence provider cannot start here (no such device, wrong platform, simulated on real hardware).

    The message names the option (``--attestation nitro: ...``); the command that called the factory prefixes its
    own name."""
