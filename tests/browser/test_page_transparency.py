"""The chat page with a transparency log (issue 17) in Debian's Chromium, the real chain on loopback: ``veil log
serve``, two ``veil gateway --transparency-log`` (echo engine), ``veil relay``, and the page served by ``veil proxy
--publisher --log --log-key``. A publisher's release and gateway A's key configuration are logged; gateway B's is not.

The page checks the proofs gateway A attaches to its evidence in the browser (transparency.js), shows the release
name and the key's log position in its trust panel and chats; it refuses gateway B (no proofs: its key is not in the
log) with nothing sent, and refuses gateway A too once its kept checkpoint (localStorage) says the log forked.

SIMULATED attestation throughout (``--insecure-allow-simulated``): no TEE here."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.transparency._chain import ORIGIN, gateway_requests, get, release_and_log, veil, wait_for_log_proofs

from .conftest import PageLog, Proc, assistant_texts, free_port, send, start_veil, wait_ready


@dataclass
class LogChain:
    gw: Proc
    unlogged: Proc
    proxy: Proc  # the page for gateway A
    proxy_unlogged: Proc  # the page for gateway B


@pytest.fixture(scope="module")
def log_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogChain]:
    tmp: Path = tmp_path_factory.mktemp("page-log")
    pub, log_key = release_and_log(tmp, "veil-gateway 1.0")
    lp, ga, gb, rp, pa, pb = (free_port() for _ in range(6))
    procs: list[Proc] = []
    try:
        log = start_veil(["log", "serve", "--dir", str(tmp / "log"), "--port", str(lp)], lp, health="/checkpoint")
        procs.append(log)
        for port in (ga, gb):
            procs.append(start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}",
                                     "--transparency-log", log.base, "--transparency-refresh", "0.2"], port))
        gw, unlogged = procs[1], procs[2]
        relay = start_veil(["relay", "--listen", f"127.0.0.1:{rp}",
                            "--gateway", f"gw=http://127.0.0.1:{ga}/.well-known/ohttp-gateway",
                            "--gateway", f"other=http://127.0.0.1:{gb}/.well-known/ohttp-gateway"], rp)
        procs.append(relay)
        # the operator logs the release and gateway A's key configuration, from the evidence it serves
        (tmp / "gw.json").write_bytes(get(gw.base + "/.well-known/veil-attestation"))
        veil("log", "append", "--dir", str(tmp / "log"), str(tmp / "rel.note"), "--evidence", str(tmp / "gw.json"),
             "--gateway", "gw-1")
        wait_for_log_proofs(f"{relay.base}/gw/attestation", gw)
        trust = ["--publisher", pub, "--log", log.base, "--log-key", log_key, "--insecure-allow-simulated"]
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pa}", "--relay", f"{relay.base}/gw",
                                 "--log-state", str(tmp / "a.json"), *trust], pa, health="/veil-config.json"))
        procs.append(start_veil(["proxy", "--listen", f"127.0.0.1:{pb}", "--relay", f"{relay.base}/other",
                                 "--log-state", str(tmp / "b.json"), *trust], pb, health="/veil-config.json"))
        yield LogChain(gw, unlogged, procs[4], procs[5])
    finally:
        for p in reversed(procs):
            p.stop()
            p.log_path.unlink(missing_ok=True)


def _check_status(pg: Page, name: str) -> str:
    return pg.eval_on_selector_all(  # type: ignore[no-any-return]
        "#trust-checks li", "(els, name) => els.filter(e => e.querySelector('b').textContent === name)"
        ".map(e => e.dataset.status).join(',')", name)


def test_page_checks_the_log_shows_release_and_position_and_chats(log_chain: LogChain,
                                                                  page: tuple[Page, PageLog]) -> None:
    pg, log = page
    pg.goto(log_chain.proxy.base + "/")
    wait_ready(pg)
    expect(pg.locator("#trust-release")).to_contain_text("veil-gateway 1.0")
    expect(pg.locator("#trust-release")).to_contain_text("publisher releases.veil.example")
    expect(pg.locator("#trust-log")).to_contain_text("key configuration at index 1 of 2")
    expect(pg.locator("#trust-log")).to_contain_text(f"{ORIGIN} · size 2")
    for name in ("Log proofs", "Log checkpoint", "Log consistency", "Inclusion proofs", "Release", "Key in the log",
                 "Release policy"):
        assert _check_status(pg, name) == "pass", name
    state = json.loads(pg.evaluate("localStorage.getItem('veil-log-state')"))
    assert state[ORIGIN]["size"] == 2
    send(pg, "logged and verified")
    pg.wait_for_selector(".msg.assistant.done", timeout=20000)
    assert assistant_texts(pg)[-1] == "logged and verified"
    assert not log.errors, log.errors

    # the kept checkpoint now says another tree of size 2 exists: a fork, refused on re-verification
    other = base64.b64encode(b"\x01" * 32).decode()
    pg.evaluate("s => localStorage.setItem('veil-log-state', s)",
                json.dumps({ORIGIN: {**state[ORIGIN], "root": other}}))
    before = gateway_requests(log_chain.gw.base)
    pg.click("#reverify")
    expect(pg.locator("#trust-verdict")).to_have_text("Refused", timeout=15000)
    expect(pg.locator("#trust-error")).to_contain_text(
        "refused by the transparency log (log fork or rollback against the last checkpoint seen)")
    expect(pg.locator("#trust-error")).to_contain_text("two checkpoints of size 2 with different roots")
    assert _check_status(pg, "Log consistency") == "fail"
    expect(pg.locator("#input")).to_be_disabled()
    assert gateway_requests(log_chain.gw.base) == before


def test_page_refuses_a_gateway_whose_key_is_not_in_the_log(log_chain: LogChain, page: tuple[Page, PageLog]) -> None:
    pg, log = page
    before = gateway_requests(log_chain.unlogged.base)
    pg.goto(log_chain.proxy_unlogged.base + "/")
    expect(pg.locator("#trust-verdict")).to_have_text("Refused", timeout=15000)
    expect(pg.locator("#trust-error")).to_contain_text("carries no transparency-log proofs")
    assert _check_status(pg, "Log proofs") == "fail"
    expect(pg.locator("#trust-release")).to_have_text("–")
    expect(pg.locator("#input")).to_be_disabled()
    pg.wait_for_timeout(300)
    relay_path = log_chain.proxy_unlogged.base + "/relay"
    sent = [(r.method, r.url) for r in log.requests if r.url.startswith(relay_path)]
    assert sent == [("GET", relay_path), ("GET", relay_path + "/attestation")], sent
    assert gateway_requests(log_chain.unlogged.base) == before
