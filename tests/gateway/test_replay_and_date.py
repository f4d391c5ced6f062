"""The inner request's own rules: each ``enc`` is served once, and its ``Date`` must be within the window. Both
refusals are the gateway's own answers, sealed like any other (the outer response is a 200)."""

from __future__ import annotations

import os
import time
from email.utils import formatdate, parsedate_to_datetime

import orjson
import pytest

import ohttp
from enclave.gateway.replay import ReplayCache
from ohttp import bhttp
from tests.harness import traced_peak

from .conftest import PROBLEM_DATE, Gateway, GatewayFactory, dated


def models(date: str | None) -> bhttp.Request:
    headers = ((b"date", date.encode()),) if date is not None else ()
    return bhttp.Request(method=b"GET", path=b"/v1/models", headers=headers)


def assert_date_refused(resp: bhttp.Response) -> None:
    assert resp.status == 400 and resp.header(b"content-type") == b"application/problem+json"
    assert orjson.loads(resp.content) == {"type": PROBLEM_DATE, "title": "date not acceptable", "status": 400}
    gateway_date = resp.header(b"date")
    assert gateway_date is not None  # the gateway's clock, so the client can correct its own
    assert abs(parsedate_to_datetime(gateway_date.decode()).timestamp() - time.time()) < 5


async def test_a_replayed_request_is_refused_inside_the_encapsulation(gateway: Gateway) -> None:
    config = await gateway.key_config()
    inner = bhttp.encode_request(dated(models(None)))
    eph = os.urandom(32)
    first, ctx1 = ohttp.ClientRequest(config).encapsulate(inner, ephemeral_key=eph)
    again, ctx2 = ohttp.ClientRequest(config).encapsulate(inner, ephemeral_key=eph)
    assert first == again  # byte-identical: what a replaying relay would send
    s1, _, b1 = await gateway.post(first, ohttp.MEDIA_TYPE_REQUEST)
    s2, _, b2 = await gateway.post(again, ohttp.MEDIA_TYPE_REQUEST)
    assert s1 == s2 == 200
    assert bhttp.decode_response(ctx1.decapsulate(b1)).status == 200
    replayed = bhttp.decode_response(ctx2.decapsulate(b2))
    assert replayed.status == 400 and orjson.loads(replayed.content)["error"]["code"] == "replayed_request"
    assert gateway.state.metrics.outcome("plain", "replay")._value.get() == 1


async def test_a_replayed_chunked_request_is_refused_too(gateway: Gateway) -> None:
    config = await gateway.key_config()
    inner = bhttp.encode_request(dated(models(None)))
    eph = os.urandom(32)
    statuses = []
    for _ in range(2):  # the same enc twice
        creq = ohttp.ChunkedClientRequest(config, ephemeral_key=eph)
        status, _, body = await gateway.post(creq.encode_chunk(inner, final=True), ohttp.MEDIA_TYPE_CHUNKED_REQUEST)
        assert status == 200
        dec, bdec = creq.response(), bhttp.BHTTPDecoder(expect="response")
        dec.receive_data(body)
        dec.receive_data(b"")
        while (chunk := dec.next_event()) is not ohttp.NEED_DATA:
            assert isinstance(chunk, ohttp.Chunk)
            bdec.receive_data(chunk.data)
        head = bdec.next_event()
        assert isinstance(head, bhttp.ResponseHead)
        statuses.append(head.status)
    assert statuses == [200, 400]


@pytest.mark.parametrize("offset", [-3600, 3600, -61])
async def test_a_date_outside_the_window_gets_the_date_problem(gateway: Gateway, offset: int) -> None:
    _, resp = await gateway.roundtrip(models(formatdate(time.time() + offset, usegmt=True)))
    assert_date_refused(resp)


@pytest.mark.parametrize("date", ["yesterday", "", "Mon, 99 Foo 2026 25:61:00 GMT"])
async def test_an_unreadable_date_gets_the_date_problem(gateway: Gateway, date: str) -> None:
    _, resp = await gateway.roundtrip(models(date))
    assert_date_refused(resp)


async def test_a_missing_date_is_refused_unless_allowed(gateway_for: GatewayFactory) -> None:
    strict = await gateway_for()
    _, resp = await strict.roundtrip(models(None), date=False)
    assert_date_refused(resp)
    assert strict.state.metrics.outcome("plain", "date")._value.get() == 1
    lax = await gateway_for(require_date=False)
    _, resp = await lax.roundtrip(models(None), date=False)
    assert resp.status == 200
    # Allowing a missing Date does not allow a wrong one.
    _, resp = await lax.roundtrip(models(formatdate(time.time() - 3600, usegmt=True)))
    assert_date_refused(resp)


async def test_the_window_is_configurable(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(replay_window=7200.0)
    _, resp = await gw.roundtrip(models(formatdate(time.time() - 3600, usegmt=True)))
    assert resp.status == 200


async def test_a_date_refusal_over_chunked_ohttp_is_the_same_problem(gateway: Gateway) -> None:
    got = await gateway.stream(models(formatdate(time.time() - 3600, usegmt=True)))
    assert got.head.status == 400 and orjson.loads(got.content)["type"] == PROBLEM_DATE
    assert dict(got.head.headers)[b"content-type"] == b"application/problem+json"
    assert b"date" in dict(got.head.headers)


def test_the_replay_cache_keeps_a_small_digest_of_each_enc_not_the_enc() -> None:
    """X-Wing's enc is 1,120 bytes; the cache remembers every request for 120 s (up to 1,000,000 of them). What it
    keeps per request must not grow with the KEM: about 150 B measured (dict entry and table, 16-byte digest,
    expiry), where keeping the enc itself took about 1.25 KB."""
    cache = ReplayCache(60.0)
    n = 5000
    with traced_peak() as held:
        for i in range(n):
            assert not cache.seen(os.urandom(1120), now=i / 1000)  # a fresh enc each time, dropped by the caller
        per_entry = held() / n
    assert len(cache) == n
    assert per_entry < 300, per_entry
    enc = os.urandom(1120)
    assert not cache.seen(enc, now=10.0) and cache.seen(bytes(enc), now=11.0)  # equal bytes: a replay
    assert not cache.seen(enc[:-1] + bytes([enc[-1] ^ 1]), now=12.0)  # one bit off: another request
