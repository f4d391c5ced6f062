"""The page encrypts with X-Wing (ML-KEM-768 + X25519, KEM 0x647A) by default, in Chromium against the real chain
(issue 19): what the relay forwarded carries the X-Wing configuration's key id and a 1120-byte encapsulated key. A
gateway that publishes only X25519 (``veil gateway --kem x25519``) still works, and a page configured with
``require_post_quantum`` refuses it before sending anything."""

from __future__ import annotations

import urllib.request

import pytest
from playwright.sync_api import Page, expect

import ohttp

from .conftest import Chain, Exchange, PageLog, assistant_texts, send, static_site, wait_ready

pytestmark = pytest.mark.integration

HEADER = 7  # key_id(1) || kem_id(2) || kdf_id(2) || aead_id(2)
TAG = 16  # AES-128-GCM
PAD = 1024  # the page pads inner requests to multiples of this (client.js REQUEST_PAD)


def _offered(chain: Chain) -> list[ohttp.KeyConfig]:
    req = urllib.request.Request(chain.relay_url, headers={"Accept": ohttp.MEDIA_TYPE_KEYS})
    with urllib.request.urlopen(req, timeout=5) as r:
        return ohttp.decode_list(r.read())


def _chat(chain: Chain, pg: Page, log: PageLog, text: str) -> list[Exchange]:
    """Open the page, chat once; the two POSTs the relay forwarded (models list, then the streamed chat)."""
    start = len(chain.capture.snapshot())
    pg.goto(chain.page_url)
    wait_ready(pg)
    send(pg, text)
    pg.wait_for_selector(".msg.assistant.done", timeout=20000)
    assert assistant_texts(pg)[-1] == text
    assert not log.errors, log.errors
    posts = [e for e in chain.capture.snapshot()[start:] if e.method == "POST"]
    assert [e.content_type for e in posts] == ["message/ohttp-req", "message/ohttp-chunked-req"]
    return posts


def _enc_length(e: Exchange) -> int:
    """The length of enc that makes the request's framing add up: hdr || enc || [chunk length 0] || sealed, where
    the sealed inner request is a whole number of padding buckets plus the tag."""
    framing = HEADER + TAG + (1 if e.content_type == "message/ohttp-chunked-req" else 0)
    rest = [(n, len(e.request) - framing - n) for n in (32, 65, 1120)]  # X25519, P-256, X-Wing
    candidates = [n for n, sealed in rest if sealed > 0 and sealed % PAD == 0]
    assert len(candidates) == 1, (len(e.request), candidates)
    return candidates[0]


def test_page_chats_with_xwing_by_default(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    offered = _offered(chain)
    assert [c.kem for c in offered] == [ohttp.KemId.XWING, ohttp.KemId.X25519_SHA256]
    xwing, x25519 = offered
    posts = _chat(chain, pg, log, "post-quantum hello from Chromium")
    for e in posts:
        assert e.request[0] == xwing.key_id != x25519.key_id, e.request[:HEADER].hex()
        assert int.from_bytes(e.request[1:3], "big") == 0x647A
        assert _enc_length(e) == 1120
    # Two requests, two encapsulations: the ML-KEM ciphertexts and the X25519 ephemeral keys differ.
    encs = [e.request[HEADER:HEADER + 1120] for e in posts]
    assert encs[0][:1088] != encs[1][:1088] and encs[0][1088:] != encs[1][1088:]
    expect(pg.locator("#trust-kem")).to_have_text("X-Wing (ML-KEM-768 + X25519) · post-quantum")
    title = f"offered: key {xwing.key_id} X-Wing (ML-KEM-768 + X25519), key {x25519.key_id} DHKEM(X25519, HKDF-SHA256)"
    expect(pg.locator("#trust-kem")).to_have_attribute("title", title)
    expect(pg.locator("#trust-key-id")).to_contain_text(f"id {xwing.key_id} ")
    checks = dict(pg.eval_on_selector_all(
        "#trust-checks li", "els => els.map(e => [e.querySelector('b').textContent, e.dataset.status])"))
    assert checks["Key configurations"] == "pass", checks


def test_x25519_only_gateway_still_works(chain_x25519: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    offered = _offered(chain_x25519)
    assert [c.kem for c in offered] == [ohttp.KemId.X25519_SHA256]
    posts = _chat(chain_x25519, pg, log, "classical hello")
    for e in posts:
        assert e.request[0] == offered[0].key_id
        assert int.from_bytes(e.request[1:3], "big") == 0x0020
        assert _enc_length(e) == 32
    expect(pg.locator("#trust-kem")).to_have_text("DHKEM(X25519, HKDF-SHA256) · not post-quantum")
    expect(pg.locator("#trust-suite")).to_have_text("DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM")
    warning = pg.locator("#trust-checks li", has_text="Key configurations")
    expect(warning).to_have_attribute("data-status", "warn")
    expect(warning).to_contain_text("None is post-quantum")


def test_require_post_quantum_refuses_an_x25519_only_gateway(chain: Chain, chain_x25519: Chain,
                                                            page: tuple[Page, PageLog]) -> None:
    pg, log = page
    for c, refused in ((chain_x25519, True), (chain, False)):
        site = static_site(c.relay_url, require_post_quantum=True)
        try:
            start = len(c.capture.snapshot())
            pg.goto(site.base + "/")
            if refused:
                expect(pg.locator("#trust-verdict")).to_have_text("Refused", timeout=15000)
                expect(pg.locator("#trust-error")).to_contain_text("no post-quantum key configuration")
                expect(pg.locator("#trust-kem")).to_have_text("DHKEM(X25519, HKDF-SHA256) · not post-quantum")
                expect(pg.locator("#input")).to_be_disabled()
                pg.wait_for_timeout(300)
                to_relay = [(r.method, r.url) for r in log.requests if r.url.startswith(c.relay_url)]
                assert to_relay == [("GET", c.relay_url), ("GET", c.relay_url + "/attestation")], to_relay
                assert not [e for e in c.capture.snapshot()[start:] if e.method == "POST"], "sent after refusing"
            else:
                wait_ready(pg)
                expect(pg.locator("#trust-kem")).to_have_text("X-Wing (ML-KEM-768 + X25519) · post-quantum")
                posts = [e for e in c.capture.snapshot()[start:] if e.method == "POST"]
                assert posts and all(int.from_bytes(e.request[1:3], "big") == 0x647A for e in posts)
        finally:
            site.stop()
    assert not log.errors, log.errors
