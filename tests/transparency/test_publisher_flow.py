"""Releases, the log and the client together: a publisher signs a release, the log sequences it with a gateway's
key configuration and writes tiles, and a client that trusts only the publisher and the log derives its policy and
accepts the gateway; then a key not in the log, a release by another key, a forked log and a rolled-back
checkpoint are each refused. The log's files are read through the same ``fetch(path)`` a web server would answer."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pytest

import tlog
from enclave.attestation import ConfigValue, SimulatedProvider
from ohttp import GatewayKey, encode_list
from tlog.errors import StatementError
from transparency import open_release, release_text, sign_release
from transparency.client import LogUnavailableError, TrustedLog
from transparency.log import Log
from transparency.log_cli import key_entry_for_bundle
from transparency.verify import verify_with_log

POLICY = {"platforms": ["simulated"], "config": {"require": {"engine": "echo"}}}


def _dir_fetch(public: Path):  # type: ignore[no-untyped-def]
    def fetch(path: str) -> bytes:
        try:
            return (public / path).read_bytes()
        except FileNotFoundError:
            raise LogUnavailableError(f"log unreachable: {path}") from None

    return fetch


def _release(publisher: tlog.Signer, name: str = "veil 1.0", start: int | None = None, days: int = 30) -> bytes:
    nb = int(time.time()) - 60 if start is None else start
    return sign_release(release_text(name, nb, nb + days * 86400, POLICY), publisher)


def _gateway_bundle(config: dict[str, ConfigValue] | None = None) -> bytes:
    keys = encode_list([GatewayKey.generate(7).config])
    return SimulatedProvider().collect(keys, config=config or {"engine": "echo"}).to_json()


def _gateway(engine: str = "echo") -> tuple[bytes, bytes]:
    """A simulated gateway's evidence bundle and its key configurations."""
    keys = encode_list([GatewayKey.generate(7).config])
    return SimulatedProvider().collect(keys, config={"engine": engine}).to_json(), keys


