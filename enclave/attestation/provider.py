"""The interface of evidence providers (simulated now; SEV-SNP, TDX and NVIDIA slot in here)."""

from __future__ import annotations

from typing import Protocol

from .bundle import Bundle


class EvidenceProvider(Protocol):
    """Collects evidence that binds a key configuration."""

    #: "simulated", "sev-snp", "tdx", ...
    platform: str

    # Optional: ``evidence_expiry(bundle) -> float | None``: the unix time the bundle stops verifying (a Nitro
    # document's leaf certificate, an MAA token's exp); the gateway collects again halfway there.

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"") -> Bundle:
        """Evidence whose REPORT_DATA is :func:`report_data` of ``key_config``, ``gpu_evidence`` and ``nonce``."""
        ...
