"""Privacy Pass with every part a real process on loopback: ``veil issuer``, two ``veil relay --require-token``
replicas sharing one spent-token store, ``veil gateway --engine echo`` and ``veil proxy --issuer`` (its API key for
the issuer in ``$VEIL_PROXY_ISSUER_KEY``), driven by the OpenAI SDK. A request without a token gets 401 with a
PrivateToken challenge; a token spent at one relay process is refused (403) at the other; no token, API key or
client address reaches any relay or issuer log.

Requests the test sends itself (not those of ``veil proxy``) come from ``127.0.0.9``, so any occurrence of that
address in a log is a leak."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx2 as httpx
import openai
import pytest

import privacypass
from privacypass import Directory, Token
from proxy.client.tokens import TokenWallet
from tests.harness import Proc, free_port, start_veil, stop_all

pytestmark = pytest.mark.integration
KEY = "sk-issuer-process-3Fz9"
CLIENT = "127.0.0.9"
WELL_KNOWN = "/.well-known/ohttp-gateway"


@dataclass
class Chain:
    gateway: Proc
    issuer: Proc
    relays: list[Proc]
    proxy: Proc
    #: the spent-token store both relays share
    store: Path
    #: Authorization values the test spent itself: none may appear in a log
    spent: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    tmp: Path = tmp_path_factory.mktemp("tokens-processes")
    procs: list[Proc] = []
    try:
        gp, ip, pp = free_port(), free_port(), free_port()
        procs.append(gateway := start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}"], gp))
        procs.append(issuer := start_veil(["issuer", "--listen", f"127.0.0.1:{ip}", "--state-path",
                                           str(tmp / "issuer.sqlite"), "--tokens-per-key", "0"], ip,
                                          env={"VEIL_ISSUER_API_KEYS": KEY}))
        relays = []
        for _ in range(2):
            rp = free_port()
            relays.append(start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway",
                                      f"gw={gateway.base}{WELL_KNOWN}", "--require-token", issuer.base,
                                      "--spent-store", str(tmp / "spent.sqlite"), "--rate-per-minute", "100000"], rp))
            procs.append(relays[-1])
        procs.append(proxy := start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", relays[0].base + "/gw",
                                          "--issuer", issuer.base, "--insecure-allow-simulated"], pp,
                                         env={"VEIL_PROXY_ISSUER_KEY": KEY}))
        yield Chain(gateway, issuer, relays, proxy, tmp / "spent.sqlite")
    finally:
        stop_all(procs, remove_logs=True)


@pytest.fixture
async def client_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose connections come from CLIENT."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(CLIENT, 0))) as s:
        yield s


async def _metric(session: aiohttp.ClientSession, proc: Proc, name: str) -> float:
    async with session.get(proc.base + "/metrics") as r:
        for row in (await r.text()).splitlines():
            if row.startswith(name + " "):
                return float(row.split()[-1])
    return 0.0


async def test_sdk_chat_and_stream_through_veil_proxy_spending_tokens(chain: Chain,
                                                                     client_session: aiohttp.ClientSession) -> None:
    before = await _metric(client_session, chain.relays[0], "veil_relay_tokens_redeemed_total")
    client = openai.OpenAI(base_url=chain.proxy.base + "/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(timeout=30))
    try:
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "paid by token"}])
        assert r.choices[0].message.content == "paid by token"
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "streamed, one token"}], stream=True) if c.choices]
        assert "".join(parts) == "streamed, one token"
    finally:
        client.close()
    assert await _metric(client_session, chain.relays[0], "veil_relay_tokens_redeemed_total") == before + 2
    assert await _metric(client_session, chain.issuer, "veil_issuer_tokens_issued_total") >= 2


async def test_a_request_without_a_token_gets_401_with_a_private_token_challenge(
        chain: Chain, client_session: aiohttp.ClientSession) -> None:
    async with client_session.get(chain.issuer.base + privacypass.WELL_KNOWN_DIRECTORY) as r:
        directory = Directory.decode(await r.read())
    for relay in chain.relays:
        for auth in (None, "PrivateToken token=AAAA", "Bearer sk-not-a-token"):
            headers = {"Content-Type": "message/ohttp-req", **({"Authorization": auth} if auth else {})}
            async with client_session.post(relay.base + "/gw", data=b"x" * 64, headers=headers) as r:
                assert r.status == 401, (auth, r.status)
                (ch,) = privacypass.parse_private_token_challenges(r.headers["WWW-Authenticate"])
                decoded = ch.decode()
                assert decoded.issuer_name == f"127.0.0.1:{chain.issuer.port}"
                assert decoded.token_type == privacypass.TOKEN_TYPE_BLIND_RSA and decoded.redemption_context == b""
                assert ch.token_key in [k.key.spki for k in directory.keys]


async def test_a_token_spent_at_one_relay_process_is_refused_at_the_other(
        chain: Chain, client_session: aiohttp.ClientSession) -> None:
    a, b = chain.relays
    wallet = TokenWallet(chain.issuer.base, KEY, batch=2)
    try:
        held = await wallet.take(client_session)
    finally:
        await wallet.close()
    chain.spent.append(held.header)
    headers = {"Content-Type": "message/ohttp-req", "Authorization": held.header}
    doubles = await _metric(client_session, b, "veil_relay_token_double_spends_total")
    async with client_session.post(a.base + "/gw", data=b"not ohttp", headers=headers) as r:
        assert r.status not in (401, 403, 503)  # accepted and spent; the gateway then refused the bytes
    for relay in (b, a):  # the other process, then the same one
        async with client_session.post(relay.base + "/gw", data=b"not ohttp", headers=headers) as r:
            assert r.status == 403
            assert privacypass.parse_private_token_challenges(r.headers["WWW-Authenticate"])
            assert (await r.json())["error"] == "token double spend"
    assert await _metric(client_session, b, "veil_relay_token_double_spends_total") == doubles + 1


async def test_a_request_refused_by_the_rate_limit_keeps_its_token(
        chain: Chain, client_session: aiohttp.ClientSession) -> None:
    """The rate limit is checked before the token is redeemed: a 429 spends nothing. A third relay process with
    ``--rate-per-minute 1`` shares the chain's spent store: its second request (a fresh token) is refused with 429,
    and that token is then accepted by another relay of the same store, while the first one's is refused there."""
    rp = free_port()
    limited = start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw={chain.gateway.base}{WELL_KNOWN}",
                          "--require-token", chain.issuer.base, "--spent-store", str(chain.store),
                          "--rate-per-minute", "1"], rp)
    wallet = TokenWallet(chain.issuer.base, KEY, batch=3)
    try:
        first, refused, spare = [await wallet.take(client_session) for _ in range(3)]
        chain.spent += [first.header, refused.header, spare.header]
        post = {"Content-Type": "message/ohttp-req"}
        async with client_session.post(limited.base + "/gw", data=b"not ohttp",
                                       headers={**post, "Authorization": first.header}) as r:
            assert r.status not in (401, 403, 429, 503)  # spent and forwarded; the gateway refused the bytes
        for auth in (refused.header, spare.header):  # the window's one request is taken
            async with client_session.post(limited.base + "/gw", data=b"not ohttp",
                                           headers={**post, "Authorization": auth}) as r:
                assert r.status == 429 and r.headers["Retry-After"] == "60"
        assert await _metric(client_session, limited, "veil_relay_tokens_redeemed_total") == 1
        other = chain.relays[1]
        async with client_session.post(other.base + "/gw", data=b"not ohttp",
                                       headers={**post, "Authorization": first.header}) as r:
            assert r.status == 403 and (await r.json())["error"] == "token double spend"  # one store
        for auth in (refused.header, spare.header):
            async with client_session.post(other.base + "/gw", data=b"not ohttp",
                                           headers={**post, "Authorization": auth}) as r:
                assert r.status not in (401, 403, 429, 503), r.status  # never spent by the 429
    finally:
        await wallet.close()
        stop_all([limited], remove_logs=True)


