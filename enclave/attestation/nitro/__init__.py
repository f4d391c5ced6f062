"""AWS Nitro Enclaves: attestation document parsing (``abi``), the ``[nitro]`` policy (``policy``), offline
verification to the pinned AWS Nitro Enclaves Root-G1 (``verify``) and the gateway's evidence from ``/dev/nsm``
(``nsm``)."""

from .abi import NitroDocument, parse_document
from .nsm import LinuxNsm, NitroProvider, NsmDevice, NsmError, NsmUnavailableError
from .policy import NitroPolicy
from .verify import AWS_NITRO_ROOT_G1_SHA256, verify_nitro

__all__ = [
    "AWS_NITRO_ROOT_G1_SHA256",
    "LinuxNsm",
    "NitroDocument",
    "NitroPolicy",
    "NitroProvider",
    "NsmDevice",
    "NsmError",
    "NsmUnavailableError",
    "parse_document",
    "verify_nitro",
]
