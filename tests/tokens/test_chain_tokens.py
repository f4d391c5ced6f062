"""Privacy Pass through the whole chain: a real gateway process (echo engine), relay apps requiring tokens
(proxy/relay/tokens.setup_tokens on the relay's own create_app), the issuer app, and the OpenAI SDK over the
in-process transport whose relay session spends tokens from a TokenWallet (proxy/client/tokens.py). Double spends
across two relay replicas sharing a store are refused; an issuer key rotation under load loses no request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import openai
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest

import privacypass
from proxy.client.httpx_transport import VeilAsyncTransport
from proxy.client.tokens import TokenWallet
from proxy.issuer import IssuerConfig
from proxy.issuer import create_app as issuer_app
from proxy.issuer.state import STATE as ISSUER_STATE
from proxy.relay import RelayConfig
from proxy.relay import create_app as relay_app
from proxy.relay.tokens import TokenPolicy, setup_tokens
from tests.harness import Proc, free_port, start_veil
from tests.integration.conftest import sdk_chat_and_stream

pytestmark = pytest.mark.integration
KEY = "sk-chain-tokens"


@pytest.fixture(scope="module")
def gateway() -> Iterator[Proc]:
    port = free_port()
    p = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}"], port)
    yield p
    p.stop()
    p.log_path.unlink(missing_ok=True)


async def _issuer(tmp_path: Path, **kw: Any) -> TestServer:
    cfg = IssuerConfig(state_path=str(tmp_path / "issuer.sqlite"), tokens_per_key=0, **kw)
    server = TestServer(issuer_app(cfg))
    await server.start_server()
    return server


async def _relay(gateway: Proc, issuer: TestServer, store: str) -> tuple[TestServer, CollectorRegistry]:
    # Every request of these tests comes from 127.0.0.1: the default --rate-per-minute (600 per address) would
    # answer 429 to the load test well before its 10 s are up, and a 429 is not what it measures.
    app = relay_app(RelayConfig(gateways={"gw": gateway.base + "/.well-known/ohttp-gateway"},
                                rate_per_minute=1_000_000))
    registry = CollectorRegistry()
    setup_tokens(app, TokenPolicy(issuer_url=str(issuer.make_url("")).rstrip("/"), refresh_interval=0.5), store,
                 registry)
    server = TestServer(app)
    await server.start_server()
    return server, registry


def _transport(relay: TestServer, wallet: TokenWallet) -> VeilAsyncTransport:
    """The in-process transport whose relay session spends the wallet's tokens (and which closes the wallet)."""
    return VeilAsyncTransport(str(relay.make_url("/gw")), allow_simulated=True, tokens=wallet)


def _metric(registry: CollectorRegistry, line: str) -> float:
    for row in generate_latest(registry).decode().splitlines():
        if row.startswith(line + " "):
            return float(row.split()[-1])
    return 0.0


@pytest.fixture
async def wallet_env(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    monkeypatch.setenv("VEIL_ISSUER_API_KEYS", KEY)
    yield


async def test_sdk_through_a_relay_that_requires_tokens(gateway: Proc, tmp_path: Path, wallet_env: None) -> None:
    issuer = await _issuer(tmp_path)
    relay, registry = await _relay(gateway, issuer, str(tmp_path / "spent.sqlite"))
    issuer_url = str(issuer.make_url("")).rstrip("/")
    try:
        # Without a token: 401 with a PrivateToken challenge naming the issuer and its key.
        async with aiohttp.ClientSession() as s:
            async with s.post(relay.make_url("/gw"), data=b"x", headers={"Content-Type": "message/ohttp-req"}) as r:
                assert r.status == 401
                (ch,) = privacypass.parse_private_token_challenges(r.headers["WWW-Authenticate"])
                assert ch.decode().issuer_name == f"{issuer.make_url('').host}:{issuer.port}"
        wallet = TokenWallet(issuer_url, KEY, batch=8, low_water=4)
        await wallet.prefetch()
        assert len(wallet) == 8
        await sdk_chat_and_stream(_transport(relay, wallet), "spent a token", "one more token")
        assert _metric(registry, "veil_relay_tokens_redeemed_total") >= 2
        # A wrong API key gets no tokens, and the SDK sees a transport error rather than a hang.
        bad = TokenWallet(issuer_url, "sk-wrong", batch=2)
        client = openai.AsyncOpenAI(base_url="http://veil.invalid/v1", api_key="x", max_retries=0,
                                    http_client=httpx.AsyncClient(transport=_transport(relay, bad)))
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "no"}])
        await client.close()
        await wallet.close()
        await bad.close()
    finally:
        await relay.close()
        await issuer.close()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_double_spend_across_two_relay_replicas(gateway: Proc, tmp_path: Path, wallet_env: None, store: str,
                                                      request: pytest.FixtureRequest) -> None:
    spec = str(tmp_path / "shared-spent.sqlite") if store == "sqlite" else request.getfixturevalue("redis_url")
    issuer = await _issuer(tmp_path)
    (a, reg_a), (b, reg_b) = await _relay(gateway, issuer, spec), await _relay(gateway, issuer, spec)
    wallet = TokenWallet(str(issuer.make_url("")).rstrip("/"), KEY, batch=2)
    try:
        held = await wallet.take()
        headers = {"Content-Type": "message/ohttp-req", "Authorization": held.header}
        async with aiohttp.ClientSession() as s:
            async with s.post(a.make_url("/gw"), data=b"not ohttp", headers=headers) as r:
                assert r.status not in (401, 403)  # the token was accepted; the gateway refused the bytes
            async with s.post(b.make_url("/gw"), data=b"not ohttp", headers=headers) as r:
                assert r.status == 403
                assert privacypass.parse_private_token_challenges(r.headers["WWW-Authenticate"])
        assert _metric(reg_b, "veil_relay_token_double_spends_total") == 1
        assert _metric(reg_a, "veil_relay_tokens_redeemed_total") == 1
    finally:
        await wallet.close()
        await a.close()
        await b.close()
        await issuer.close()


