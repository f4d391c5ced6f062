"""Intel SGX: DCAP quote v3 parsing and verification via dcap-qvl to the pinned Intel root (``verify``, loaded when
first used), the ``[sgx]`` section (``policy``), the registry entry (``platform``)."""

from .platform import PLATFORM
from .policy import SgxPolicy, SgxSigner

__all__ = ["PLATFORM", "SgxPolicy", "SgxSigner"]
