"""Intel TDX: quote v4/v5 parsing (``abi``), the ``[tdx]`` section (``policy``), DCAP verification plus policy
validation (``verify``, loaded when first used), the registry entry (``platform``)."""

from .abi import TdxQuote, parse_quote
from .platform import PLATFORM
from .policy import TdxPolicy

__all__ = ["PLATFORM", "TdxPolicy", "TdxQuote", "parse_quote"]