async def test_issuer_key_rotation_under_load_loses_no_request(gateway: Proc, tmp_path: Path,
                                                               wallet_env: None) -> None:
    issuer = await _issuer(tmp_path, key_lifetime=3.0, key_publish_ahead=1.5, key_overlap=3.0)
    relay, registry = await _relay(gateway, issuer, str(tmp_path / "spent.sqlite"))
    wallet = TokenWallet(str(issuer.make_url("")).rstrip("/"), KEY, batch=8, low_water=4)
    client = openai.AsyncOpenAI(base_url="http://veil.invalid/v1", api_key="x", max_retries=0,
                                http_client=httpx.AsyncClient(transport=_transport(relay, wallet)))
    done: list[str] = []
    failures: list[BaseException] = []
    deadline = time.monotonic() + 10.0

    async def worker(w: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            text = f"w{w} r{i}"
            try:
                r = await client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}])
                assert r.choices[0].message.content == text
                done.append(text)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                failures.append(exc)
            i += 1

    try:
        await asyncio.gather(*(worker(w) for w in range(4)))
        rotations = _metric(issuer.app[ISSUER_STATE].metrics.registry, "veil_issuer_key_rotations_total")
        assert not failures, failures[:3]
        assert rotations >= 3  # the first key and at least two rotations during the run
        assert len(done) > 40
        assert _metric(registry, "veil_relay_tokens_redeemed_total") >= len(done)
    finally:
        await client.close()
        await wallet.close()
        await relay.close()
        await issuer.close()


async def test_tokens_pooled_under_a_retired_key_cost_no_request(gateway: Proc, tmp_path: Path,
                                                                wallet_env: None) -> None:
    """The wallet's retry: tokens fetched under a key that the issuer has since dropped are refused by the relay
    (401 expired key, with a challenge naming the new key); the middleware drops them, refetches the directory,
    spends a fresh token and the SDK never sees the refusal."""
    issuer = await _issuer(tmp_path, key_lifetime=1.5, key_publish_ahead=0.5, key_overlap=1.0)
    relay, registry = await _relay(gateway, issuer, str(tmp_path / "spent.sqlite"))
    wallet = TokenWallet(str(issuer.make_url("")).rstrip("/"), KEY, batch=4, low_water=0)
    try:
        await wallet.prefetch()
        stale = {t.key_id for t in wallet._pool}
        await asyncio.sleep(3.5)  # the key they were signed under is no longer listed (lifetime + overlap)
        await sdk_chat_and_stream(_transport(relay, wallet), "after the rotation", "streamed after it")
        assert _metric(registry, 'veil_relay_tokens_rejected_total{reason="expired_key"}') == 1
        assert _metric(registry, "veil_relay_tokens_redeemed_total") == 2
        assert all(t.key_id not in stale for t in wallet._pool)
    finally:
        await wallet.close()
        await relay.close()
        await issuer.close()
