"""What runs inside the TEE: the OHTTP gateway, the OpenAI API, engines and attestation."""

from .api import Api, ApiKeys
from .attestation import Bundle, SimulatedProvider
from .engines import EchoEngine, Engine, EngineResponse, UpstreamEngine
from .gateway import GatewayConfig, create_app

__all__ = [
    "create_app",
    "GatewayConfig",
    "Api",
    "ApiKeys",
    "Engine",
    "EngineResponse",
    "EchoEngine",
    "UpstreamEngine",
    "Bundle",
    "SimulatedProvider",
]
