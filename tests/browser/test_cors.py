"""A page served from an unrelated origin uses the relay because the relay allows it (CORS), and only then; the
page that veil proxy serves needs no CORS (it goes through the proxy); a page that refuses the evidence sends
nothing."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from .conftest import WELL_KNOWN, Chain, PageLog, assistant_texts, free_port, send, start_veil, static_site, wait_ready

pytestmark = pytest.mark.integration


def test_page_from_another_origin_chats_through_the_relay(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    site = static_site(chain.relay_url)
    try:
        assert site.base not in (chain.relay.base, chain.proxy.base)
        pg.goto(site.base + "/")
        wait_ready(pg)
        send(pg, "hello from another origin")
        pg.wait_for_selector(".msg.assistant.done", timeout=20000)
        assert assistant_texts(pg)[-1] == "hello from another origin"
        origins = {r.url.split("/")[2] for r in log.requests if not r.url.startswith("data:")}
        assert origins == {site.base.split("/")[2], chain.relay.base.split("/")[2]}, origins
        assert not log.errors, log.errors
    finally:
        site.stop()


def test_without_cors_the_page_cannot_use_the_relay(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, _ = page
    rp = free_port()
    relay = start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw={chain.capture.base}{WELL_KNOWN}"],
                       rp)
    site = static_site(relay.base + "/gw")
    try:
        pg.goto(site.base + "/")
        expect(pg.locator("#trust-error")).to_contain_text("cannot reach the relay", timeout=15000)
        expect(pg.locator("#trust-verdict")).to_have_text("Refused")
        expect(pg.locator("#input")).to_be_disabled()
        expect(pg.locator("#send")).to_be_disabled()
    finally:
        site.stop()
        relay.stop()
        relay.log_path.unlink(missing_ok=True)


def test_page_served_by_veil_proxy_needs_no_relay_cors(chain: Chain, page: tuple[Page, PageLog]) -> None:
    """The relay allows no origin at all: the page that veil proxy serves still chats, through the proxy's
    same-origin /relay path (the browser never talks to the relay itself)."""
    pg, log = page
    rp, pp = free_port(), free_port()
    relay = start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"gw={chain.capture.base}{WELL_KNOWN}"],
                       rp)
    proxy = start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", relay.base + "/gw",
                        "--insecure-allow-simulated"], pp)
    try:
        pg.goto(proxy.base + "/")
        wait_ready(pg)
        send(pg, "no cors needed")
        pg.wait_for_selector(".msg.assistant.done", timeout=20000)
        assert assistant_texts(pg)[-1] == "no cors needed"
        assert {r.url.split("/")[2] for r in log.requests if not r.url.startswith("data:")} == {f"127.0.0.1:{pp}"}
        assert not log.errors, log.errors
    finally:
        for p in (proxy, relay):
            p.stop()
            p.log_path.unlink(missing_ok=True)


def test_refused_evidence_means_nothing_is_sent(chain: Chain, page: tuple[Page, PageLog]) -> None:
    """The page was not told to accept simulated evidence (as ``veil proxy`` without --insecure-allow-simulated)."""
    pg, log = page
    site = static_site(chain.relay_url, allow_simulated=False)
    start = len(chain.capture.snapshot())
    try:
        pg.goto(site.base + "/")
        expect(pg.locator("#trust-verdict")).to_have_text("Refused", timeout=15000)
        expect(pg.locator("#trust-error")).to_contain_text("--insecure-allow-simulated")
        expect(pg.locator("#sim-banner")).to_be_visible()
        expect(pg.locator("#input")).to_be_disabled()
        time.sleep(0.5)
        assert not [r for r in log.requests if r.method == "POST"]
        assert not [e for e in chain.capture.snapshot()[start:] if e.method == "POST"]
    finally:
        site.stop()


def _call(method: str, url: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_relay_cors_headers(chain: Chain) -> None:
    origin = {"Origin": "http://page.example"}
    status, h = _call("OPTIONS", chain.relay_url, {**origin, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "content-type,incremental"})
    assert status == 204 and h["Access-Control-Allow-Origin"] == "*"
    allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "incremental"} <= allowed and "POST" in h["Access-Control-Allow-Methods"]
    # Refusals from the relay itself are readable by pages too (a page can tell "refused" from "unreachable").
    for method, url, body in [("POST", chain.relay_url, b"x"), ("POST", chain.relay.base + "/nope", b"x"),
                              ("GET", chain.relay.base + "/nope", None),
                              ("GET", chain.relay_url + "/attestation?nonce=00", None)]:
        status, h = _call(method, url, {**origin, "Content-Type": "text/plain"}, body)
        assert status in (400, 403, 404, 415), (method, url, status)
        assert h.get("Access-Control-Allow-Origin") == "*", (method, url, status, h)
