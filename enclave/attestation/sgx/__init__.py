"""Intel SGX: DCAP quote v3 parsing and verification via dcap-qvl to the pinned Intel root (``verify``), and the
``[sgx]`` policy (``policy``)."""

from .policy import SgxPolicy, SgxSigner
from .verify import SgxQuote, parse_quote, verify_sgx

__all__ = ["SgxPolicy", "SgxQuote", "SgxSigner", "parse_quote", "verify_sgx"]
