"""The chat page served by ``veil proxy``, in Chromium, against the real chain: trust panel, streaming, stop,
and the proof that the relay only ever handles ciphertext."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from playwright.sync_api import Page, expect

import ohttp
from enclave.attestation.simulated import MEASUREMENT

from .conftest import ARTIFACTS, Chain, PageLog, assistant_texts, send, wait_ready

pytestmark = pytest.mark.integration

CLIENT_GONE = r'^veil_gateway_requests_total\{framing="chunked",outcome="client_gone"\}'

RECORD_LENGTHS = """() => {
  window.__lengths = [];
  const record = () => {
    const els = document.querySelectorAll(".msg.assistant .content");
    if (els.length) window.__lengths.push([performance.now(), els[els.length - 1].textContent.length]);
  };
  new MutationObserver(record).observe(document.getElementById("messages"),
    {subtree: true, childList: true, characterData: true});
}"""


def _last_reply_length(pg: Page) -> int:
    texts = assistant_texts(pg)
    return len(texts[-1]) if texts else 0


def _gateway_key_id(chain: Chain) -> int:
    """The key id of the configuration a client uses: the gateway's X-Wing one (it publishes X25519 too)."""
    import urllib.request

    req = urllib.request.Request(chain.gateway.base + "/.well-known/ohttp-gateway",
                                 headers={"Accept": "application/ohttp-keys"})
    with urllib.request.urlopen(req, timeout=5) as r:
        config = ohttp.choose_config(ohttp.decode_list(r.read()))
    assert config.kem == ohttp.KemId.XWING
    return config.key_id


