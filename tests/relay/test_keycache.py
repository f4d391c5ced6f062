"""``GET /NAME`` and ``/NAME/attestation`` (keycache.py, key_routes.py): one fetch shared by every client, the
gateway's max-age clamped, stale entries served while the gateway is down, no fresh evidence, and the eviction
rule: only a 422 for a key id the cache holds drops keys and evidence, at most once per interval."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.relay.keycache import key_ids

from .conftest import ATTESTATION, MEDIA_REQ, WELL_KNOWN, MakeRelay, StandInGateway, keys_list


def test_key_ids_reads_the_list_framing() -> None:
    assert key_ids(keys_list(1, 7, 200)) == {1, 7, 200}
    assert key_ids(b"") == frozenset()
    assert key_ids(keys_list(3) + b"\x00\x50\x09") == {3}  # a truncated entry adds nothing
    assert key_ids(b"\x00\x00\x05" + keys_list(4)) == frozenset()  # a zero length stops the walk


async def test_keys_are_fetched_once_and_shared(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    bodies = set()
    for path in ("/gw", "/", "/gw", "/"):  # "/" and "/gw" of a one-gateway relay share one entry
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.content_type == "application/ohttp-keys"
        assert 0 < int(resp.headers["Cache-Control"].removeprefix("max-age=")) <= 60
        bodies.add(await resp.read())
    assert bodies == {gateway.keys_body}
    assert gateway.fetches(WELL_KNOWN) == 1
    assert all(s.headers.get("Accept") == "application/ohttp-keys" for s in gateway.seen)


async def test_concurrent_first_requests_fetch_once(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    resps = await asyncio.gather(*(client.get("/gw") for _ in range(5)))
    assert [r.status for r in resps] == [200] * 5
    assert gateway.fetches(WELL_KNOWN) == 1


async def test_max_age_is_clamped(relay: MakeRelay, gateway: StandInGateway) -> None:
    gateway.keys_cache_control = "max-age=100000"
    client = await relay(max_cache_seconds=50)
    resp = await client.get("/gw")
    assert resp.headers["Cache-Control"] in ("max-age=49", "max-age=50")


async def test_evidence_is_cached_and_fresh_evidence_refused(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    for _ in range(2):
        resp = await client.get("/gw/attestation")
        assert resp.status == 200 and await resp.read() == gateway.evidence
    assert gateway.fetches(ATTESTATION) == 1
    resp = await client.get("/gw/attestation?nonce=00ff")
    assert resp.status == 400
    assert gateway.fetches(ATTESTATION) == 1 and not any(s.query for s in gateway.seen)


async def test_unknown_names_are_404(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    for path in ("/nope", "/nope/attestation"):
        assert (await client.get(path)).status == 404
    assert gateway.seen == []


async def test_no_entry_and_a_failing_gateway_is_502(relay: MakeRelay, gateway: StandInGateway) -> None:
    gateway.keys_status = 500
    client = await relay()
    resp = await client.get("/gw")
    assert resp.status == 502 and resp.headers["Cache-Control"] == "no-store"


async def test_expired_entry_is_served_while_the_gateway_is_down(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay(min_cache_seconds=0.2, max_cache_seconds=0.2)
    assert (await client.get("/gw")).status == 200
    gateway.keys_status = 503
    await asyncio.sleep(0.3)
    resp = await client.get("/gw")
    assert resp.status == 200 and await resp.read() == gateway.keys_body
    assert gateway.fetches(WELL_KNOWN) == 2  # it did ask again


async def _rejected(client: TestClient[Any, Any], gateway: StandInGateway, key_id: int) -> None:
    """A request under ``key_id`` that the gateway answers 422 (key unknown)."""
    gateway.post_status = 422
    resp = await client.post("/gw", data=bytes([key_id]) + bytes(50), headers={"Content-Type": MEDIA_REQ})
    assert resp.status == 422


async def test_a_422_for_a_cached_key_id_drops_keys_and_evidence(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    await client.get("/gw")
    await client.get("/gw/attestation")
    await _rejected(client, gateway, 1)
    gateway.keys_body = keys_list(2)  # rotated
    resp = await client.get("/gw")
    assert await resp.read() == keys_list(2)
    await client.get("/gw/attestation")
    assert gateway.fetches(WELL_KNOWN) == 2 and gateway.fetches(ATTESTATION) == 2
    assert 'veil_relay_requests_total{outcome="keys_dropped"} 1.0' in await (await client.get("/metrics")).text()


async def test_a_422_for_another_key_id_drops_nothing(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay()
    await client.get("/gw")
    await _rejected(client, gateway, 9)  # anyone can send junk under any key id
    await client.get("/gw")
    assert gateway.fetches(WELL_KNOWN) == 1


async def test_drops_are_rate_limited(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay(key_refresh_interval=60)
    for _ in range(3):
        await client.get("/gw")
        await _rejected(client, gateway, 1)
    await client.get("/gw")
    assert gateway.fetches(WELL_KNOWN) == 2  # the first 422 dropped the entry; the next two did not


class _Trickling:
    """A stand-in gateway that writes its key list and evidence in several TCP writes, a pause between each;
    ``short`` bytes fewer than its Content-Length says, then the connection is closed."""

    def __init__(self, keys: bytes, evidence: bytes, short: int = 0) -> None:
        self.keys, self.evidence, self.short = keys, evidence, short

    async def _send(self, request: web.Request, body: bytes, ctype: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": ctype, "Cache-Control": "max-age=60"})
        resp.content_length = len(body)
        await resp.prepare(request)
        sent = body[:len(body) - self.short]
        step = -(-len(sent) // 4)
        for i in range(0, len(sent), step):
            await resp.write(sent[i:i + step])
            await asyncio.sleep(0.2)  # the relay has read what came so far before the next piece arrives
        if self.short:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    async def keys_route(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, self.keys, "application/ohttp-keys")

    async def evidence_route(self, request: web.Request) -> web.StreamResponse:
        return await self._send(request, self.evidence, "application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(WELL_KNOWN, self.keys_route)
        app.router.add_get(ATTESTATION, self.evidence_route)
        return app


async def test_keys_and_evidence_written_in_pieces_are_read_whole(relay: MakeRelay, aiohttp_server: Any) -> None:
    """content.read(n) returns whatever has arrived: the relay read only a gateway's first TCP write of its key list
    or evidence bundle and cached that. It reads to the end now."""
    keys = keys_list(*range(1, 60))
    evidence = json.dumps({"evidence": "x" * 6000}).encode()
    server = await aiohttp_server(_Trickling(keys, evidence).app())
    client = await relay(gateways={"gw": str(server.make_url(WELL_KNOWN))})
    resp = await client.get("/gw")
    assert resp.status == 200 and await resp.read() == keys
    resp = await client.get("/gw/attestation")
    assert resp.status == 200 and await resp.read() == evidence


async def test_keys_and_evidence_short_of_their_content_length_are_502(relay: MakeRelay, aiohttp_server: Any) -> None:
    keys = keys_list(*range(1, 60))
    evidence = json.dumps({"evidence": "x" * 6000}).encode()
    server = await aiohttp_server(_Trickling(keys, evidence, short=10).app())
    client = await relay(gateways={"gw": str(server.make_url(WELL_KNOWN))})
    for path in ("/gw", "/gw/attestation"):
        resp = await client.get(path)
        assert resp.status == 502, path
        assert await resp.read() not in (keys[:-10], evidence[:-10])
