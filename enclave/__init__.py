"""What runs inside the TEE: the OHTTP gateway, the OpenAI API, engines and attestation.

Names are imported on first use (PEP 562): the client side imports ``enclave.attestation`` only, and must not pay
the memory of the gateway, the API models and the engines it never runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Api, ApiKeyTable
    from .attestation import Bundle, SimulatedProvider
    from .engines import EchoEngine, Engine, InnerResponse, UpstreamEngine
    from .gateway import GatewayConfig, create_app

_WHERE = {
    "Api": ".api",
    "ApiKeyTable": ".api",
    "Bundle": ".attestation",
    "SimulatedProvider": ".attestation",
    "EchoEngine": ".engines",
    "Engine": ".engines",
    "InnerResponse": ".engines",
    "UpstreamEngine": ".engines",
    "GatewayConfig": ".gateway",
    "create_app": ".gateway",
}

__all__ = [
    "create_app",
    "GatewayConfig",
    "Api",
    "ApiKeyTable",
    "Engine",
    "InnerResponse",
    "EchoEngine",
    "UpstreamEngine",
    "Bundle",
    "SimulatedProvider",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
