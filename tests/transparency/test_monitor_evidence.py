"""``veil log monitor`` re-verifies every key entry's evidence (real processes: ``veil log serve``, ``append``,
``monitor``): ``veil log append --evidence`` stores the exact bundle as ``public/evidence/<sha256>``, the monitor
fetches it, checks it against the entry and verifies it under the release's policy as of when the entry became
valid; evidence that is missing, altered, of other keys or refused by the release is an ALERT (exit 4)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tlog
from enclave.attestation import Bundle, SimulatedProvider
from ohttp import GatewayKey, encode_list
from tests.harness import Proc, free_port, start_veil
from tests.transparency._chain import get, release_and_log, veil, veil_run
from transparency.log import MAX_EVIDENCE_BYTES, Log
from transparency.statements import KeyEntry, key_entry_bytes


@dataclass
class World:
    tmp: Path
    url: str
    pub: str
    log_key: str
    release_hash: str

    @property
    def log_dir(self) -> Path:
        return self.tmp / "log"

    def bundle(self, name: str, engine: str = "echo", key_id: int = 1) -> Path:
        """A simulated gateway's evidence bundle (fresh keys) written to ``tmp/name``."""
        keys = encode_list([GatewayKey.generate(key_id).config])
        path = self.tmp / name
        path.write_bytes(SimulatedProvider().collect(keys, config={"engine": engine}).to_json())
        return path

    def append(self, bundle: Path, gateway: str, *, release: bool = True) -> int:
        """``veil log append --evidence``; the index of the key entry."""
        extra = ["--release-hash", self.release_hash] if release else []
        out = veil("log", "append", "--dir", str(self.log_dir), "--evidence", str(bundle), "--gateway", gateway, *extra)
        return int(out.split()[-1])

    def monitor(self, *extra: str, simulated: bool = True) -> tuple[int, dict[int, str], str]:
        """``veil log monitor --once`` with a fresh state file: exit status, its line per entry index, all output."""
        state = self.tmp / f"monitor-{time.monotonic_ns()}.json"
        r = veil_run("log", "monitor", "--log", self.url, "--log-key", self.log_key, "--publisher", self.pub,
                     "--state", str(state), "--once", *(["--insecure-allow-simulated"] if simulated else []), *extra,
                     ok=False)
        lines: dict[int, str] = {}
        for line in r.stdout.splitlines():
            words = line.removeprefix("ALERT ").split()
            if len(words) > 1 and words[0] == "entry":
                lines[int(words[1].rstrip(":"))] = line
        return r.returncode, lines, r.stdout + r.stderr


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A log served over HTTP holding one release ``veil 1.0`` (simulated, engine "echo") at index 0."""
    pub, log_key = release_and_log(tmp_path, "veil 1.0")
    rel = (tmp_path / "rel.note").read_bytes()
    assert veil("log", "append", "--dir", str(tmp_path / "log"), str(tmp_path / "rel.note")).split() == ["index", "0"]
    port = free_port()
    server: Proc = start_veil(["log", "serve", "--dir", str(tmp_path / "log"), "--port", str(port)], port,
                              health="/checkpoint")
    try:
        yield World(tmp_path, server.base, pub, log_key, tlog.leaf_hash(rel).hex())
    finally:
        server.stop()


def _craft(world: World, evidence: bytes, *, key_config: bytes | None = None, key_ids: tuple[int, ...] | None = None,
           not_before: int | None = None, release: str | None = None, store: bool = True) -> int:
    """Append a key entry written by hand (as a careless or dishonest log operator could) for ``evidence``."""
    log = Log(world.log_dir)
    try:
        nb = int(time.time()) - 60 if not_before is None else not_before
        entry = KeyEntry("gw-crafted", key_ids or (1,), hashlib.sha256(key_config or b"").hexdigest(),
                         hashlib.sha256(evidence).hexdigest(), nb, nb + 86400, release)
        if store:
            log.store_evidence(evidence)
        return log.append([key_entry_bytes(entry)])[0]
    finally:
        log.close()


def test_monitor_verifies_each_key_entrys_evidence(world: World) -> None:
    named = world.bundle("gw1.json")
    unnamed = world.bundle("gw2.json", key_id=2)
    assert world.append(named, "gw-1") == 1
    assert world.append(unnamed, "gw-2", release=False) == 2
    # the exact bytes, content-addressed under public/, and served by veil log serve
    digest = hashlib.sha256(named.read_bytes()).hexdigest()
    assert (world.log_dir / "public" / "evidence" / digest).read_bytes() == named.read_bytes()
    assert get(f"{world.url}/evidence/{digest}") == named.read_bytes()

    rc, lines, out = world.monitor()
    assert rc == 0, out
    assert "entry 0: release 'veil 1.0'" in lines[0]
    assert lines[1] == ("entry 1: key configuration of gw-1 (key ids [1]): OK, its evidence verifies under release "
                        "'veil 1.0'"), out
    assert "gw-2" in lines[2] and "OK" in lines[2] and "'veil 1.0'" in lines[2], out
    assert "consistent" in out
    # simulated evidence is refused unless the monitor is told to accept it
    rc, lines, out = world.monitor(simulated=False)
    assert rc == 4, out
    assert lines[1].startswith("ALERT entry 1: key entry of gw-1: evidence does not verify") and \
        "platform accepted" in lines[1], out
    assert lines[2].startswith("ALERT entry 2"), out
    # the evidence is fetched where --evidence-url says (default: the log's URL)
    rc, lines, out = world.monitor("--evidence-url", "http://127.0.0.1:9/mirror")
    assert rc == 4, out
    assert lines[1].startswith("ALERT entry 1: key entry of gw-1: evidence not available: evidence unreachable: "
                               "GET http://127.0.0.1:9/mirror/evidence/"), out


def test_monitor_alerts_on_evidence_the_release_does_not_admit(world: World) -> None:
    other = world.bundle("vllm.json", engine="vllm")
    assert world.append(other, "gw-vllm") == 1  # names veil 1.0, which requires engine "echo"
    assert world.append(world.bundle("vllm2.json", engine="vllm", key_id=2), "gw-vllm2", release=False) == 2
    # a release signed by another key, and a key entry naming it
    veil("release", "keygen", "--name", "releases.veil.example", "--out", str(world.tmp / "evil.key"))
    veil("release", "sign", str(world.tmp / "rel.txt"), "--key", str(world.tmp / "evil.key"), "--out",
         str(world.tmp / "evil.note"))
    veil("log", "append", "--dir", str(world.log_dir), str(world.tmp / "evil.note"))
    evil_hash = tlog.leaf_hash((world.tmp / "evil.note").read_bytes()).hex()
    good = world.bundle("good.json", key_id=3).read_bytes()
    key_config = Bundle.from_json(good).key_config
    evil_named = _craft(world, good, key_config=key_config, key_ids=(3,), release=evil_hash)
    # a key entry valid only from when no release is: judged then, no release admits it
    later = int(time.time()) + 200 * 86400
    named_later = _craft(world, good, key_config=key_config, key_ids=(3,), release=world.release_hash,
                         not_before=later)
    unnamed_later = _craft(world, good, key_config=key_config, key_ids=(3,), not_before=later + 1)

    rc, lines, out = world.monitor()
    assert rc == 4, out
    assert lines[1].startswith("ALERT entry 1: key entry of gw-vllm: evidence does not verify"), out
    assert "under release 'veil 1.0': gateway configuration engine" in lines[1] and '"vllm"' in lines[1], out
    assert lines[2].startswith("ALERT entry 2") and "gateway configuration engine" in lines[2], out
    assert lines[3].startswith("ALERT entry 3: release not signed by an expected publisher"), out
    assert lines[evil_named].startswith(f"ALERT entry {evil_named}:") and \
        "the release it names is not signed by an expected publisher" in lines[evil_named], out
    assert "the release it names, 'veil 1.0', is not valid at" in lines[named_later], out
    assert "no release of an expected publisher in the log is valid at" in lines[unnamed_later], out


def test_monitor_alerts_on_missing_altered_or_mismatched_evidence(world: World) -> None:
    missing, altered, kept = (world.bundle(f"gw{i}.json", key_id=i) for i in (1, 2, 3))
    assert [world.append(b, f"gw-{i}") for i, b in enumerate((missing, altered, kept), 1)] == [1, 2, 3]
    evidence = world.log_dir / "public" / "evidence"
    (evidence / hashlib.sha256(missing.read_bytes()).hexdigest()).unlink()
    (evidence / hashlib.sha256(altered.read_bytes()).hexdigest()).write_bytes(world.bundle("x.json").read_bytes())
    good = world.bundle("good.json", key_id=4).read_bytes()
    key_config = Bundle.from_json(good).key_config
    other_keys = _craft(world, good, key_config=encode_list([GatewayKey.generate(4).config]), key_ids=(4,))
    other_ids = _craft(world, good, key_config=key_config, key_ids=(5,))
    not_bundle = _craft(world, b'{"version": 2}', key_config=key_config, key_ids=(4,))
    huge = b"x" * (MAX_EVIDENCE_BYTES + 1)
    (evidence / hashlib.sha256(huge).hexdigest()).write_bytes(huge)  # store_evidence refuses it: placed by hand
    too_large = _craft(world, huge, key_config=key_config, key_ids=(4,), store=False)
    log = Log(world.log_dir)
    try:  # an entry that says it is a key entry and does not parse: an alert, and the monitor goes on
        malformed = log.append([b"veil/key/v1\n{not json"])[0]
    finally:
        log.close()

    rc, lines, out = world.monitor()
    assert rc == 4, out
    assert lines[1].startswith("ALERT entry 1: key entry of gw-1: evidence not available: evidence unreachable: "
                               "GET ") and "404" in lines[1], out
    assert lines[2].startswith("ALERT entry 2") and "does not match the entry: its SHA-256 is" in lines[2], out
    assert lines[3].startswith("entry 3: key configuration of gw-3") and "OK" in lines[3], out
    assert "binds another key configuration than key_config_sha256" in lines[other_keys], out
    assert "binds key ids [4], the entry names [5]" in lines[other_ids], out
    assert "is not an evidence bundle" in lines[not_bundle], out
    assert "evidence answer too large" in lines[too_large], out
    assert lines[malformed].startswith(f"ALERT entry {malformed}: malformed key entry: "), out

    # the log stores no evidence over the bound (nor logs its key entry)
    big = world.tmp / "big.json"
    big.write_bytes(huge)
    r = veil_run("log", "append", "--dir", str(world.log_dir), "--evidence", str(big), "--gateway", "gw-big", ok=False)
    assert r.returncode == 2 and f"at most {MAX_EVIDENCE_BYTES}" in r.stderr, r.stdout + r.stderr
