"""Inference engines behind the gateway: vLLM (supervised child), any loopback upstream, and the echo engine."""

from .base import Engine, EngineUnavailable, InnerResponse
from .echo import EchoEngine
from .upstream import UpstreamEngine

__all__ = ["Engine", "EngineUnavailable", "InnerResponse", "EchoEngine", "UpstreamEngine"]
