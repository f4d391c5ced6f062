"""The gateway's log follower against a log that lies: a checkpoint not signed by the log's key (claiming a huge
size) is never believed with ``--transparency-log-key``; a large log is read a bounded number of entry bundles per
round; ``http_fetcher`` reads every answer to at most its path's bound; and with ``--transparency-publisher`` other
publishers' newer releases in a shared log do not push this gateway's release out of its proofs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import tlog
from enclave.attestation import Bundle
from enclave.gateway import GatewayConfig
from transparency import verify_proofs
from transparency.client import LogUnavailableError, http_fetcher, max_bytes
from transparency.follow import LogFollower
from transparency.log import Log
from transparency.log_cli import key_entry_for_bundle

from .test_log_proofs import _recording
from .test_publisher_flow import _dir_fetch, _gateway, _release


def _huge_checkpoint(signer: tlog.Signer) -> bytes:
    """A well-formed checkpoint claiming 10**9 entries, signed by ``signer``."""
    cp = tlog.Checkpoint(signer.verifier.name, 10**9, b"\x01" * 32)
    return tlog.sign_note(cp.text(), [signer])


def test_with_the_log_key_a_checkpoint_signed_by_another_key_is_not_believed(tmp_path: Path) -> None:
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    log.append([b"one"])
    impostor = tlog.generate_signer(log.origin)  # same name, another key
    fetched: list[str] = []
    inner = _dir_fetch(log.public)

    def fetch(path: str) -> bytes:
        fetched.append(path)
        return _huge_checkpoint(impostor) if path == "checkpoint" else inner(path)

    follower = LogFollower(fetch, log_key=log.signer.verifier)
    with pytest.raises(tlog.TlogError):
        follower.update()
    assert fetched == ["checkpoint"] and follower.entries == []  # nothing fetched on its word


def test_with_the_log_key_a_signed_checkpoint_is_followed(tmp_path: Path) -> None:
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    log.append([b"one", b"two"])
    follower = LogFollower(_dir_fetch(log.public), log_key=log.signer.verifier)
    _, size, _ = follower.update()
    assert size == 2 and follower.entries == [b"one", b"two"]


def test_a_large_log_is_read_a_bounded_number_of_bundles_per_round(tmp_path: Path) -> None:
    publisher = tlog.generate_signer("releases.veil.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle, _ = _gateway()
    key_config = Bundle.from_json(bundle).key_config
    log.append([_release(publisher), *(b"x%d" % i for i in range(5 * 256)), key_entry_for_bundle(bundle, "gw", 1, None)])
    seen: list[str] = []
    follower = LogFollower(_recording(log.public, seen), max_bundles=2)
    rounds = 0
    while (proofs := follower.proofs_for(key_config, time.time())) is None:
        assert sum(p.startswith("tile/entries/") for p in seen) <= 2  # per round
        assert follower.behind
        seen.clear()
        rounds += 1
        assert rounds < 3
    assert rounds == 2 and not follower.behind and len(follower.entries) == 5 * 256 + 2
    assert proofs.key.index == 5 * 256 + 1
    verify_proofs(proofs, key_config, log_key=log.signer.verifier, publishers=[publisher.verifier], now=time.time())


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path.endswith("/tile/0/000"):  # a full hash tile written in delayed pieces, chunked
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, 8192, 3000):
                piece = bytes(8192)[i:i + 3000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path.endswith("/tile/entries/000"):  # endless, chunked, no length
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for _ in range(4096):
                    self.wfile.write(b"%x\r\n%s\r\n" % (65536, bytes(65536)))
            except OSError:
                pass
        elif self.path.endswith("/checkpoint"):  # announces a megabyte
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            try:
                self.wfile.write(bytes(1 << 20))
            except OSError:
                pass
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/log"
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_fetcher_reads_whole_answers_and_bounds_them(server: str) -> None:
    fetch = http_fetcher(server)
    assert fetch("tile/0/000") == bytes(8192)  # every piece, not the first
    with pytest.raises(LogUnavailableError, match="too large"):
        fetch("tile/entries/000")  # refused after 256 * (2 + 65535) + 1 bytes, not kept to the end
    with pytest.raises(LogUnavailableError, match="too large"):
        fetch("checkpoint")
    assert max_bytes("tile/0/000") == 8192 and max_bytes("tile/3/x001/002.p/5") == 5 * 32
    assert max_bytes("tile/entries/000") == 256 * 65537 and max_bytes("tile/entries/000.p/3") == 3 * 65537
    assert max_bytes("checkpoint") == 16 * 1024


def test_with_publishers_the_gateway_attaches_its_own_release_in_a_shared_log(tmp_path: Path) -> None:
    ours, theirs = tlog.generate_signer("releases.veil.example"), tlog.generate_signer("releases.other.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle, _ = _gateway()
    key_config = Bundle.from_json(bundle).key_config
    log.append([_release(ours, "ours"), key_entry_for_bundle(bundle, "gw", 1, None),
                *(_release(theirs, f"theirs {i}") for i in range(16))])
    pushed_out = LogFollower(_dir_fetch(log.public)).proofs_for(key_config, time.time())
    assert pushed_out is not None and 0 not in [r.index for r in pushed_out.releases]  # the hole, without the filter
    proofs = LogFollower(_dir_fetch(log.public), publishers=[ours.verifier]).proofs_for(key_config, time.time())
    assert proofs is not None and [r.index for r in proofs.releases] == [0]
    proven = verify_proofs(proofs, key_config, log_key=log.signer.verifier, publishers=[ours.verifier],
                           now=time.time())
    assert [r.name for r in proven.releases] == ["ours"]


def test_gateway_config_refuses_keys_that_are_not_verifier_keys() -> None:
    with pytest.raises(ValueError, match="transparency_log_key"):
        GatewayConfig(transparency_log="http://log.invalid/", transparency_log_key="nope")
    with pytest.raises(ValueError, match="transparency_publishers"):
        GatewayConfig(transparency_log="http://log.invalid/", transparency_publishers=("nope",))
    vkey = tlog.generate_signer("releases.veil.example").verifier.vkey()
    assert GatewayConfig(transparency_publishers=(vkey,)).transparency_publishers == (vkey,)
