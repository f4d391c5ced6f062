"""The client side for SDK users: the local proxy app and the in-process httpx transport."""

from .app import create_app
from ..verify import Transparency
from .httpx_transport import VeilAsyncTransport, VeilTransport

__all__ = ["create_app", "Transparency", "VeilTransport", "VeilAsyncTransport"]
