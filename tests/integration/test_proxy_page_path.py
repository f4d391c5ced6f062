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
                if body == b"want-token":  # as a relay that requires Privacy Pass tokens refuses
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'PrivateToken challenge="AAIAAAA=", token-key="AAAA"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
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
    assert b'"require_post_quantum":false' in body  # no policy asks for it


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


def test_relay_path_forwards_a_private_token_and_no_other_credential(proxy: tuple[Proc, Recorder]) -> None:
    """The page spends Privacy Pass tokens in the outer Authorization header: that, and only that scheme, reaches
    the relay, and the relay's challenge comes back to the page."""
    p, relay = proxy
    token = 'PrivateToken token="AAIAAQID"'
    for auth, forwarded in ((token, True), ("privatetoken token=\"AAIAAQID\"", True), ("Bearer sk-secret", False),
                            ("Basic dXNlcjpwYXNz", False), ("PrivateTokenX", False)):
        start = len(relay.seen)
        status, _, _ = call(p.base + "/relay", method="POST", body=b"\x00ciphertext",
                            headers={"Content-Type": "message/ohttp-req", "Authorization": auth})
        assert status == 200
        (_, _, h, _), = relay.seen[start:]
        assert (h.get("Authorization") == auth) is forwarded and ("Authorization" in h) is forwarded, (auth, h)
    status, answer_headers, _ = call(p.base + "/relay", method="POST", body=b"want-token",
                                     headers={"Content-Type": "message/ohttp-req", "Authorization": token})
    assert status == 401 and answer_headers["WWW-Authenticate"].startswith("PrivateToken challenge=")


def test_without_issuer_there_is_no_issuer_path(proxy: tuple[Proc, Recorder]) -> None:
    p, relay = proxy
    start = len(relay.seen)
    status, _, body = call(p.base + "/veil-config.json")
    assert b'"tokens"' not in body
    status, _, _ = call(p.base + "/issuer/.well-known/private-token-issuer-directory")
    assert status == 404 and relay.seen[start:] == []


def test_issuer_path_forwards_directory_and_token_requests_with_the_proxys_key() -> None:
    """``veil proxy --issuer``: the page's ``/issuer`` reaches the issuer for the directory GET and token-request
    POSTs only; the proxy adds its own issuer key and drops whatever credential the page sends."""
    issuer = Recorder()
    port = free_port()
    p = start_veil(["proxy", "--listen", f"127.0.0.1:{port}", "--relay", f"http://127.0.0.1:{free_port()}/gw",
                    "--issuer", issuer.base], port, health="/veil-config.json",
                   env={"VEIL_PROXY_ISSUER_KEY": "sk-proxy-issuer-key"})
    try:
        start = len(issuer.seen)  # after the proxy's own directory fetch (its wallet, filled before serving)
        status, _, body = call(p.base + "/veil-config.json")
        host = issuer.base.removeprefix("http://")
        assert b'"tokens":{"issuer":"/issuer","issuer_name":"' + host.encode() + b'"' in body
        status, _, body = call(p.base + "/issuer/.well-known/private-token-issuer-directory",
                               headers={**BROWSER_HEADERS, "Authorization": "Bearer page-key"})
        assert (status, body) == (200, b"keys-bytes")
        status, _, body = call(p.base + "/issuer/token-request", method="POST", body=b"\x00\x02" + bytes(257),
                               headers={**BROWSER_HEADERS, "Content-Type": "application/private-token-request",
                                        "Authorization": "Bearer page-key"})
        assert status == 200
        for path, method, headers, data in (
                ("/issuer/token-request", "POST", {"Content-Type": "application/json"}, b"{}"),  # not a token request
                ("/issuer/token-request", "POST", {"Content-Type": "application/private-token-request"},
                 bytes(2000)),  # too large to be one
                ("/issuer/metrics", "GET", {}, None), ("/issuer/healthz", "GET", {}, None)):
            status, _, _ = call(p.base + path, method=method, headers=headers, body=data)
            assert status in (404, 405, 413, 415), (path, status)
        seen = issuer.seen[start:]
        assert [(m, path) for m, path, _, _ in seen] == [("GET", "/.well-known/private-token-issuer-directory"),
                                                         ("POST", "/token-request")]
        assert "Authorization" not in seen[0][2]
        assert seen[1][2]["Authorization"] == "Bearer sk-proxy-issuer-key"
        assert seen[1][3] == b"\x00\x02" + bytes(257)
        for _, _, h, _ in seen:
            for value in (*BROWSER_HEADERS.values(), "page-key"):
                assert value not in str(h)
    finally:
        p.stop()
        p.log_path.unlink(missing_ok=True)
        issuer.server.shutdown()


def test_the_policys_post_quantum_requirement_reaches_the_page(tmp_path: Any) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["sev-snp"]\nrequire_post_quantum = true\n')
    port = free_port()
    p = start_veil(["proxy", "--listen", f"127.0.0.1:{port}", "--relay", f"http://127.0.0.1:{free_port()}/gw",
                    "--policy", str(policy)], port, health="/veil-config.json")
    try:
        status, _, body = call(p.base + "/veil-config.json")
        assert status == 200 and b'"require_post_quantum":true' in body
    finally:
        p.stop()
        p.log_path.unlink(missing_ok=True)
