"""The engine interface, and the one inner-response type that engines, the API layer and the gateway share.

Engines see decapsulated requests (plaintext JSON) and must never log their content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Final, Protocol

__all__ = ["JSON", "SSE", "Engine", "EngineUnavailable", "InnerResponse"]

#: The header fields of a JSON answer, and of a stream of server-sent events.
JSON: Final = ((b"content-type", b"application/json"),)
SSE: Final = ((b"content-type", b"text/event-stream"),)


class EngineUnavailable(Exception):
    """The engine cannot take requests now (starting, restarting, or gone); answered as 503 inside the API."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InnerResponse:
    """An HTTP response inside the encapsulation, as the gateway encodes it into Binary HTTP.

    ``headers`` are lowercase ``(name, value)`` bytes pairs in the order they are sent. The content is either
    ``body`` (whole) or, when ``events`` is set, a stream of SSE events, each ending in a blank line; a piece may
    hold several complete events (those that were available at once).
    """

    status: int
    headers: tuple[tuple[bytes, bytes], ...] = JSON
    body: bytes = b""
    events: AsyncIterator[bytes] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or ``None``."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

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

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> InnerResponse:
        """Send one OpenAI API request (``path`` like ``/v1/chat/completions``)."""
        ...
