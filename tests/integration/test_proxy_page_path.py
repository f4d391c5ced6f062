"""``veil proxy``'s own surface: the chat page's same-origin ``/relay`` path, and the Host/Origin guard.

The page served by the proxy sends its OHTTP requests to ``/relay``; the proxy forwards the bytes to the relay,
rebuilt from scratch, so no browser header reaches the relay. The guard keeps web pages of other sites (and DNS
rebinding) away from the user's loopback endpoint. A real proxy process, in front of a stand-in relay on
loopback that records what reaches it.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from .conftest import Proc, free_port, start_veil

pytestmark = pytest.mark.integration

BROWSER_HEADERS = {
    "Cookie": "session=secret-cookie", "Referer": "http://127.0.0.1/chat?q=secret", "User-Agent": "Mozilla/5.0 X",
    "Accept-Language": "de-CH", "X-Forwarded-For": "10.9.8.7", "Sec-CH-UA-Platform": '"Linux"',
}


class Recorder:
    """A stand-in relay: records each request's method, path, headers and body; answers with fixed bytes."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body: bytes, ctype: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Cache-Control", "max-age=60")
                self.send_header("Set-Cookie", "relay=tracking")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                outer.seen.append(("GET", self.path, dict(self.headers), b""))
                self._answer(b"keys-bytes", "application/ohttp-keys")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.seen.append(("POST", self.path, dict(self.headers), body))
                self._answer(b"sealed-answer", "message/ohttp-res")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def proxy() -> Iterator[tuple[Proc, Recorder]]:
    relay = Recorder()
    port = free_port()
    # The stand-in serves no real keys: the proxy keeps running unverified; its page and config are served.
    p = start_veil(["proxy", "--listen", f"127.0.0.1:{port}", "--relay", relay.base + "/gw",
                    "--allowed-host", "veil.localhost"], port, health="/veil-config.json")
    try:
        yield p, relay
    finally:
        p.stop()
        p.log_path.unlink(missing_ok=True)
        relay.server.shutdown()


def call(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_page_config_points_at_the_same_origin_path(proxy: tuple[Proc, Recorder]) -> None:
    p, relay = proxy
    status, _, body = call(p.base + "/veil-config.json")
    assert status == 200
    assert b'"relay":"/relay"' in body and f'"relay_upstream":"{relay.base}/gw"'.encode() in body


def test_relay_path_forwards_bytes_and_nothing_of_the_browser(proxy: tuple[Proc, Recorder]) -> None:
    p, relay = proxy
    start = len(relay.seen)
    headers = {**BROWSER_HEADERS, "Origin": p.base, "Content-Type": "message/ohttp-req"}
    status, answer_headers, body = call(p.base + "/relay", method="POST", headers=headers, body=b"\x00ciphertext")
    assert (status, body) == (200, b"sealed-answer")
    assert answer_headers["Content-Type"] == "message/ohttp-res"
    assert "Set-Cookie" not in answer_headers  # nothing but what the page needs comes back either
    status, _, body = call(p.base + "/relay", headers={**BROWSER_HEADERS, "Accept": "application/ohttp-keys"})
    assert (status, body) == (200, b"keys-bytes")
    status, _, _ = call(p.base + "/relay/attestation", headers={"Accept": "application/json"})
    assert status == 200
    seen = relay.seen[start:]
    assert [(m, path) for m, path, _, _ in seen] == [("POST", "/gw"), ("GET", "/gw"), ("GET", "/gw/attestation")]
    assert seen[0][3] == b"\x00ciphertext"
    for _, _, h, _ in seen:
        names = {n.lower() for n in h}
        assert names <= {"host", "content-type", "content-length", "accept", "incremental"}, h
        for value in BROWSER_HEADERS.values():
            assert value not in str(h)


def test_relay_path_takes_only_ohttp_requests(proxy: tuple[Proc, Recorder]) -> None:
    p, relay = proxy
    start = len(relay.seen)
    status, _, _ = call(p.base + "/relay", method="POST", headers={"Content-Type": "application/json"}, body=b"{}")
    assert status == 415
    assert relay.seen[start:] == []


def test_an_unreachable_relay_is_a_plain_502() -> None:
    port = free_port()
    p = start_veil(["proxy", "--listen", f"127.0.0.1:{port}", "--relay", f"http://127.0.0.1:{free_port()}/gw"], port,
                   health="/veil-config.json")
    try:
        status, _, body = call(p.base + "/relay", headers={"Accept": "application/ohttp-keys"})
        assert status == 502 and b"cannot reach the relay" in body
        assert "Traceback" not in p.log()
    finally:
        p.stop()
        p.log_path.unlink(missing_ok=True)


def test_foreign_host_and_origin_are_refused(proxy: tuple[Proc, Recorder]) -> None:
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends its own Host; a page of
    another site sends its Origin. Neither gets an answer; nothing is forwarded."""
    p, relay = proxy
    start = len(relay.seen)
    port = p.port
    assert call(p.base + "/v1/models", headers={"Host": f"evil.example:{port}"})[0] == 421
    assert call(p.base + "/relay", headers={"Host": f"evil.example:{port}"})[0] == 421
    assert call(p.base + "/v1/models", headers={"Origin": "http://evil.example"})[0] == 403
    assert call(p.base + "/relay", method="POST", body=b"x", headers={
        "Origin": "http://evil.example", "Content-Type": "message/ohttp-req"})[0] == 403
    assert relay.seen[start:] == []
    # Its own names, with or without an Origin of its own, and names the user added, are answered.
    assert call(p.base + "/veil-config.json")[0] == 200
    assert call(p.base + "/veil-config.json", headers={"Host": f"localhost:{port}"})[0] == 200
    assert call(p.base + "/veil-config.json", headers={"Origin": f"http://localhost:{port}"})[0] == 200
    assert call(p.base + "/veil-config.json", headers={"Host": f"veil.localhost:{port}"})[0] == 200
