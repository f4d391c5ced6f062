"""``POST /NAME`` (forward.py): only allow-listed names, headers rebuilt both ways, size and rate limits, and the
502/504 mapping of an unreachable or silent gateway."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp

from .conftest import MEDIA_CHUNKED_REQ, MEDIA_REQ, WELL_KNOWN, MakeRelay, StandInGateway

BODY = b"\x01" + bytes(99)  # key id 1, then "ciphertext"


async def test_forwards_to_an_allow_listed_name(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    for path in ("/gw", "/"):  # "/" is the only gateway of a one-gateway relay
        resp = await client.post(path, data=BODY, headers={"Content-Type": MEDIA_REQ})
        assert resp.status == 200
        assert await resp.read() == BODY
    assert [(s.path, s.body) for s in gateway.posts] == [(WELL_KNOWN, BODY)] * 2


async def test_other_names_are_refused_and_never_forwarded(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay(gateways={"gw": gateway.url, "other": gateway.url})
    for path in ("/nope", "/gw/more", "/", "/.well-known/ohttp-gateway", "/gw%2F..%2Fx"):
        resp = await client.post(path, data=BODY, headers={"Content-Type": MEDIA_REQ})
        assert resp.status == 403, path  # "/" is ambiguous with two gateways
        assert resp.content_type == "application/problem+json"
        assert (await resp.json())["title"] == "unknown gateway"
        assert resp.headers["Cache-Control"] == "no-store"
    assert gateway.posts == []


async def test_other_media_types_are_refused(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    for ctype in ("application/json", "message/ohttp-res", "text/plain"):
        resp = await client.post("/gw", data=BODY, headers={"Content-Type": ctype})
        assert resp.status == 415
    assert gateway.posts == []


async def test_client_headers_are_stripped(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    identifying = {
        "Cookie": "session=secret", "Authorization": "Bearer secret", "User-Agent": "SecretBrowser/1.0",
        "X-Forwarded-For": "198.51.100.7", "Forwarded": "for=198.51.100.7", "X-Real-IP": "198.51.100.7",
        "Referer": "https://example.org/secret", "Origin": "https://example.org", "Accept-Language": "de-CH",
        "Accept-Encoding": "gzip", "X-Client-Id": "secret", "Via": "1.1 secret",
    }
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_REQ + "; x=secret", **identifying})
    assert resp.status == 200
    (seen,) = gateway.posts
    assert set(seen.headers) <= {"Host", "Content-Type", "Content-Length", "Accept"}, seen.headers
    assert seen.headers["Content-Type"] == MEDIA_REQ  # rebuilt: parameters dropped too
    assert seen.headers.get("Accept", "*/*") == "*/*"
    assert not any(v in str(seen.headers) for v in ("secret", "198.51.100.7", "example.org", "gzip", "de-CH"))


async def test_chunked_requests_are_marked_incremental(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()

    async def pieces() -> AsyncIterator[bytes]:
        yield BODY[:10]
        yield BODY[10:]

    for data in (BODY, pieces()):  # arrived whole, or streamed in pieces
        resp = await client.post("/gw", data=data, headers={"Content-Type": MEDIA_CHUNKED_REQ})
        assert resp.status == 200
    for seen in gateway.posts:
        assert seen.headers["Content-Type"] == MEDIA_CHUNKED_REQ
        assert seen.headers["Incremental"] == "?1"
        assert seen.body == BODY


async def test_response_headers_are_rebuilt(relay: MakeRelay, gateway: StandInGateway) -> None:
    gateway.post_headers = {"Content-Type": "message/ohttp-chunked-res", "Incremental": "?1",
                            "Set-Cookie": "track=1", "X-Gateway-Replica": "7", "Cache-Control": "max-age=600"}
    client = await relay()
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_CHUNKED_REQ})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "message/ohttp-chunked-res"
    assert resp.headers["Incremental"] == "?1"
    assert resp.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in resp.headers and "X-Gateway-Replica" not in resp.headers
    assert await resp.read() == BODY


async def test_gateway_statuses_pass_through(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    for status in (400, 422, 500):
        gateway.post_status = status
        resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_REQ})
        assert resp.status == status


async def test_requests_over_the_size_limit_are_413(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay(max_request_bytes=1000)
    resp = await client.post("/gw", data=bytes(1000), headers={"Content-Type": MEDIA_REQ})
    assert resp.status == 200  # at the limit

    async def streamed() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(4):
            yield bytes(300)

    resp = await client.post("/gw", data=bytes(1001), headers={"Content-Type": MEDIA_REQ})
    assert resp.status == 413 and (await resp.json())["detail"] == "limit is 1000 bytes"
    resp = await client.post("/gw", data=streamed(), headers={"Content-Type": MEDIA_REQ})
    assert resp.status == 413
    assert len(gateway.posts) == 1
    resp = await client.post("/gw", data=streamed(), headers={"Content-Type": MEDIA_CHUNKED_REQ})
    assert resp.status == 413


async def test_responses_over_the_size_limit_are_cut_off(relay: MakeRelay, gateway: StandInGateway) -> None:
    gateway.post_headers = {"Content-Type": "message/ohttp-chunked-res", "Incremental": "?1"}
    gateway.post_body = bytes(5000)
    client = await relay(max_response_bytes=4096)
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_CHUNKED_REQ})
    assert resp.status == 502  # its Content-Length said so before anything was sent (a stream that grows past the
    # limit is cut off: tests/integration/test_relay_limits.py)


async def test_whole_responses_over_the_size_limit_are_502(relay: MakeRelay, gateway: StandInGateway) -> None:
    """A Content-Length over the limit is refused before anything is sent (it used to leave the client waiting on
    a kept-alive connection for bytes that never came)."""
    gateway.post_body = bytes(5000)
    client = await relay(max_response_bytes=4096)
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_REQ},
                             timeout=aiohttp.ClientTimeout(total=30))
    assert resp.status == 502 and resp.headers["Content-Type"] == "application/problem+json"
    assert "larger" in (await resp.json())["detail"]
    gateway.post_body = bytes(4096)  # at the limit
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_REQ})
    assert resp.status == 200 and len(await resp.read()) == 4096
    text = await (await client.get("/metrics")).text()
    assert 'veil_relay_requests_total{outcome="response_too_large"} 1.0' in text


async def test_too_many_requests_from_one_address_are_429(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay(rate_per_minute=1)
    statuses = []
    for _ in range(3):  # two in one window at least, even if a minute turns between them
        resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_REQ})
        statuses.append(resp.status)
        if resp.status == 429:
            assert resp.headers["Retry-After"] == "60"
    assert 429 in statuses and statuses[0] == 200


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_gateway_is_502(relay: MakeRelay) -> None:
    client = await relay(gateways={"gw": f"http://127.0.0.1:{_closed_port()}{WELL_KNOWN}"})
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_REQ})
    assert resp.status == 502
    assert (await resp.json())["title"] == "bad gateway"
    resp = await client.get("/gw")
    assert resp.status == 502


async def test_silent_gateway_is_504(relay: MakeRelay, gateway: StandInGateway) -> None:
    gateway.delay = 2.0
    client = await relay(read_timeout=0.2)
    resp = await client.post("/gw", data=BODY, headers={"Content-Type": MEDIA_REQ})
    assert resp.status == 504
    assert (await resp.json())["title"] == "gateway timeout"
