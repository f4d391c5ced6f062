"""Attestation: the evidence bundle, key binding, and providers/verifiers (simulated for now).

Imports nothing else from ``enclave``, so the client side (``proxy``) can import it.
"""

from .bundle import MEDIA_TYPE_BUNDLE, Bundle, BundleError, gpu_nonce, report_data
from .provider import EvidenceProvider
from .simulated import SimulatedEvidenceError, SimulatedProvider, SimulatedVerdict, verify_simulated

__all__ = [
    "Bundle",
    "EvidenceProvider",
    "BundleError",
    "MEDIA_TYPE_BUNDLE",
    "report_data",
    "gpu_nonce",
    "SimulatedProvider",
    "SimulatedVerdict",
    "SimulatedEvidenceError",
    "verify_simulated",
]