async def _until_metric(session: aiohttp.ClientSession, proc: Proc, names: tuple[str, ...], at_least: float) -> None:
    """Wait until one of the metric rows ``names`` reaches ``at_least`` (the relay has read a request's head)."""
    for _ in range(400):
        values = [await _metric(session, proc, name) for name in names]
        if max(values) >= at_least:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"none of {names} reached {at_least}")


def _status(sock: socket.socket) -> int:
    """The status of the response on ``sock`` (its head only)."""
    sock.settimeout(30)
    head = b""
    while b"\r\n" not in head:
        piece = sock.recv(4096)
        assert piece, "the relay closed the connection without an answer"
        head += piece
    return int(head.split(b" ", 2)[1])


async def test_a_request_without_a_valid_token_holds_no_slot_while_its_body_trickles(
        chain: Chain, client_session: aiohttp.ClientSession) -> None:
    """Tokens are verified before admission (and spent only after it): with ``--max-concurrent 1``, requests with
    no token and with a forged one (a real token with its signature altered) that send their headers and then only
    part of their body are refused with 401 and the challenge at once; they take no slot, so a token holder's
    request, sent while their connections still hang open, is forwarded rather than refused as busy (503). Before
    the fix they held the one slot for the body's deadline, and the relay read their bodies."""
    rp = free_port()
    relay = start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw={chain.gateway.base}{WELL_KNOWN}",
                        "--require-token", chain.issuer.base, "--spent-store", str(chain.store),
                        "--rate-per-minute", "100000", "--max-concurrent", "1"], rp)
    wallet = TokenWallet(chain.issuer.base, KEY, batch=2)
    socks: list[socket.socket] = []
    try:
        held, forged = [await wallet.take(client_session) for _ in range(2)]
        chain.spent += [held.header, forged.header]
        raw = Token.decode(privacypass.parse_authorization(forged.header))
        bad = dataclasses.replace(raw, authenticator=bytes([raw.authenticator[0] ^ 1]) + raw.authenticator[1:])
        forged_header = privacypass.build_authorization(bad.encode())
        assert forged_header != forged.header
        for auth in (None, forged_header):
            sock = socket.create_connection(("127.0.0.1", rp), timeout=10, source_address=(CLIENT, 0))
            socks.append(sock)
            head = ("POST /gw HTTP/1.1\r\nHost: relay\r\nContent-Type: message/ohttp-req\r\n"
                    "Content-Length: 65536\r\n" + (f"Authorization: {auth}\r\n" if auth else "") + "\r\n")
            sock.sendall(head.encode() + b"x" * 16)  # then nothing more: a body that trickles, or never comes
        # Both heads have been read: refused for their tokens (now), or holding the slot (before the fix).
        await _until_metric(client_session, relay, ('veil_relay_tokens_rejected_total{reason="missing"}',
                                                    "veil_relay_in_flight"), 1)
        await _until_metric(client_session, relay, ('veil_relay_tokens_rejected_total{reason="bad_signature"}',
                                                    "veil_relay_in_flight"), 1)
        async with client_session.post(relay.base + "/gw", data=b"not ohttp",
                                       headers={"Content-Type": "message/ohttp-req",
                                                "Authorization": held.header}) as r:
            assert r.status not in (401, 403, 429, 503), r.status  # forwarded; the gateway refused the bytes
        for sock in socks:
            assert _status(sock) == 401
        assert await _metric(client_session, relay, "veil_relay_tokens_redeemed_total") == 1
    finally:
        for sock in socks:
            sock.close()
        await wallet.close()
        stop_all([relay], remove_logs=True)


