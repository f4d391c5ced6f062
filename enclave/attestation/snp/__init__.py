"""AMD SEV-SNP: strict report parsing (``abi``), AMD certificates and pinned ARKs (``certs``), verification
(``verify``)."""

from .abi import Product, SigningKey, SnpReport, TcbParts, decode_tcb, parse_report
from .certs import ARK_SHA256_GENOA, ARK_SHA256_MILAN, ARK_SHA256_TURIN, PINNED_ARK_SHA256
from .verify import verify_snp, verify_snp_certs

__all__ = [
    "ARK_SHA256_GENOA",
    "ARK_SHA256_MILAN",
    "ARK_SHA256_TURIN",
    "PINNED_ARK_SHA256",
    "Product",
    "SigningKey",
    "SnpReport",
    "TcbParts",
    "decode_tcb",
    "parse_report",
    "verify_snp",
    "verify_snp_certs",
]
