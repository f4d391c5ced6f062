"""Privacy Pass in the chat page, in Debian's Chromium: tokens blinded, finalized, pooled and spent in the page with
Cloudflare's privacypass-ts (proxy/web/tokens.js over vendor/privacypass.js).

The chain is real processes on loopback: ``veil gateway --engine echo`` <- ``veil relay --require-token ISSUER``
<- ``veil proxy --issuer ISSUER`` (its key in ``$VEIL_PROXY_ISSUER_KEY``), and ``veil issuer``. The page reaches the
relay through the proxy's same-origin ``/relay`` (which forwards a ``PrivateToken`` Authorization and no other) and
the issuer through ``/issuer`` (directory GET and token-request POST only; the proxy adds the issuer key, the page
never holds it)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page

import privacypass
from tests.harness import stop_all

from .conftest import Proc, PageLog, assistant_texts, free_port, send, start_veil, wait_ready

KEY = "sk-page-tokens-8Qe"
WELL_KNOWN = "/.well-known/ohttp-gateway"


@dataclass
class TokenChain:
    gateway: Proc
    issuer: Proc
    relay: Proc
    proxy: Proc

    def metric(self, proc: Proc, name: str) -> float:
        with urllib.request.urlopen(proc.base + "/metrics", timeout=5) as r:
            for row in r.read().decode().splitlines():
                if row.startswith(name + " "):
                    return float(row.split()[-1])
        return 0.0


@pytest.fixture(scope="module")
def token_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenChain]:
    tmp: Path = tmp_path_factory.mktemp("page-tokens")
    procs: list[Proc] = []
    try:
        gp, ip, rp, pp = free_port(), free_port(), free_port(), free_port()
        procs.append(start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}"], gp))
        procs.append(start_veil(["issuer", "--listen", f"127.0.0.1:{ip}", "--state-path", str(tmp / "issuer.sqlite"),
                                 "--tokens-per-key", "0"], ip, env={"VEIL_ISSUER_API_KEYS": KEY}))
        procs.append(start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway",
                                 f"gw=http://127.0.0.1:{gp}{WELL_KNOWN}", "--require-token", f"http://127.0.0.1:{ip}",
                                 "--spent-store", str(tmp / "spent.sqlite")], rp))
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/gw",
                                 "--issuer", f"http://127.0.0.1:{ip}", "--insecure-allow-simulated"], pp,
                                env={"VEIL_PROXY_ISSUER_KEY": KEY}))
        yield TokenChain(*procs)
    finally:
        stop_all(procs, remove_logs=True)


#: Runs in the page: a wallet of the page's own module (proxy/web/tokens.js) takes one token through the proxy's
#: /issuer path and hands back its Authorization value.
TAKE_TOKEN = """async (name) => {
  const { TokenWallet } = await import("/static/tokens.js");
  const wallet = new TokenWallet({ issuer: "/issuer", issuerName: name, batch: 1, lowWater: 0 });
  const held = await wallet.take();
  return held.header;
}"""


def _post(url: str, headers: dict[str, str]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"not ohttp", method="POST",
                                 headers={"Content-Type": "message/ohttp-req", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("WWW-Authenticate", "")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("WWW-Authenticate", "")


def test_a_token_blinded_in_the_page_is_signed_by_veil_issuer_and_verifies_at_the_relay(
        token_chain: TokenChain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    pg.goto(token_chain.proxy.base + "/veil-config.json")  # same origin as the page, without the page's own wallet
    issued = token_chain.metric(token_chain.issuer, "veil_issuer_tokens_issued_total")
    header = pg.evaluate(TAKE_TOKEN, f"127.0.0.1:{token_chain.issuer.port}")
    assert header.startswith('PrivateToken token="')
    assert token_chain.metric(token_chain.issuer, "veil_issuer_tokens_issued_total") == issued + 1
    token = privacypass.Token.decode(privacypass.parse_authorization(header))
    assert token.token_type == privacypass.TOKEN_TYPE_BLIND_RSA
    # The relay verifies it offline (accepted: the gateway then refuses the bytes), and only once.
    relay = token_chain.relay.base + "/gw"
    status, _ = _post(relay, {"Authorization": header})
    assert status not in (401, 403, 503), status
    status, challenge = _post(relay, {"Authorization": header})
    assert status == 403 and privacypass.parse_private_token_challenges(challenge)
    # The page's only requests were to its own origin: the directory and the token request through /issuer.
    assert [r.url.removeprefix(token_chain.proxy.base) for r in log.requests if r.method == "POST"] == [
        "/issuer/token-request"]


def test_the_page_chats_through_a_relay_that_requires_tokens(token_chain: TokenChain,
                                                             page: tuple[Page, PageLog]) -> None:
    pg, log = page
    redeemed = token_chain.metric(token_chain.relay, "veil_relay_tokens_redeemed_total")
    pg.goto(token_chain.proxy.base + "/")
    config = pg.evaluate("fetch('/veil-config.json').then(r => r.json())")
    assert config["tokens"]["issuer"] == "/issuer"
    assert config["tokens"]["issuer_name"] == f"127.0.0.1:{token_chain.issuer.port}"
    wait_ready(pg)
    send(pg, "paid with a token from the page")
    pg.wait_for_selector(".msg.assistant.done", timeout=20000)
    assert assistant_texts(pg)[-1] == "paid with a token from the page"
    send(pg, "and a second one")
    pg.wait_for_selector(".msg.assistant.done >> nth=1", timeout=20000)
    assert assistant_texts(pg)[-1] == "and a second one"
    # Every POST the page made to /relay carried a PrivateToken (listing the models spent one too).
    posts = [r for r in log.requests if r.method == "POST" and r.url.endswith("/relay")]
    assert len(posts) >= 3
    assert all(r.headers.get("authorization", "").startswith("PrivateToken token=") for r in posts)
    assert len({r.headers["authorization"] for r in posts}) == len(posts)  # each token once
    assert token_chain.metric(token_chain.relay, "veil_relay_tokens_redeemed_total") >= redeemed + len(posts)
    # The page never sent an issuer key: the proxy added it.
    token_requests = [r for r in log.requests if r.method == "POST" and "/issuer/" in r.url]
    assert token_requests and not any("authorization" in r.headers for r in token_requests)
    assert not log.errors, log.errors
