"""The OpenAI API layer on its own: an :class:`Api` over the echo engine, in-process (no gateway, no OHTTP)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from enclave.api import Api, ApiRequest
from enclave.engines import EchoEngine, InnerResponse

JSON_HEADERS = ((b"content-type", b"application/json"),)


class RecordingEcho(EchoEngine):
    """The echo engine, keeping every request body it was sent (to see what the API forwards) and counting
    ``models()`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.model_lists = 0

    async def models(self) -> list[str]:
        self.model_lists += 1
        return await super().models()

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> InnerResponse:
        self.sent.append((path, orjson.loads(body) if body else {}))
        return await super().call(method, path, body, stream=stream)


def api_request(method: str, path: str, body: object = None, *, headers: tuple[tuple[bytes, bytes], ...] = JSON_HEADERS,
                raw: bytes | None = None) -> ApiRequest:
    """A decapsulated request; ``body`` is sent as JSON, ``raw`` as it is."""
    content = raw if raw is not None else b"" if body is None else orjson.dumps(body)
    return ApiRequest(method=method, path=path, headers=headers, body=content)


def chat(content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": content}], **extra}


def error_of(resp: InnerResponse) -> dict[str, Any]:
    """The ``error`` object of an OpenAI error response (which is never a stream)."""
    assert resp.events is None and resp.header(b"content-type") == b"application/json"
    err: dict[str, Any] = orjson.loads(resp.body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.fixture
def engine() -> RecordingEcho:
    return RecordingEcho()


@pytest.fixture
def api(engine: RecordingEcho) -> Api:
    return Api(engine)
