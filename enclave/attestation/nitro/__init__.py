"""AWS Nitro Enclaves: attestation document parsing (``abi``), the ``[nitro]`` policy (``policy``) and offline
verification to the pinned AWS Nitro Enclaves Root-G1 (``verify``)."""

from .abi import NitroDocument, parse_document
from .policy import NitroPolicy
from .verify import AWS_NITRO_ROOT_G1_SHA256, verify_nitro

__all__ = ["AWS_NITRO_ROOT_G1_SHA256", "NitroDocument", "NitroPolicy", "parse_document", "verify_nitro"]
