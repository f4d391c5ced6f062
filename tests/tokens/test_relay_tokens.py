"""The relay's token check on its own (proxy/relay/tokens.py) against a real issuer app on loopback: every
refusal's status and reason, double spends refused across two verifiers sharing SQLite or Redis, restarts,
a key rotation picked up without a refusal, metrics with fixed labels only."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest

import privacypass
from privacypass import ClientIssuance, Directory, TokenChallenge
from proxy.issuer import IssuerConfig, create_app
from proxy.issuer.state import STATE as ISSUER_STATE
from proxy.relay.tokens import (
    RedisSpentStore,
    SqliteSpentStore,
    TokenMetrics,
    TokenPolicy,
    TokenRejected,
    TokenVerifier,
    open_spent_store,
)

KEY = "sk-tokens-test"


@pytest.fixture
async def issuer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("VEIL_ISSUER_API_KEYS", KEY)
    cfg = IssuerConfig(state_path=str(tmp_path / "issuer.sqlite"), tokens_per_key=0, key_lifetime=3600,
                       key_publish_ahead=60, key_overlap=60)
    server = TestServer(create_app(cfg))
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def mint(session: aiohttp.ClientSession, issuer_url: str, challenge: TokenChallenge, n: int = 1,
               key_index: int = 0) -> list[str]:
    """``n`` Authorization values for ``challenge``."""
    async with session.get(issuer_url + privacypass.WELL_KNOWN_DIRECTORY) as r:
        directory = Directory.decode(await r.read())
    out = []
    for _ in range(n):
        issuance = ClientIssuance.begin(directory.usable(time.time() + 3600)[key_index], challenge)
        async with session.post(issuer_url + directory.issuer_request_uri, data=issuance.request.encode(),
                                headers={"Content-Type": privacypass.MEDIA_TYPE_TOKEN_REQUEST,
                                         "Authorization": f"Bearer {KEY}"}) as r:
            assert r.status == 200, await r.text()
            out.append(privacypass.build_authorization(issuance.finalize(await r.read()).encode()))
    return out


def verifier(issuer_url: str, store: Any, registry: CollectorRegistry | None = None) -> TokenVerifier:
    return TokenVerifier(TokenPolicy(issuer_url=issuer_url, refresh_interval=0.0), store,
                         TokenMetrics(registry or CollectorRegistry()))


async def reason(v: TokenVerifier, auth: str | None, session: aiohttp.ClientSession) -> tuple[int, str]:
    try:
        await v.spend(await v.verify(auth, session))
    except TokenRejected as exc:
        return exc.status, exc.reason
    return 200, "ok"


async def test_accept_then_every_refusal(issuer: TestServer, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    url = str(issuer.make_url("")).rstrip("/")
    registry = CollectorRegistry()
    v = verifier(url, SqliteSpentStore(str(tmp_path / "spent.sqlite")), registry)
    good, second = await mint(session, url, v.challenge, 2)
    assert await reason(v, good, session) == (200, "ok")
    assert await reason(v, good, session) == (403, "double_spend")
    assert await reason(v, None, session) == (401, "missing")
    assert await reason(v, "PrivateToken token=\"AAIA\"", session) == (401, "malformed")
    assert await reason(v, "Bearer abc", session) == (401, "malformed")
    raw = privacypass.parse_authorization(second)
    assert await reason(v, privacypass.build_authorization(b"\x00\x01" + raw[2:]), session) == (401, "unsupported_type")
    forged = raw[:-1] + bytes([raw[-1] ^ 1])
    assert await reason(v, privacypass.build_authorization(forged), session) == (401, "bad_signature")
    unknown = raw[:66] + hashlib.sha256(b"other").digest() + raw[98:]
    assert await reason(v, privacypass.build_authorization(unknown), session) == (401, "unknown_key")
    other = TokenChallenge(token_type=2, issuer_name=v.challenge.issuer_name, origin_info=("elsewhere.example",))
    (wrong,) = await mint(session, url, other)
    assert await reason(v, wrong, session) == (401, "wrong_challenge")
    assert await reason(v, second, session) == (200, "ok")
    text = generate_latest(registry).decode()
    assert "veil_relay_tokens_redeemed_total 2.0" in text and "veil_relay_token_double_spends_total 1.0" in text
    for r in ("missing", "malformed", "unsupported_type", "bad_signature", "unknown_key", "wrong_challenge"):
        assert f'reason="{r}"' in text
    header = v.www_authenticate()
    (ch,) = privacypass.parse_private_token_challenges(header)
    assert ch.challenge == v.challenge.encode() and ch.token_key in {k.spki for k in v.keys.values()}
    await v.store.close()


async def test_double_spend_across_replicas_sqlite_and_restart(issuer: TestServer, session: aiohttp.ClientSession,
                                                               tmp_path: Path) -> None:
    url = str(issuer.make_url("")).rstrip("/")
    path = str(tmp_path / "shared.sqlite")
    a, b = verifier(url, open_spent_store(path)), verifier(url, open_spent_store(f"sqlite:{path}"))
    tokens = await mint(session, url, a.challenge, 3)
    assert await reason(a, tokens[0], session) == (200, "ok")
    assert await reason(b, tokens[0], session) == (403, "double_spend")
    assert await reason(b, tokens[1], session) == (200, "ok")
    await a.store.close()
    await b.store.close()
    restarted = verifier(url, SqliteSpentStore(path))
    assert await reason(restarted, tokens[1], session) == (403, "double_spend")
    assert await reason(restarted, tokens[2], session) == (200, "ok")
    await restarted.store.close()


async def test_double_spend_across_replicas_redis(issuer: TestServer, session: aiohttp.ClientSession,
                                                  redis_url: str) -> None:
    url = str(issuer.make_url("")).rstrip("/")
    a, b = verifier(url, open_spent_store(redis_url)), verifier(url, RedisSpentStore(redis_url))
    assert isinstance(a.store, RedisSpentStore)
    tokens = await mint(session, url, a.challenge, 2)
    assert await reason(a, tokens[0], session) == (200, "ok")
    assert await reason(b, tokens[0], session) == (403, "double_spend")
    assert await reason(b, tokens[1], session) == (200, "ok")
    assert await reason(a, tokens[1], session) == (403, "double_spend")
    await a.store.close()
    await b.store.close()


async def test_store_down_refuses(issuer: TestServer, session: aiohttp.ClientSession) -> None:
    url = str(issuer.make_url("")).rstrip("/")
    from tests.harness import free_port

    v = verifier(url, RedisSpentStore(f"redis://127.0.0.1:{free_port()}/0"))
    (tok,) = await mint(session, url, v.challenge)
    assert await reason(v, tok, session) == (503, "store_unavailable")
    await v.store.close()


async def test_rotation_new_key_learned_and_old_key_expired(issuer: TestServer, session: aiohttp.ClientSession,
                                                            tmp_path: Path) -> None:
    """A token under a key published after the verifier's last fetch is accepted (one refetch); once a key leaves
    the directory its tokens are refused as expired."""
    url = str(issuer.make_url("")).rstrip("/")
    v = verifier(url, SqliteSpentStore(str(tmp_path / "s.sqlite")))
    (first,) = await mint(session, url, v.challenge)
    await v.refresh(session)
    schedule = issuer.app[ISSUER_STATE].schedule
    now = time.time()
    assert schedule.rotate(now + 3600 - 60)  # the next key, published ahead
    (under_new,) = await mint(session, url, v.challenge, key_index=1 if len(schedule.keys) > 1 else 0)
    newest = {k.key.public.key_id for k in schedule.keys}
    assert len(newest) == 2
    assert await reason(v, under_new, session) == (200, "ok")
    schedule.rotate(now + 3600 + 61)  # the first key's overlap has passed
    v._fresh_until = 0
    assert await reason(v, first, session) == (401, "expired_key")


async def test_directory_too_large_or_redirected_is_refused_and_cached_keys_kept(
        issuer: TestServer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """The relay fetches the directory from the URL its operator named, and stops reading it past
    privacypass.MAX_DIRECTORY_BYTES: an endless body (no Content-Length to refuse it by) is a failed fetch at once,
    not memory filled until the fetch times out; a redirect is not followed. Either way the keys it had stay."""
    from aiohttp import web

    real = str(issuer.make_url("")).rstrip("/")
    async with session.get(real + privacypass.WELL_KNOWN_DIRECTORY) as r:
        good = await r.read()
    mode = {"now": "good"}

    async def directory(request: web.Request) -> web.StreamResponse:
        if mode["now"] == "redirect":
            raise web.HTTPFound(real + privacypass.WELL_KNOWN_DIRECTORY)
        if mode["now"] == "good":
            return web.Response(body=good, content_type=privacypass.MEDIA_TYPE_DIRECTORY)
        resp = web.StreamResponse(headers={"Content-Type": privacypass.MEDIA_TYPE_DIRECTORY})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(good[:-1])
        for _ in range(16 * 1024):  # 1 GiB of JSON whitespace, until the relay stops reading
            await resp.write(b" " * 65536)
        return resp

    app = web.Application()
    app.router.add_get(privacypass.WELL_KNOWN_DIRECTORY, directory)
    stand_in = TestServer(app)
    await stand_in.start_server()
    registry = CollectorRegistry()
    try:
        v = verifier(str(stand_in.make_url("")).rstrip("/"), None, registry)
        await v.refresh(session, force=True)
        keys = dict(v.keys)
        assert keys
        for now, why in (("endless", "_DirectoryTooLarge"), ("redirect", "HTTP 302 to http")):
            mode["now"] = now
            v._fresh_until = 0
            caplog.clear()
            await v.refresh(session)
            assert v.keys == keys
            assert [why in r.getMessage() for r in caplog.records if r.name == "veil.relay.tokens"] == [True]
        text = generate_latest(registry).decode()
        assert 'veil_relay_issuer_directory_fetches_total{outcome="ok"} 1.0' in text
        assert 'veil_relay_issuer_directory_fetches_total{outcome="error"} 2.0' in text
    finally:
        await stand_in.close()
