"""Attestation: the evidence bundle and its key binding, the client's policy and verification, and the evidence
providers. This is the package's public API: ``proxy`` (the client) and the gateway import these names only.

Imports nothing else from ``enclave`` (no aiohttp gateway, no engines), so the client can import it. The platform
folders (``snp``, ``tdx``, ``sgx``, ``nvidia``, ``azure``, ``nitro``, ``simulated``) are listed in ``registry``;
their verifiers and providers load when first used.
"""

from .bundle import MEDIA_TYPE_BUNDLE, Bundle, BundleError, ConfigValue, gpu_nonce, report_data
from .errors import (
    AttestationError,
    CollateralUnavailableError,
    EvidenceFormatError,
    PolicyError,
    ProviderError,
    VerificationError,
)
from .platform import Platform
from .policy import ConfigPolicy, Policy
from .provider import PROVIDER_KINDS, EvidenceProvider, ProviderOptions, make_provider
from .registry import PLATFORMS
from .result import Check, Verdict
from .simulated import SimulatedEvidenceError, SimulatedProvider, SimulatedVerdict, verify_simulated
from .verify import evidence_expiry, verify_bundle

__all__ = [
    # the bundle and its binding
    "Bundle",
    "BundleError",
    "ConfigValue",
    "MEDIA_TYPE_BUNDLE",
    "report_data",
    "gpu_nonce",
    # verification
    "Policy",
    "ConfigPolicy",
    "Verdict",
    "Check",
    "verify_bundle",
    "evidence_expiry",
    # errors
    "AttestationError",
    "EvidenceFormatError",
    "VerificationError",
    "PolicyError",
    "CollateralUnavailableError",
    "ProviderError",
    # providers
    "EvidenceProvider",
    "ProviderOptions",
    "PROVIDER_KINDS",
    "make_provider",
    # the registry
    "Platform",
    "PLATFORMS",
    # simulated evidence (development)
    "SimulatedProvider",
    "SimulatedVerdict",
    "SimulatedEvidenceError",
    "verify_simulated",
]
