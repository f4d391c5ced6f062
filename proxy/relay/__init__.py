"""``veil relay``: an OHTTP relay (RFC 9458 §6.2) that forwards ciphertext only to allow-listed gateways."""

from .app import create_app
from .config import RelayConfig

__all__ = ["create_app", "RelayConfig"]
