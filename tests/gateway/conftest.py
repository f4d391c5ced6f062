"""The gateway app in-process: ``create_app`` served by pytest-aiohttp's ``aiohttp_client`` on loopback, driven
with ``ohttp``'s own client objects (no relay, no proxy, no subprocess)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import ohttp
from enclave.attestation import SimulatedProvider
from enclave.engines import EchoEngine, Engine
from enclave.gateway import GatewayConfig, create_app
from enclave.gateway.app_state_keys import STATE
from enclave.gateway.state import GatewayState
from ohttp import GatewayKey, KeyRing, bhttp

WELL_KNOWN = "/.well-known/ohttp-gateway"
ATTESTATION = "/.well-known/veil-attestation"
PROBLEM_KEY = "https://iana.org/assignments/http-problem-types#ohttp-key"
PROBLEM_DATE = "https://iana.org/assignments/http-problem-types#date"
JSON = ((b"content-type", b"application/json"),)


def dated(req: bhttp.Request) -> bhttp.Request:
    """``req`` with a current ``Date`` unless it has one (gateways require it)."""
    if req.header(b"date") is not None:
        return req
    return bhttp.Request(method=req.method, scheme=req.scheme, authority=req.authority, path=req.path,
                         headers=(*req.headers, (b"date", formatdate(usegmt=True).encode())), content=req.content)


def chat_request(content: str, **extra: Any) -> bhttp.Request:
    body = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": content}], **extra})
    return bhttp.Request(method=b"POST", path=b"/v1/chat/completions", headers=JSON, content=body)


def sse_data(piece: bytes) -> bytes:
    """A stream piece without its SSE comment lines (the gateway's padding)."""
    return re.sub(rb"(?m)^:.*\n", b"", piece)


@dataclass
class Streamed:
    """A chunked OHTTP answer, opened: the inner head, the content pieces and the sealed chunks it came in."""

    head: bhttp.ResponseHead
    pieces: list[bytes]
    chunks: int
    outer_headers: dict[str, str]

    @property
    def content(self) -> bytes:
        return b"".join(self.pieces)


@dataclass
class Gateway:
    """One in-process gateway and a client for it."""

    client: TestClient[Any, Any]
    app: web.Application

    @property
    def state(self) -> GatewayState:
        return self.app[STATE]

    async def key_config(self) -> ohttp.KeyConfig:
        resp = await self.client.get(WELL_KNOWN)
        return ohttp.decode_list(await resp.read())[0]

    async def post(self, body: bytes, media_type: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
        resp = await self.client.post(WELL_KNOWN, data=body, headers={"Content-Type": media_type, **headers})
        return resp.status, dict(resp.headers), await resp.read()

    async def roundtrip(self, req: bhttp.Request, *, date: bool = True, **enc_kw: Any
                        ) -> tuple[dict[str, str], bhttp.Response]:
        """``req`` (dated unless ``date=False``) over plain OHTTP; the outer headers and the opened answer."""
        enc_req, ctx = ohttp.ClientRequest(await self.key_config()).encapsulate(
            bhttp.encode_request(dated(req) if date else req), **enc_kw)
        status, headers, body = await self.post(enc_req, ohttp.MEDIA_TYPE_REQUEST)
        assert status == 200, body
        return headers, bhttp.decode_response(ctx.decapsulate(body))

    async def stream(self, req: bhttp.Request) -> Streamed:
        """``req`` (dated) over chunked OHTTP, its answer read to the end and opened chunk by chunk."""
        creq = ohttp.ChunkedClientRequest(await self.key_config())
        wire = creq.encode_chunk(bhttp.encode_request(dated(req)), final=True)
        status, headers, body = await self.post(wire, ohttp.MEDIA_TYPE_CHUNKED_REQUEST, Incremental="?1")
        assert status == 200, body
        dec, bdec = creq.response(), bhttp.BHTTPDecoder(expect="response")
        dec.receive_data(body)
        dec.receive_data(b"")
        chunks = 0
        while (chunk := dec.next_event()) is not ohttp.NEED_DATA:
            assert isinstance(chunk, ohttp.Chunk)
            chunks += 1
            bdec.receive_data(chunk.data)
            if chunk.final:
                bdec.receive_data(b"")
        head: bhttp.ResponseHead | None = None
        pieces: list[bytes] = []
        while (ev := bdec.next_event()) is not ohttp.NEED_DATA:
            if isinstance(ev, bhttp.ResponseHead):
                head = ev
            elif isinstance(ev, bhttp.Data):
                pieces.append(ev.data)
            elif isinstance(ev, bhttp.EndOfMessage):
                break
        else:
            raise AssertionError("the stream ended without its end of message")
        assert head is not None
        return Streamed(head=head, pieces=pieces, chunks=chunks, outer_headers=headers)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def gateway_for(aiohttp_client: Any) -> GatewayFactory:
    """``await gateway_for(engine=None, **GatewayConfig fields)``: an echo gateway unless told otherwise."""

    async def make(engine: Engine | None = None, **config: Any) -> Gateway:
        app = create_app(engine=engine or EchoEngine(), keyring=KeyRing([GatewayKey.generate(1)]),
                         provider=SimulatedProvider(), config=GatewayConfig(**config))
        return Gateway(client=await aiohttp_client(app), app=app)

    return make


@pytest.fixture
async def gateway(gateway_for: GatewayFactory) -> Gateway:
    return await gateway_for()