def _raw(port: int, payload: bytes) -> None:
    """A malformed request from CLIENT (aiohttp's own error logging is where addresses would leak)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT, 0)) as s:
        try:
            s.sendall(payload)
            s.recv(65536)
        except (ConnectionError, TimeoutError):
            pass


async def test_no_token_api_key_or_client_address_in_relay_or_issuer_logs(
        chain: Chain, client_session: aiohttp.ClientSession) -> None:
    # Refusals of every kind at the issuer, from CLIENT: a wrong key, a malformed request, bad HTTP.
    request_uri = chain.issuer.base + "/token-request"
    for auth, body in ((f"Bearer {KEY}-wrong", b"\x00\x02" + bytes(257)), (f"Bearer {KEY}", b"short"), (None, b"")):
        headers = {"Content-Type": privacypass.MEDIA_TYPE_TOKEN_REQUEST, **({"Authorization": auth} if auth else {})}
        async with client_session.post(request_uri, data=body, headers=headers) as r:
            assert r.status in (401, 403, 422), r.status
    for proc in (chain.issuer, *chain.relays):
        _raw(proc.port, b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: PrivateToken token=\x01bad\r\n\r\n")
        _raw(proc.port, b"G@T / HTTP/9.9\r\n\r\n")
    time.sleep(0.5)  # let the last records reach the log files
    logs = {p.name: p.log() for p in (chain.issuer, *chain.relays, chain.proxy)}
    assert chain.spent, "the double-spend test ran first and spent a token"
    for name, text in logs.items():
        assert CLIENT not in text, name
        assert KEY not in text, name
        assert "PrivateToken" not in text, name
        for header in chain.spent:
            assert header.split('"')[1] not in text, name
    assert "requests must spend a Privacy Pass token" in logs[chain.relays[0].name]
