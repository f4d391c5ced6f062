"""The interface of evidence providers (simulated, configfs-tsm SNP/TDX, Azure vTPM, AWS Nitro) and their names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from .bundle import Bundle, ConfigValue

#: ``--attestation`` values of ``veil gateway`` and ``veil broker``.
PROVIDER_KINDS: Final = ("simulated", "auto", "sev-snp", "tdx", "azure", "nitro")


class EvidenceProvider(Protocol):
    """Collects evidence that binds a key configuration."""

    #: "simulated", "sev-snp", "tdx", ...
    platform: str

    # Optional: ``evidence_expiry(bundle) -> float | None``: the unix time the bundle stops verifying (a Nitro
    # document's leaf certificate, an MAA token's exp); the gateway collects again halfway there.

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> Bundle:
        """Evidence whose REPORT_DATA is :func:`report_data` of ``key_config``, ``gpu_evidence``, ``nonce`` and
        ``config`` (the gateway's bound configuration; ``{}`` when None), carried as the bundle's ``config``."""
        ...
