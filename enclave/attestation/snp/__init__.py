"""AMD SEV-SNP: strict report parsing (``abi``), the ``[sev-snp]`` section (``policy``), AMD certificates and pinned
ARKs (``certs``), verification (``verify``), the registry entry (``platform``).

Importing the package loads only the parser and the policy; ``certs`` and ``verify`` load when first used."""

from .abi import Product, SigningKey, SnpReport, TcbParts, decode_tcb, parse_report
from .platform import PLATFORM
from .policy import SnpPolicy

__all__ = ["PLATFORM", "Product", "SigningKey", "SnpPolicy", "SnpReport", "TcbParts", "decode_tcb", "parse_report"]
