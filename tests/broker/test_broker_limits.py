"""Unauthenticated callers against ``veil broker`` (issue 15, item 12): an ``/auth`` flood must not lock gateways out,
pending sessions die young, and fresh evidence is rate limited. Real broker processes on loopback; the attackers use
other loopback addresses (127.0.0.x) than the honest client."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import aiohttp
import orjson
import pytest

from enclave.attestation import SimulatedProvider
from enclave.broker.protocol import Attestation, AuthRequest, Challenge, kbs_report_data
from enclave.kbs_client import TeeKey

from .conftest import BrokerFiles, BrokerProc
from .test_broker import client_fetch

pytestmark = pytest.mark.integration


def session_from(local: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                 connector=aiohttp.TCPConnector(ssl=False, local_addr=(local, 0)))


async def auth(s: aiohttp.ClientSession, base: str) -> tuple[int, str, Challenge | None]:
    async with s.post(base + "/kbs/v0/auth", data=AuthRequest(tee="sample").encode(),
                      headers={"Content-Type": "application/json"}) as r:
        body = await r.read()
        if r.status != 200:
            return r.status, "", None
        return r.status, r.cookies["kbs-session-id"].value, Challenge.decode(body)


async def attest(s: aiohttp.ClientSession, base: str, cookie: str, ch: Challenge) -> tuple[int, bytes]:
    key = TeeKey()
    bundle = SimulatedProvider().collect(kbs_report_data(ch.nonce, key.jwk, ch.hash_algorithm))
    body = Attestation(nonce=ch.nonce, tee_pubkey=key.jwk, primary_evidence=orjson.loads(bundle.to_json())).encode()
    async with s.post(base + "/kbs/v0/attest", data=body, headers={"Cookie": f"kbs-session-id={cookie}"}) as r:
        return r.status, await r.read()


async def test_auth_flood_cannot_lock_a_gateway_out(files: BrokerFiles,
                                                    broker_process: Callable[..., BrokerProc]) -> None:
    b = broker_process(files.args("--insecure-allow-simulated", "--max-pending", "32",
                                  "--max-pending-per-address", "8"))
    # One address opens many sessions: it keeps only its newest 8, the oldest are evicted, nothing is refused.
    async with session_from("127.0.0.2") as s:
        first = await auth(s, b.base)
        results = [await auth(s, b.base) for _ in range(30)]
        assert first[0] == 200 and all(st == 200 for st, _, _ in results)
        assert first[2] is not None
        status, body = await attest(s, b.base, first[1], first[2])
        assert status == 401 and b"no live session" in body  # evicted by its own address's newer sessions
    # Many addresses fill the whole pending table (far more /auth calls than --max-pending) ...
    for i in range(3, 9):
        async with session_from(f"127.0.0.{i}") as s:
            got = await asyncio.gather(*(auth(s, b.base) for _ in range(10)))
            assert all(st == 200 for st, _, _ in got)
    # ... and a gateway still gets a session, attests and reads its resource.
    assert await client_fetch(b, files) == files.keyset_plain


async def test_pending_sessions_expire_quickly_attested_ones_do_not(files: BrokerFiles,
                                                                     broker_process: Callable[..., BrokerProc]) -> None:
    b = broker_process(files.args("--insecure-allow-simulated", "--pending-timeout", "3", "--session-timeout", "300"))
    async with session_from("127.0.0.1") as s:
        _, idle_cookie, idle_ch = await auth(s, b.base)
        _, cookie, ch = await auth(s, b.base)
        assert ch is not None and idle_ch is not None
        status, _ = await attest(s, b.base, cookie, ch)
        assert status == 200
        await asyncio.sleep(4)
        status, body = await attest(s, b.base, idle_cookie, idle_ch)
        assert status == 401 and b"no live session" in body  # never attested: gone after --pending-timeout
        async with s.get(f"{b.base}/kbs/v0/resource/default/ohttp/keyset",
                         headers={"Cookie": f"kbs-session-id={cookie}"}) as r:
            assert r.status == 200  # attested: lives --session-timeout


async def test_fresh_evidence_is_rate_limited_per_address(files: BrokerFiles,
                                                          broker_process: Callable[..., BrokerProc]) -> None:
    b = broker_process(files.args("--insecure-allow-simulated", "--evidence-rate", "0.1", "--evidence-burst", "2"))

    async def fresh(s: aiohttp.ClientSession) -> tuple[int, str | None]:
        async with s.get(b.base + "/.well-known/veil-attestation", params={"nonce": os.urandom(32).hex()}) as r:
            await r.read()
            return r.status, r.headers.get("Retry-After")

    async with session_from("127.0.0.2") as s:
        got = [await fresh(s) for _ in range(4)]
    assert [st for st, _ in got] == [200, 200, 429, 429], got
    assert got[2][1] is not None and int(got[2][1]) >= 1
    async with session_from("127.0.0.3") as s:  # another address has its own bucket
        assert (await fresh(s))[0] == 200
    async with session_from("127.0.0.2") as s:  # cached evidence is not limited
        async with s.get(b.base + "/.well-known/veil-attestation") as r:
            assert r.status == 200