def test_page_verifies_before_sending_and_shows_the_trust_panel(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    pg.goto(chain.page_url)
    wait_ready(pg)
    banner = pg.locator("#sim-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("SIMULATED ATTESTATION")
    expect(pg.locator("#trust-verdict")).to_have_text("SIMULATED")
    expect(pg.locator("#trust-platform")).to_have_text("simulated (no TEE)")
    # Values computed by the page with WebCrypto equal what the Python side knows.
    expect(pg.locator("#trust-measurement")).to_have_text(MEASUREMENT.hex())
    expect(pg.locator("#trust-key-id")).to_contain_text(f"id {_gateway_key_id(chain)} ")
    expect(pg.locator("#trust-kem")).to_have_text("X-Wing (ML-KEM-768 + X25519) · post-quantum")
    expect(pg.locator("#trust-suite")).to_have_text("X-Wing (ML-KEM-768 + X25519) / HKDF-SHA256 / AES-128-GCM")
    expect(pg.locator("#trust-key-expiry")).to_contain_text("(Cache-Control)")
    expect(pg.locator("#trust-relay")).to_have_text(f"{chain.relay_url} (through veil proxy)")
    statuses = dict(pg.eval_on_selector_all(
        "#trust-checks li", "els => els.map(e => [e.querySelector('b').textContent, e.dataset.status])"))
    # "warn" for the signature means Chromium's WebCrypto Ed25519 verified it (it is not a proof of origin).
    # "Key configurations" passes because the list has an X-Wing (post-quantum) configuration.
    assert statuses == {"Evidence bundle": "pass", "Key binding": "pass", "Key configurations": "pass",
                        "REPORT_DATA": "pass", "Gateway configuration": "pass", "Report signature": "warn",
                        "TEE": "fail", "Freshness": "not-verified"}, statuses
    expect(pg.locator("#model")).to_have_value("echo")
    # Verification came first: the keys and the evidence were fetched before the first POST (the model list).
    # The page's OHTTP requests go to veil proxy's same-origin /relay path, which forwards them to the relay.
    relay_calls = [(r.method, r.url) for r in log.requests if r.url.startswith(chain.page_relay)]
    assert relay_calls[:3] == [("GET", chain.page_relay), ("GET", chain.page_relay + "/attestation"),
                               ("POST", chain.page_relay)], relay_calls
    # No external resources, and no request from the browser to the relay itself: everything went to the page's
    # own server.
    for r in log.requests:
        assert r.url.startswith((chain.proxy.base + "/", "data:")), r.url
    assert not log.errors, log.errors


def test_reply_streams_token_by_token(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    pg.goto(chain.page_url)
    wait_ready(pg)
    pg.evaluate(RECORD_LENGTHS)
    # Shift+Enter is a new line, not a send.
    pg.click("#input")
    pg.keyboard.type("first line")
    pg.keyboard.press("Shift+Enter")
    pg.keyboard.type("second line")
    assert pg.input_value("#input") == "first line\nsecond line"
    assert pg.locator(".msg").count() == 0
    pg.fill("#input", "")
    prompt = " ".join(f"token{i}" for i in range(40))  # the echo engine answers word by word, 30 ms apart
    send(pg, prompt)
    pg.wait_for_selector(".msg.assistant.done", timeout=20000)
    assert assistant_texts(pg)[-1] == prompt
    samples = pg.evaluate("window.__lengths")
    lengths = [n for _, n in samples]
    intermediate = sorted({n for n in lengths if 0 < n < len(prompt)})
    assert len(intermediate) >= 3, f"the reply did not grow in parts: {lengths}"
    # Growth took time: the first and the last intermediate length are at least ~10 token delays apart.
    times = [t for t, n in samples if 0 < n < len(prompt)]
    assert times[-1] - times[0] > 300, samples
    assert pg.locator(".msg.user .content").first.text_content() == prompt
    expect(pg.locator("#send")).to_be_visible()
    expect(pg.locator("#stop")).to_be_hidden()

    # A second turn sends the history and streams as well.
    send(pg, "and now something else entirely")
    pg.wait_for_selector(".msg.assistant.done >> nth=1", timeout=20000)
    assert assistant_texts(pg)[-1] == "and now something else entirely"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "veil-chat.png"
    pg.screenshot(path=str(shot))
    assert shot.stat().st_size > 10000
    pg.set_viewport_size({"width": 420, "height": 860})
    narrow = ARTIFACTS / "veil-chat-narrow.png"
    expect(pg.locator("#trust-panel")).to_be_hidden()  # narrow: the panel opens over the chat on demand
    expect(pg.locator("#input")).to_be_in_viewport()
    pg.screenshot(path=str(narrow))
    assert narrow.stat().st_size > 5000
    pg.click("#toggle-trust")
    expect(pg.locator("#trust-panel")).to_be_visible()
    pg.screenshot(path=str(ARTIFACTS / "veil-trust-narrow.png"))
    pg.click("#close-trust")
    expect(pg.locator("#trust-panel")).to_be_hidden()
    assert not log.errors, log.errors


def test_stop_aborts_the_reply_and_the_gateway_cancels(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    pg.goto(chain.page_url)
    wait_ready(pg)
    long_prompt = " ".join(f"w{i}" for i in range(400))  # 12 s of tokens
    for how in ("button", "escape"):
        gone_before = chain.metric(CLIENT_GONE)
        send(pg, long_prompt)
        expect(pg.locator("#stop")).to_be_visible()
        pg.wait_for_function("() => { const e = [...document.querySelectorAll('.msg.assistant .content')].pop();"
                             " return e && e.textContent.length > 30; }", timeout=10000)
        if how == "button":
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / "veil-chat-streaming.png"))
            pg.click("#stop")
        else:
            pg.keyboard.press("Escape")
        pg.wait_for_selector(".msg.assistant.stopped >> nth=-1", timeout=5000)
        stopped_at = _last_reply_length(pg)
        time.sleep(1.0)
        assert _last_reply_length(pg) == stopped_at, "the reply kept growing after stop"
        assert 30 < stopped_at < len(long_prompt) / 2
        expect(pg.locator(".msg.assistant .note.stopped").last).to_have_text("stopped")
        expect(pg.locator("#send")).to_be_visible()
        expect(pg.locator("#stop")).to_be_hidden()
        deadline = time.monotonic() + 5
        while chain.metric(CLIENT_GONE) <= gone_before:
            assert time.monotonic() < deadline, "the gateway did not notice the client going away"
            time.sleep(0.1)
    # The conversation goes on after a stop.
    send(pg, "still here")
    pg.wait_for_selector(".msg.assistant.done", timeout=20000)
    assert assistant_texts(pg)[-1] == "still here"
    assert not log.errors, log.errors


def test_relay_sees_only_ciphertext(chain: Chain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    tag = uuid.uuid4().hex
    canary = f"canary-{tag} Zürich 東京 🔐 secret-{tag[:8]}"
    start = len(chain.capture.snapshot())
    pg.goto(chain.page_url)
    wait_ready(pg)
    send(pg, canary)
    pg.wait_for_selector(".msg.assistant.done", timeout=20000)
    assert assistant_texts(pg)[-1] == canary  # it made the whole trip, and back

    exchanges = chain.capture.snapshot()[start:]
    posts = [e for e in exchanges if e.method == "POST"]
    assert [e.content_type for e in posts] == ["message/ohttp-req", "message/ohttp-chunked-req"], (
        [(e.method, e.path, e.content_type) for e in exchanges])
    assert all(len(e.request) > 40 and len(e.response) > 40 for e in posts)
    needles = [canary.encode(), tag.encode(), tag[:8].encode(), "Zürich".encode(), "東京".encode(),
               "🔐".encode(), json.dumps(canary).encode(), canary.encode("utf-16-le"), tag.encode("utf-16-le")]
    for e in exchanges:
        for n in needles:
            assert n not in e.request, f"{n!r} in what the relay forwarded ({e.method} {e.path})"
            assert n not in bytes(e.response), f"{n!r} in what the relay received ({e.method} {e.path})"
    # And what the browser gave the relay: ciphertext, no cookie, no referrer.
    to_relay = [r for r in log.requests if r.url.startswith(chain.page_relay) and r.method == "POST"]
    assert len(to_relay) == 2
    for r in to_relay:
        body = r.post_data_buffer
        assert body and len(body) > 40
        for n in needles:
            assert n not in body
        headers = r.all_headers()
        assert "cookie" not in headers and "referer" not in headers, headers
        assert headers["content-type"] in ("message/ohttp-req", "message/ohttp-chunked-req")
    assert not log.errors, log.errors
