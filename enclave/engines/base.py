"""The engine interface: something that serves the OpenAI API on behalf of the gateway.

Engines see decapsulated requests (plaintext JSON) and must never log their content.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

__all__ = ["Engine", "EngineResponse", "EngineUnavailable"]


class EngineUnavailable(Exception):
    """The engine cannot take requests now (starting, restarting, or gone); answered as 503 inside the API."""


@dataclass
class EngineResponse:
    """An engine's answer: a whole body, or (``events`` set) a stream of SSE events, each ending in a blank line."""

    status: int
    content_type: str = "application/json"
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    async def aclose(self) -> None:
        """Release the stream (cancels generation upstream when it is still running)."""
        if self.events is not None:
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()


class Engine(Protocol):
    """What the gateway needs from an engine."""

    #: short name for logs and metrics ("echo", "upstream", "vllm")
    kind: str

    async def start(self) -> None:
        """Start (or connect to) the engine; returns when it can serve."""
        ...

    async def close(self) -> None:
        """Stop the engine and release its resources."""
        ...

    def healthy(self) -> bool:
        """Whether the engine is ready now."""
        ...

    async def models(self) -> list[str]:
        """The model ids the engine serves."""
        ...

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> EngineResponse:
        """Send one OpenAI API request (``path`` like ``/v1/chat/completions``)."""
        ...