def _log_world(tmp_path: Path) -> tuple[tlog.Signer, Log, bytes, bytes, bytes]:
    """A publisher, an empty log (``tmp_path/log``), a simulated gateway (bundle, keys) and the publisher's release
    ``veil 1.0``, not yet logged."""
    publisher = tlog.generate_signer("releases.veil.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle, keys = _gateway()
    return publisher, log, bundle, keys, _release(publisher)


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    publisher = tlog.generate_signer("releases.veil.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle = _gateway_bundle()
    rel = _release(publisher)
    log.append([rel, key_entry_for_bundle(bundle, "gw-1", 30, tlog.leaf_hash(rel).hex())])
    return publisher, log, bundle, tmp_path


def _trusted(log: Log, state: Path) -> TrustedLog:
    return TrustedLog(log.signer.verifier, _dir_fetch(log.public), state)


def _verify(log: Log, state: Path, publisher: tlog.Verifier, bundle: bytes):  # type: ignore[no-untyped-def]
    from enclave.attestation import Bundle

    view = _trusted(log, state).open()
    return verify_with_log(Bundle.from_json(bundle), view, [publisher], now=dt.datetime.now(dt.UTC),
                           allow_simulated=True)


def test_release_statement_round_trip() -> None:
    pub = tlog.generate_signer("releases.veil.example")
    raw = _release(pub)
    rel = open_release(raw, [pub.verifier])
    assert rel.name == "veil 1.0" and rel.policy == POLICY and rel.publisher == pub.name
    assert raw.startswith(b"veil/release/v1\n{")
    other = tlog.generate_signer("releases.veil.example")
    with pytest.raises(StatementError, match="trusted publisher"):
        open_release(raw, [other.verifier])
    with pytest.raises(StatementError, match="floats"):
        release_text("x", 0, 1, {"a": 1.5})
    with pytest.raises(StatementError, match="window"):
        release_text("x", 5, 5, {})


def test_client_derives_policy_and_accepts_logged_gateway(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, tmp = world
    result = _verify(log, tmp / "state.json", publisher.verifier, bundle)
    assert result.verdict.ok and result.release is not None and result.release.name == "veil 1.0"
    assert (result.key_index, result.log_size) == (1, 2)
    # the state file keeps the checkpoint; a grown log is accepted through a consistency proof from tiles
    log.append([_release(publisher, "veil 1.1")] + [_release(publisher, f"r{i}") for i in range(300)])
    assert _verify(log, tmp / "state.json", publisher.verifier, bundle).verdict.ok


def test_gateway_config_not_in_release_policy_fails(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, _, tmp = world
    other = _gateway_bundle({"engine": "vllm"})
    log.append([key_entry_for_bundle(other, "gw-2", 30, None)])
    result = _verify(log, tmp / "state.json", publisher.verifier, other)
    assert not result.verdict.ok and result.release is None


def test_key_not_in_the_log_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, _, tmp = world
    with pytest.raises(StatementError, match="not in the log"):
        _verify(log, tmp / "state.json", publisher.verifier, _gateway_bundle())


def test_a_malformed_key_entry_does_not_lock_every_client_out(world) -> None:  # type: ignore[no-untyped-def]
    # In a log many parties append to (any tlog-tiles log), one entry that says it is a key entry but does not parse
    # admits nothing; the client skips it instead of refusing the whole log.
    publisher, log, bundle, tmp = world
    log.append([b"veil/key/v1\n{not json", b"veil/key/v1\n{\"gateway\": 1}"])
    result = _verify(log, tmp / "state.json", publisher.verifier, bundle)
    assert result.verdict.ok and (result.key_index, result.log_size) == (1, 4)


def test_release_signed_by_another_key_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    _, log, bundle, tmp = world
    impostor = tlog.generate_signer("releases.veil.example")
    with pytest.raises(StatementError, match="no unexpired release signed by the publisher"):
        _verify(log, tmp / "state.json", impostor.verifier, bundle)


def test_expired_release_is_not_used(tmp_path: Path) -> None:
    publisher = tlog.generate_signer("releases.veil.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle = _gateway_bundle()
    log.append([_release(publisher, start=int(time.time()) - 10 * 86400, days=1),
                key_entry_for_bundle(bundle, "gw", 30, None)])
    with pytest.raises(StatementError, match="validity window"):
        _verify(log, tmp_path / "state.json", publisher.verifier, bundle)


def test_forked_log_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, tmp = world
    state = tmp / "state.json"
    _verify(log, state, publisher.verifier, bundle)
    # the same log key signs a different tree of the same size: a split view
    fork_dir = tmp / "fork"
    shutil.copytree(log.dir, fork_dir)
    fork = Log(fork_dir)
    fork.db.execute("DELETE FROM leaves WHERE idx = 1")
    fork.db.commit()
    fork.append([key_entry_for_bundle(_gateway_bundle(), "gw-evil", 30, None)])
    assert fork.size() == log.size()
    with pytest.raises(tlog.ConsistencyError, match="forked"):
        _verify(fork, state, publisher.verifier, bundle)
    # a larger fork fails the consistency proof
    fork.append([_release(publisher, "more")])
    with pytest.raises(tlog.ConsistencyError, match="forked"):
        _verify(fork, state, publisher.verifier, bundle)


def test_rolled_back_checkpoint_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, tmp = world
    state = tmp / "state.json"
    old_checkpoint = (log.public / "checkpoint").read_bytes()
    log.append([_release(publisher, "veil 1.1")])
    _verify(log, state, publisher.verifier, bundle)
    (log.public / "checkpoint").write_bytes(old_checkpoint)  # a stale (validly signed) checkpoint replayed
    with pytest.raises(tlog.ConsistencyError, match="rolled-back"):
        _verify(log, state, publisher.verifier, bundle)


def test_checkpoint_from_another_log_key_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, tmp = world
    other = Log.init(tmp / "other", log.origin)
    trusted = TrustedLog(other.signer.verifier, _dir_fetch(log.public), tmp / "s.json")
    with pytest.raises(tlog.NoVerifiableSignatureError):
        trusted.open()


def test_unreachable_log_says_so(tmp_path: Path) -> None:
    trusted = TrustedLog(tlog.generate_signer("x").verifier, _dir_fetch(tmp_path / "nothing"), None)
    with pytest.raises(LogUnavailableError, match="unreachable"):
        trusted.open()


def test_log_files_are_c2sp_tiles(world) -> None:  # type: ignore[no-untyped-def]
    _, log, _, _ = world
    log.append([b"x" * i for i in range(1, 300)])
    size = log.size()
    public = log.public
    assert (public / "tile/0/000").stat().st_size == 8192
    assert (public / f"tile/0/001.p/{size - 256}").is_file()
    assert (public / "tile/1/000.p/1").is_file()
    entries = tlog.parse_entry_bundle((public / "tile/entries/000").read_bytes())
    hashes = tlog.parse_tile((public / "tile/0/000").read_bytes())
    assert [tlog.leaf_hash(e) for e in entries] == hashes
    cp = tlog.open_checkpoint((public / "checkpoint").read_bytes(), log.signer.verifier).checkpoint
    assert cp.size == size and cp.root == tlog.root_from_leaf_hashes(log.leaf_hashes())
    # appending an entry already logged keeps its index
    assert log.append([b"x"]) == [2]
