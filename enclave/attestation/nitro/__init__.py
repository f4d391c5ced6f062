"""AWS Nitro Enclaves: attestation document parsing (``abi``), the ``[nitro]`` section (``policy``), offline
verification to the pinned AWS Nitro Enclaves Root-G1 (``verify``), the gateway's evidence from ``/dev/nsm``
(``nsm``), the registry entry (``platform``). Importing the package loads only the policy (cbor2 and the verifier
load when first used)."""

from .platform import PLATFORM
from .policy import NitroPolicy

__all__ = ["PLATFORM", "NitroPolicy"]
