"""The relay app in-process (pytest-aiohttp's ``aiohttp_client``) in front of a stand-in gateway: a small aiohttp
app on loopback that records every request that reaches it and answers as a test tells it to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.relay import RelayConfig, create_app

WELL_KNOWN = "/.well-known/ohttp-gateway"
ATTESTATION = "/.well-known/veil-attestation"
MEDIA_REQ = "message/ohttp-req"
MEDIA_CHUNKED_REQ = "message/ohttp-chunked-req"


def keys_list(*key_ids: int) -> bytes:
    """An ``application/ohttp-keys`` list framed as RFC 9458 §3.2 frames it (the relay reads only the framing)."""
    out = b""
    for key_id in key_ids:
        config = bytes([key_id]) + b"\x00\x20" + bytes(32) + b"\x00\x04\x00\x01\x00\x01"
        out += len(config).to_bytes(2, "big") + config
    return out


@dataclass
class Seen:
    """One request as it reached the stand-in gateway."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StandInGateway:
    """Records what it receives; answers with what its attributes say."""

    keys_body: bytes = field(default_factory=lambda: keys_list(1))
    keys_cache_control: str = "max-age=60"
    keys_status: int = 200
    evidence: bytes = b'{"evidence":"stand-in"}'
    post_status: int = 200
    post_headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "message/ohttp-res"})
    post_body: bytes | None = None  # None: echo the request body
    delay: float = 0.0  # seconds before answering a POST
    seen: list[Seen] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url(WELL_KNOWN))

    def fetches(self, path: str) -> int:
        return sum(1 for s in self.seen if s.method == "GET" and s.path == path)

    @property
    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    async def _record(self, request: web.Request) -> bytes:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, request.query_string, dict(request.headers), body))
        return body

    async def get_keys(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=self.keys_status, body=self.keys_body, content_type="application/ohttp-keys",
                            headers={"Cache-Control": self.keys_cache_control})

    async def get_attestation(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=self.keys_status, body=self.evidence, content_type="application/json",
                            headers={"Cache-Control": self.keys_cache_control})

    async def post(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.post_status, headers=self.post_headers,
                            body=body if self.post_body is None else self.post_body)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(WELL_KNOWN, self.get_keys)
        app.router.add_post(WELL_KNOWN, self.post)
        app.router.add_get(ATTESTATION, self.get_attestation)
        app.router.add_get("/healthz", self.healthz)
        return app


MakeRelay = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def gateway(aiohttp_server: Any) -> StandInGateway:
    standin = StandInGateway()
    standin.server = await aiohttp_server(standin.app())
    return standin


@pytest.fixture
def relay(aiohttp_client: Any, gateway: StandInGateway) -> MakeRelay:
    """``await relay(**config)``: a client of a relay whose allow list is ``gw`` (the stand-in) unless
    ``gateways=`` says otherwise."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("gateways", {"gw": gateway.url})
        client: TestClient[Any, Any] = await aiohttp_client(create_app(RelayConfig(**overrides)))
        return client

    return make
