"""``veil issuer`` as an aiohttp app on loopback: directory, issuance, attester refusals, limits, bad requests, key
rotation with overlap and restarts, metrics without per-client labels."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import privacypass
from privacypass import ClientIssuance, Directory, TokenChallenge
from proxy.issuer import Attestation, AttestationRefused, IssuerConfig, create_app
from proxy.issuer.keys import KeySchedule, open_db
from proxy.issuer.state import STATE

KEY = "sk-issuer-test"
CHALLENGE = TokenChallenge(token_type=2, issuer_name="127.0.0.1:1")
REQ_HEADERS = {"Content-Type": privacypass.MEDIA_TYPE_TOKEN_REQUEST, "Authorization": f"Bearer {KEY}"}


def _keys_file(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def config(tmp_path: Path) -> IssuerConfig:
    return IssuerConfig(state_path=str(tmp_path / "issuer.sqlite"), tokens_per_key=5,
                        api_keys_file=_keys_file(tmp_path, f"alice:{hashlib.sha256(KEY.encode()).hexdigest()}",
                                                 f"bob:{hashlib.sha256(b'sk-bob').hexdigest()}:1"))


async def _directory(client: TestClient[Any, Any]) -> Directory:
    r = await client.get(privacypass.WELL_KNOWN_DIRECTORY)
    assert r.status == 200 and r.content_type == privacypass.MEDIA_TYPE_DIRECTORY
    assert re.fullmatch(r"public, max-age=\d+", r.headers["Cache-Control"])
    return Directory.decode(await r.read())


async def _get_token(client: TestClient[Any, Any], directory: Directory, key: str = KEY) -> tuple[int, bytes]:
    issuance = ClientIssuance.begin(directory.usable(time.time())[0], CHALLENGE)
    r = await client.post(directory.issuer_request_uri, data=issuance.request.encode(),
                          headers={**REQ_HEADERS, "Authorization": f"Bearer {key}"})
    body = await r.read()
    if r.status != 200:
        return r.status, body
    assert r.content_type == privacypass.MEDIA_TYPE_TOKEN_RESPONSE
    return 200, issuance.finalize(body).encode()


async def test_directory_and_issuance(aiohttp_client: Any, config: IssuerConfig) -> None:
    client = await aiohttp_client(create_app(config))
    directory = await _directory(client)
    assert directory.issuer_request_uri == "/token-request" and len(directory.keys) == 1
    status, token = await _get_token(client, directory)
    assert status == 200
    privacypass.verify_token(token, directory.usable(time.time()), [CHALLENGE.digest()])
    assert (await client.get("/healthz")).status == 200


async def test_per_key_limits(aiohttp_client: Any, config: IssuerConfig) -> None:
    client = await aiohttp_client(create_app(config))
    directory = await _directory(client)
    assert [(await _get_token(client, directory))[0] for _ in range(6)] == [200] * 5 + [429]
    assert [(await _get_token(client, directory, "sk-bob"))[0] for _ in range(2)] == [200, 429]
    # counts live in the SQLite file: a restarted issuer still refuses
    await client.close()
    client = await aiohttp_client(create_app(config))
    assert (await _get_token(client, await _directory(client)))[0] == 429


async def test_attester_refusals_and_bad_requests(aiohttp_client: Any, config: IssuerConfig) -> None:
    client = await aiohttp_client(create_app(config))
    directory = await _directory(client)
    good = ClientIssuance.begin(directory.usable(time.time())[0], CHALLENGE).request.encode()
    r = await client.post("/token-request", data=good, headers={"Content-Type": privacypass.MEDIA_TYPE_TOKEN_REQUEST})
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.post("/token-request", data=good, headers={**REQ_HEADERS, "Authorization": "Bearer no"})
            ).status == 401
    assert (await client.post("/token-request", data=good, headers={**REQ_HEADERS, "Content-Type": "text/plain"})
            ).status == 415
    other_id = bytes([good[2] ^ 1])
    for bad in (good[:100], good + b"\x00", b"\x00\x01" + good[2:], good[:2] + other_id + good[3:], b""):
        assert (await client.post("/token-request", data=bad, headers=REQ_HEADERS)).status == 422
    text = await (await client.get("/metrics")).text()
    for reason in ("no_api_key", "bad_api_key", "content_type", "malformed", "unsupported_type", "unknown_key"):
        assert f'veil_issuer_requests_rejected_total{{reason="{reason}"}}' in text
    assert KEY not in text and "alice" not in text  # no per-client labels
    # bad requests consumed no quota
    assert [(await _get_token(client, directory))[0] for _ in range(6)] == [200] * 5 + [429]


async def test_pluggable_attester(aiohttp_client: Any, tmp_path: Path) -> None:
    class HeaderAttester:
        async def attest(self, request: web.Request) -> Attestation:
            if request.headers.get("X-Paid") != "yes":
                raise AttestationRefused(403, "unpaid")
            return Attestation(subject=b"paid", limit=0)

    cfg = IssuerConfig(state_path=str(tmp_path / "i.sqlite"), attester="x:y")
    client = await aiohttp_client(create_app(cfg, attester=HeaderAttester()))
    directory = await _directory(client)
    req = ClientIssuance.begin(directory.usable(time.time())[0], CHALLENGE).request.encode()
    headers = {"Content-Type": privacypass.MEDIA_TYPE_TOKEN_REQUEST}
    assert (await client.post("/token-request", data=req, headers=headers)).status == 403
    assert (await client.post("/token-request", data=req, headers={**headers, "X-Paid": "yes"})).status == 200


def test_missing_keys_and_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs keys"):
        create_app(IssuerConfig(state_path=str(tmp_path / "a.sqlite")))
    with pytest.raises(ValueError):
        IssuerConfig(state_path="x", key_lifetime=10, key_publish_ahead=10)
    bad = tmp_path / "bad.txt"
    bad.write_text("secret-looking-line\n")
    with pytest.raises(ValueError, match=r"bad.txt:1") as err:
        create_app(IssuerConfig(state_path=str(tmp_path / "b.sqlite"), api_keys_file=str(bad)))
    assert "secret-looking-line" not in str(err.value)


def test_key_schedule_rotation_overlap_and_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "k.sqlite")
    sched = KeySchedule(open_db(path), lifetime=100, overlap=50, publish_ahead=20)
    t0 = 1_000_000.0
    assert sched.rotate(t0) and not sched.rotate(t0 + 10)
    first = sched.keys[0].key.public
    assert sched.directory("/r", t0).usable(t0) == [first]
    # 20 s before the lifetime ends the next key is published, not yet usable
    assert sched.rotate(t0 + 80)
    d = sched.directory("/r", t0 + 80)
    assert [k.key for k in d.keys][0] == first and len(d.keys) == 2 and d.keys[1].not_before == int(t0 + 100)
    assert d.usable(t0 + 80) == [first]
    second = d.keys[1].key
    # after it takes over, the first key stays listed for the overlap, second preferred
    d = sched.directory("/r", t0 + 120)
    assert d.usable(t0 + 120) == [second, first]
    assert {k.public for k in sched.signing_keys(t0 + 120)} == {first, second}
    # a restarted issuer (another schedule on the same file) loads the same keys
    again = KeySchedule(open_db(path), lifetime=100, overlap=50, publish_ahead=20)
    assert not again.rotate(t0 + 120)
    assert {k.key.public for k in again.keys} == {first, second}
    # past the overlap the first key is gone (a third was published ahead meanwhile)
    again.rotate(t0 + 185)
    assert first not in [k.key.public for k in again.keys]
    assert len({k.key.public.truncated_key_id for k in again.keys}) == len(again.keys)
    assert Path(path).stat().st_mode & 0o777 == 0o600


async def test_directory_max_age_below_publish_ahead(aiohttp_client: Any, tmp_path: Path, config: IssuerConfig) -> None:
    cfg = IssuerConfig(state_path=str(tmp_path / "c.sqlite"), api_keys_file=config.api_keys_file,
                       key_lifetime=30, key_publish_ahead=10)
    client = await aiohttp_client(create_app(cfg))
    r = await client.get(privacypass.WELL_KNOWN_DIRECTORY)
    assert int(r.headers["Cache-Control"].rsplit("=", 1)[1]) <= 5
    assert client.server.app[STATE].metrics.keys._value.get() >= 0
