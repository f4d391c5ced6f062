"""Plain and chunked OHTTP round trips through the gateway app: what the inner response looks like once opened,
and what the outer one shows (nothing of the inner)."""

from __future__ import annotations

import orjson
import pytest

import ohttp
from ohttp import bhttp

from .conftest import Gateway, GatewayFactory, chat_request, dated, sse_data


async def test_a_plain_request_gets_the_apis_answer_sealed(gateway: Gateway) -> None:
    outer, resp = await gateway.roundtrip(chat_request("hello through ohttp"))
    assert outer["Content-Type"] == ohttp.MEDIA_TYPE_RESPONSE and outer["Cache-Control"] == "private, no-store"
    assert resp.status == 200 and resp.headers == ((b"content-type", b"application/json"),)
    assert orjson.loads(resp.content)["choices"][0]["message"]["content"] == "hello through ohttp"


async def test_whole_responses_are_padded_to_a_bucket(gateway_for: GatewayFactory) -> None:
    for pad in (256, 1024):
        gw = await gateway_for(pad_to=pad)
        config = await gw.key_config()
        enc_req, ctx = ohttp.ClientRequest(config).encapsulate(bhttp.encode_request(dated(chat_request("x"))))
        _, _, body = await gw.post(enc_req, ohttp.MEDIA_TYPE_REQUEST)
        inner = ctx.decapsulate(body)
        assert len(inner) == bhttp.padded_size(len(inner), pad) and len(inner) % pad == 0
        assert bhttp.decode_response(inner).status == 200


async def test_models_over_plain_ohttp(gateway: Gateway) -> None:
    _, resp = await gateway.roundtrip(bhttp.Request(method=b"GET", path=b"/v1/models"))
    assert resp.status == 200 and [m["id"] for m in orjson.loads(resp.content)["data"]] == ["echo"]


async def test_api_errors_stay_inside_the_encapsulation(gateway: Gateway) -> None:
    outer, resp = await gateway.roundtrip(bhttp.Request(method=b"POST", path=b"/v1/nothing",
                                                        headers=((b"content-type", b"application/json"),),
                                                        content=b"{}"))
    assert resp.status == 404 and orjson.loads(resp.content)["error"]["code"] == "unknown_url"
    assert outer["Content-Type"] == ohttp.MEDIA_TYPE_RESPONSE and "application/json" not in " ".join(outer.values())


async def test_a_stream_over_chunked_ohttp_arrives_event_by_event(gateway: Gateway) -> None:
    got = await gateway.stream(chat_request("one two three", stream=True))
    assert got.outer_headers["Content-Type"] == ohttp.MEDIA_TYPE_CHUNKED_RESPONSE
    assert got.outer_headers["Incremental"] == "?1"
    assert got.head.status == 200 and got.head.headers == ((b"content-type", b"text/event-stream"),)
    events = [sse_data(p) for p in got.pieces]
    assert all(len(p) % 256 == 0 for p in got.pieces)  # each event padded on the wire
    assert events[-1] == b"data: [DONE]\n\n"
    words = [orjson.loads(e[6:])["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(words) == "one two three"
    assert got.chunks == 1 + len(got.pieces) + 1  # the head, one sealed chunk per event, the final chunk


async def test_coalescing_joins_events_into_fewer_chunks(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(coalesce_ms=500.0)
    got = await gw.stream(chat_request("a b c d e f", stream=True))
    assert got.chunks < 1 + 9 + 1 and got.head.status == 200
    assert sse_data(got.content).endswith(b"data: [DONE]\n\n")


async def test_padding_off_sends_events_as_the_engine_made_them(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(pad_to=0)
    got = await gw.stream(chat_request("plain events", stream=True))
    assert all(p.startswith(b"data: ") for p in got.pieces) and got.pieces[-1] == b"data: [DONE]\n\n"


async def test_a_whole_answer_over_chunked_ohttp_travels_in_the_final_chunk(gateway: Gateway) -> None:
    got = await gateway.stream(chat_request("not streamed"))
    assert got.head.status == 200 and got.head.headers == ((b"content-type", b"application/json"),)
    assert orjson.loads(got.content)["choices"][0]["message"]["content"] == "not streamed"
    assert got.chunks == 2  # the head, then the body in the final chunk


async def test_an_error_over_chunked_ohttp_is_openai_json(gateway: Gateway) -> None:
    got = await gateway.stream(chat_request("x", model="gpt-9", stream=True))
    assert got.head.status == 404 and orjson.loads(got.content)["error"]["code"] == "model_not_found"


async def test_a_stream_asked_over_plain_ohttp_comes_whole(gateway: Gateway) -> None:
    _, resp = await gateway.roundtrip(chat_request("all at once", stream=True))
    assert resp.status == 200 and resp.header(b"content-type") == b"text/event-stream"
    events = [e for e in resp.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"


@pytest.mark.parametrize("pad", [1, 7, 64, 256, 1000, 2048, 20000])
def test_a_streamed_piece_is_padded_and_framed_as_before(pad: int) -> None:
    # The gateway's one-join padding (_padded_chunk) must give exactly the bytes of the plain construction, at
    # every size around the varint's steps (64, 16384) and past the padding line cache (1024).
    from enclave.gateway.ohttp_routes import _pad_event, _padded_chunk

    for n in [*range(1, 300), 1021, 1022, 1023, 1024, 1025, 16380, 16381, 16382, 16383, 16384, 40000]:
        event = bytes(i % 251 for i in range(n))
        assert _padded_chunk(event, pad) == bhttp.encode_chunk(_pad_event(event, pad)), (pad, n)
