"""Errors before decapsulation: a plain status with ``application/problem+json`` (RFC 9457), nothing sealed."""

from __future__ import annotations

import orjson
import pytest

import ohttp
from ohttp import bhttp

from .conftest import PROBLEM_KEY, Gateway, GatewayFactory, dated


def problem_of(status: int, headers: dict[str, str], body: bytes) -> dict[str, object]:
    assert headers["Content-Type"] == "application/problem+json" and headers["Cache-Control"] == "no-store"
    doc: dict[str, object] = orjson.loads(body)
    assert doc["status"] == status and doc["title"]
    return doc


def models_request() -> bytes:
    return bhttp.encode_request(dated(bhttp.Request(method=b"GET", path=b"/v1/models")))


@pytest.mark.parametrize("media_type", ["application/json", "message/bhttp", "text/plain"])
async def test_other_media_types_are_415(gateway: Gateway, media_type: str) -> None:
    status, headers, body = await gateway.post(b"hello", media_type)
    assert status == 415
    assert "message/ohttp-req" in str(problem_of(415, headers, body)["detail"])


async def test_a_malformed_request_is_400(gateway: Gateway) -> None:
    config = await gateway.key_config()
    status, headers, body = await gateway.post(bytes([config.key_id]) + b"\x00\x20\x00\x01", ohttp.MEDIA_TYPE_REQUEST)
    assert status == 400 and problem_of(400, headers, body)["type"] == "about:blank"


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_unknown_key_id_is_422_with_the_ohttp_key_problem_type(gateway: Gateway, chunked: bool) -> None:
    config = await gateway.key_config()
    other = ohttp.KeyConfig(key_id=(config.key_id + 1) % 256, kem=config.kem, public_key=config.public_key,
                            suites=config.suites)
    if chunked:
        wire = ohttp.ChunkedClientRequest(other).encode_chunk(models_request(), final=True)
        status, headers, body = await gateway.post(wire, ohttp.MEDIA_TYPE_CHUNKED_REQUEST)
    else:
        wire, _ = ohttp.ClientRequest(other).encapsulate(models_request())
        status, headers, body = await gateway.post(wire, ohttp.MEDIA_TYPE_REQUEST)
    assert status == 422 and problem_of(422, headers, body)["type"] == PROBLEM_KEY
    assert gateway.state.metrics.outcome("plain" if not chunked else "chunked", "key_error")._value.get() == 1


async def test_a_request_that_does_not_open_is_422_too(gateway: Gateway) -> None:
    wire, _ = ohttp.ClientRequest(await gateway.key_config()).encapsulate(models_request())
    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    status, headers, body = await gateway.post(tampered, ohttp.MEDIA_TYPE_REQUEST)
    assert status == 422 and problem_of(422, headers, body)["type"] == PROBLEM_KEY


@pytest.mark.parametrize("media_type", [ohttp.MEDIA_TYPE_REQUEST, ohttp.MEDIA_TYPE_CHUNKED_REQUEST])
async def test_too_large_is_413(gateway_for: GatewayFactory, media_type: str) -> None:
    gw = await gateway_for(max_request_bytes=1024)
    status, headers, body = await gw.post(b"\x00" * 2048, media_type)
    assert status == 413 and "1024" in str(problem_of(413, headers, body)["detail"])


async def test_expect_100_continue_is_417_for_plain_ohttp(gateway: Gateway) -> None:
    wire, _ = ohttp.ClientRequest(await gateway.key_config()).encapsulate(models_request())
    status, headers, body = await gateway.post(wire, ohttp.MEDIA_TYPE_REQUEST, Expect="100-continue")
    assert status == 417 and problem_of(417, headers, body)


async def test_a_chunked_request_without_its_final_chunk_is_400(gateway: Gateway) -> None:
    wire = ohttp.ChunkedClientRequest(await gateway.key_config()).encode_chunk(models_request())
    status, headers, body = await gateway.post(wire, ohttp.MEDIA_TYPE_CHUNKED_REQUEST)
    assert status == 400 and "final" in str(problem_of(400, headers, body)["detail"])
