"""The OHTTP gateway application."""

from .app import create_app
from .config import GatewayConfig

__all__ = ["create_app", "GatewayConfig"]
