"""Intel TDX: quote v4/v5 parsing (``abi``) and DCAP verification plus policy validation (``verify``)."""

from .abi import TdxQuote, parse_quote
from .verify import verify_tdx

__all__ = ["TdxQuote", "parse_quote", "verify_tdx"]
