"""The log proofs a gateway serves with its evidence (bundle ``certs["veil_log"]``, issue 17): the wire format
parsed strictly, the gateway's incremental follower, and the client's offline verification, where each tampered
field fails at its own check; then the consistency with the client's kept checkpoint (equal, newer, older, forked)
fetching only consistency tiles. Simulated attestation (no TEE) throughout."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import tlog
from enclave.attestation import Bundle
from ohttp import GatewayKey, encode_list
from proxy.verify import AttestationRefused, Transparency, make_verifier
from tlog.errors import ProofError, StatementError
from transparency import CERT_KEY, AttachmentError, InclusionProof, LogProofs, verify_proofs
from transparency.client import LogUnavailableError, TrustedLog, load_state
from transparency.follow import LogFollower
from transparency.log import Log
from transparency.log_cli import key_entry_for_bundle
from transparency.verify import verify_with_proofs

from .test_publisher_flow import _dir_fetch, _gateway, _log_world, _release

DAY = 86400


def _recording(public: Path, seen: list[str]) -> Callable[[str], bytes]:
    inner = _dir_fetch(public)

    def fetch(path: str) -> bytes:
        seen.append(path)
        data: bytes = inner(path)
        return data

    return fetch


def _offline(path: str) -> bytes:
    raise LogUnavailableError(f"offline: nothing may be fetched ({path})")


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    publisher, log, bundle, keys, rel = _log_world(tmp_path)
    log.append([_release(publisher, "older"), rel, key_entry_for_bundle(bundle, "gw-1", 1, None)])
    return publisher, log, bundle, keys, tmp_path


def _proofs(log: Log, bundle: bytes) -> LogProofs:
    proofs = LogFollower(_dir_fetch(log.public)).proofs_for(Bundle.from_json(bundle).key_config, time.time())
    assert proofs is not None
    return proofs


def _check(log: Log, publisher: tlog.Signer, proofs: LogProofs, key_config: bytes, *, now: float | None = None,
           log_key: tlog.Verifier | None = None) -> object:
    return verify_proofs(proofs, key_config, log_key=log_key or log.signer.verifier, publishers=[publisher.verifier],
                         now=time.time() if now is None else now)


def test_wire_format_round_trips_and_is_parsed_strictly(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, _ = world
    proofs = _proofs(log, bundle)
    text = proofs.encode()
    assert LogProofs.parse(text) == proofs
    obj = json.loads(text)
    assert set(obj) == {"checkpoint", "key", "releases"} and obj["checkpoint"] == (log.public / "checkpoint").read_text()
    assert obj["key"]["index"] == 2 and base64.b64decode(obj["key"]["entry"]).startswith(b"veil/key/v1\n")
    assert [r["index"] for r in obj["releases"]] == [0, 1]  # no release named: every unexpired one

    def bad(change: Callable[[dict], object], match: str) -> None:  # type: ignore[type-arg]
        o = json.loads(text)
        change(o)
        with pytest.raises(AttachmentError, match=match):
            LogProofs.parse(json.dumps(o))

    bad(lambda o: o.update(extra=1), "exactly")
    bad(lambda o: o.pop("releases"), "exactly")
    bad(lambda o: o["key"].update(index=-1), "index")
    bad(lambda o: o["key"].update(index=True), "index")
    bad(lambda o: o["key"].update(entry="not base64!"), "not base64")
    bad(lambda o: o["key"]["proof"].append(base64.b64encode(b"short").decode()), "32 bytes")
    bad(lambda o: o["key"].update(proof=[o["key"]["proof"][0]] * 65), "at most 64")
    bad(lambda o: o.update(releases=[o["releases"][0]] * 17), "at most 16")
    bad(lambda o: o.update(checkpoint=7), "checkpoint")
    with pytest.raises(AttachmentError, match="not JSON"):
        LogProofs.parse("{")
    with pytest.raises(AttachmentError, match="exceeds"):
        LogProofs.parse(" " * (512 * 1024 + 1))
    assert issubclass(AttachmentError, ProofError)  # a client refuses it as a proof that does not verify


def test_the_release_a_key_entry_names_is_the_one_served(tmp_path: Path) -> None:
    publisher = tlog.generate_signer("releases.veil.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle, _ = _gateway()
    rels = [_release(publisher, f"r{i}") for i in range(3)]
    log.append([*rels, key_entry_for_bundle(bundle, "gw", 30, tlog.leaf_hash(rels[1]).hex())])
    proofs = _proofs(log, bundle)
    assert [r.index for r in proofs.releases] == [1]


def test_offline_verification_accepts_the_gateways_proofs(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, _ = world
    proven = verify_proofs(_proofs(log, bundle), Bundle.from_json(bundle).key_config, log_key=log.signer.verifier,
                           publishers=[publisher.verifier], now=time.time())
    assert (proven.key_index, proven.size) == (2, 3)
    assert [r.name for r in proven.releases] == ["older", "veil 1.0"]


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 1]) + b[i + 1 :]


def _tamper_proof(p: LogProofs) -> LogProofs:
    return dataclasses.replace(p, key=dataclasses.replace(p.key, proof=(_flip(p.key.proof[0], 5), *p.key.proof[1:])))


def _tamper_key_entry(p: LogProofs) -> LogProofs:
    return dataclasses.replace(p, key=dataclasses.replace(p.key, entry=_flip(p.key.entry, 40)))


def _tamper_release_entry(p: LogProofs) -> LogProofs:
    r = p.releases[1]
    return dataclasses.replace(p, releases=(p.releases[0], dataclasses.replace(r, entry=_flip(r.entry, 30))))


def _tamper_checkpoint_signature(p: LogProofs) -> LogProofs:
    text, _, sig = p.checkpoint.rpartition("\n— ")
    name, _, b64 = sig.rstrip("\n").partition(" ")
    raw = base64.b64decode(b64)
    return dataclasses.replace(p, checkpoint=f"{text}\n— {name} {base64.b64encode(_flip(raw, 10)).decode()}\n")


def _tamper_checkpoint_size(p: LogProofs) -> LogProofs:
    lines = p.checkpoint.split("\n")
    return dataclasses.replace(p, checkpoint="\n".join([lines[0], "4", *lines[2:]]))


@pytest.mark.parametrize(("tamper", "error", "match"), [
    (_tamper_proof, ProofError, "does not lead to the root"),
    (_tamper_key_entry, ProofError, "does not lead to the root"),
    (_tamper_release_entry, ProofError, "does not lead to the root"),
    (_tamper_checkpoint_signature, tlog.SignatureError, "invalid signature"),
    (_tamper_checkpoint_size, tlog.SignatureError, "invalid signature"),
])
def test_each_tampered_field_fails_at_its_check(world, tamper, error, match) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, _ = world
    key_config = Bundle.from_json(bundle).key_config
    with pytest.raises(error, match=match):
        _check(log, publisher, tamper(_proofs(log, bundle)), key_config)


def test_wrong_log_key_other_publisher_expired_or_other_key_entry_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, _ = world
    key_config = Bundle.from_json(bundle).key_config
    proofs = _proofs(log, bundle)
    with pytest.raises(tlog.NoVerifiableSignatureError):
        _check(log, publisher, proofs, key_config, log_key=tlog.generate_signer(log.origin).verifier)
    with pytest.raises(StatementError, match="no unexpired release signed by the publisher"):
        _check(log, tlog.generate_signer("releases.veil.example"), proofs, key_config)
    # the key entry was logged for one day; the release for thirty
    with pytest.raises(StatementError, match=r"not in the log.*outside its validity window"):
        _check(log, publisher, proofs, key_config, now=time.time() + 2 * DAY)
    with pytest.raises(StatementError, match=r"not in the log.*another key configuration"):
        _check(log, publisher, proofs, encode_list([GatewayKey.generate(9).config]))
    # a release entry proven where the key entry belongs is no key entry
    with pytest.raises(StatementError, match=r"not in the log.*no key entry"):
        _check(log, publisher, dataclasses.replace(proofs, key=proofs.releases[0]), key_config)


def test_the_follower_reads_only_new_entry_bundles_and_finds_a_key_logged_later(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, _ = world
    seen: list[str] = []
    follower = LogFollower(_recording(log.public, seen))
    other, _ = _gateway()
    assert follower.proofs_for(Bundle.from_json(other).key_config, time.time()) is None  # not logged yet
    log.append([b"x%d" % i for i in range(300)])
    seen.clear()
    follower.update()
    assert [p for p in seen if p.startswith("tile/entries/")] == ["tile/entries/000", "tile/entries/001.p/47"]
    log.append([key_entry_for_bundle(other, "gw-2", 30, None)])
    seen.clear()
    proofs = follower.proofs_for(Bundle.from_json(other).key_config, time.time())
    assert proofs is not None and proofs.key.index == 303
    assert [p for p in seen if p.startswith("tile/entries/")] == ["tile/entries/001.p/48"]  # the new entry only
    assert "tile/entries/000" not in seen
    _check(log, publisher, proofs, Bundle.from_json(other).key_config)


def _trusted(log: Log, state: Path | None, fetch: Callable[[str], bytes] = _offline) -> TrustedLog:
    return TrustedLog(log.signer.verifier, fetch, state)


def _verify(log: Log, publisher: tlog.Signer, bundle: bytes, proofs: LogProofs, trusted: TrustedLog) -> object:
    return verify_with_proofs(Bundle.from_json(bundle), proofs, trusted, [publisher.verifier],
                              now=dt.datetime.now(dt.UTC), allow_simulated=True)


def test_state_equal_to_the_checkpoint_needs_no_fetch(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, tmp = world
    state = tmp / "state.json"
    proofs = _proofs(log, bundle)
    result = _verify(log, publisher, bundle, proofs, _trusted(log, state))  # first use: kept
    assert result.source == "gateway" and result.release.name == "older"  # type: ignore[attr-defined]
    assert "(proofs from the gateway)" in result.line()  # type: ignore[attr-defined]
    assert load_state(state, log.origin).size == 3  # type: ignore[union-attr]
    _verify(log, publisher, bundle, proofs, _trusted(log, state))  # again: nothing fetched (_offline)


def test_newer_checkpoint_fetches_only_consistency_tiles_and_is_kept(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, tmp = world
    state = tmp / "state.json"
    _verify(log, publisher, bundle, _proofs(log, bundle), _trusted(log, state))
    log.append([b"y%d" % i for i in range(600)])
    seen: list[str] = []
    _verify(log, publisher, bundle, _proofs(log, bundle), _trusted(log, state, _recording(log.public, seen)))
    assert seen and all(p.startswith("tile/") and not p.startswith("tile/entries/") for p in seen)
    assert len(seen) <= 4  # O(log n) tiles, not the log
    assert load_state(state, log.origin).size == 603  # type: ignore[union-attr]


def test_older_checkpoint_is_accepted_by_consistency_without_going_back(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, tmp = world
    state = tmp / "state.json"
    old = _proofs(log, bundle)
    log.append([b"z%d" % i for i in range(10)])
    _verify(log, publisher, bundle, _proofs(log, bundle), _trusted(log, state))
    assert load_state(state, log.origin).size == 13  # type: ignore[union-attr]
    _verify(log, publisher, bundle, old, _trusted(log, state, _dir_fetch(log.public)))
    assert load_state(state, log.origin).size == 13  # type: ignore[union-attr]
    with pytest.raises(LogUnavailableError):  # the consistency proof needs the log's tiles: no fetch, no answer
        _verify(log, publisher, bundle, old, _trusted(log, state))


def test_forked_checkpoints_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, tmp = world
    fork_dir = tmp / "fork"
    shutil.copytree(log.dir, fork_dir)
    fork = Log(fork_dir)
    state = tmp / "state.json"
    log.append([b"honest"])
    _verify(log, publisher, bundle, _proofs(log, bundle), _trusted(log, state))
    # the same log key signs another tree of the same size: the gateway's proofs under it are refused
    fork.append([b"evil"])
    with pytest.raises(tlog.ConsistencyError, match="forked"):
        _verify(fork, publisher, bundle, _proofs(fork, bundle), _trusted(fork, state))
    # an older checkpoint that is not a prefix of the kept tree
    fork2 = Log.init(tmp / "fork2", log.origin)
    fork2.signer = log.signer
    fork2.append([_release(publisher), key_entry_for_bundle(bundle, "gw-1", 1, None)])
    with pytest.raises(tlog.ConsistencyError, match="not a prefix"):
        _verify(log, publisher, bundle, _proofs(fork2, bundle), _trusted(log, state, _dir_fetch(log.public)))
    assert load_state(state, log.origin).size == 4  # type: ignore[union-attr]


def test_the_proxy_verifier_uses_the_bundles_proofs_offline(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, keys, tmp = world
    b = Bundle.from_json(bundle)
    with_proofs = dataclasses.replace(b, certs={**b.certs, CERT_KEY: _proofs(log, bundle).encode()}).to_json()
    t = Transparency([publisher.verifier], "http://unused.invalid/", log.signer.verifier, state_file=None,
                     fetch=_offline)
    verdict, _ = make_verifier(allow_simulated=True, transparency=t)(with_proofs, keys)
    assert any("key configuration at index 2 of 3 (proofs from the gateway)" in c.name
               for c in verdict.checks)  # type: ignore[attr-defined]
    tampered = dataclasses.replace(b, certs={**b.certs, CERT_KEY: _tamper_proof(_proofs(log, bundle)).encode()})
    with pytest.raises(AttestationRefused, match=r"\(log proof does not verify\)"):
        make_verifier(allow_simulated=True, transparency=t)(tampered.to_json(), keys)
    broken = dataclasses.replace(b, certs={**b.certs, CERT_KEY: "{}"})
    with pytest.raises(AttestationRefused, match=r"\(log proof does not verify\).*veil_log"):
        make_verifier(allow_simulated=True, transparency=t)(broken.to_json(), keys)
    # without proofs the full log is read, as before (and here it cannot be)
    with pytest.raises(AttestationRefused, match=r"\(log unreachable\)"):
        make_verifier(allow_simulated=True, transparency=t)(bundle, keys)


def test_an_entry_proven_at_an_index_outside_the_tree_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, _, _ = world
    p = _proofs(log, bundle)
    with pytest.raises(ProofError, match="outside"):
        InclusionProof(3, p.key.entry, p.key.proof).verify(3, b"\x00" * 32)
