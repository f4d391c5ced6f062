"""The interface of evidence providers (simulated now; SEV-SNP, TDX and NVIDIA slot in here)."""

from __future__ import annotations

from typing import Protocol

from .bundle import Bundle


class EvidenceProvider(Protocol):
    """Collects evidence that binds a key configuration."""

    #: "simulated", "sev-snp", "tdx", ...
    platform: str

    # Optional: ``max_evidence_age: float`` (seconds the evidence stays verifiable, e.g. 3 hours for AWS Nitro
    # documents); the gateway collects again at half of it.

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"") -> Bundle:
        """Evidence whose REPORT_DATA is :func:`report_data` of ``key_config``, ``gpu_evidence`` and ``nonce``."""
        ...
