"""What runs outside the TEE: the OHTTP client transport (relay and client proxy follow)."""

from .transport import InnerResponse, KeyState, OhttpClient, VeilClientError

__all__ = ["OhttpClient", "InnerResponse", "KeyState", "VeilClientError"]
