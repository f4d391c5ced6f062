"""``veil release publish`` as a publisher runs it (real processes): a release signed by the named publisher key,
well formed and unexpired, is appended to a log directory once (again: same index, nothing appended); another
key's release, an expired one, one whose policy clients cannot parse, and a log given by URL are refused and the
log is left as it was."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import tlog
from tests.helpers import REPO
from transparency import release_text
from transparency.log import Log

VEIL = [sys.executable, str(REPO / "veil_cli.py")]


def veil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VEIL, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def _size(log_dir: Path) -> int:
    log = Log(log_dir)
    try:
        return log.size()
    finally:
        log.close()


def _signed(tmp: Path, key: str, name: str, *create: str) -> Path:
    policy = tmp / "release.toml"
    policy.write_text('platforms = ["simulated"]\n[config]\nrequire = { engine = "echo" }\n')
    r = veil("release", "create", "--name", name, "--policy", str(policy), "--out", str(tmp / f"{name}.txt"), *create)
    assert r.returncode == 0, r.stderr
    r = veil("release", "sign", str(tmp / f"{name}.txt"), "--key", str(tmp / key), "--out", str(tmp / f"{name}.note"))
    assert r.returncode == 0, r.stderr
    return tmp / f"{name}.note"


def test_publish_to_a_log_directory(tmp_path: Path) -> None:
    r = veil("release", "keygen", "--name", "releases.veil.example", "--out", str(tmp_path / "pub.key"))
    assert r.returncode == 0, r.stderr
    vkey = r.stdout.strip()
    log_dir = tmp_path / "log"
    assert veil("log", "init", "--dir", str(log_dir), "--origin", "log.veil.example/t").returncode == 0
    assert veil("log", "append", "--dir", str(log_dir), "--evidence", str(_bundle(tmp_path)), "--gateway",
                "gw").returncode == 0

    note = _signed(tmp_path, "pub.key", "rel1")
    r = veil("release", "publish", str(note), "--log-dir", str(log_dir), "--publisher", vkey)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["index 1", "checkpoint size 2"]
    r = veil("release", "publish", str(note), "--log-dir", str(log_dir), "--publisher", vkey)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["index 1", "checkpoint size 2"] and "already in the log at index 1" in r.stderr
    assert _size(log_dir) == 2
    cp = tlog.open_checkpoint((log_dir / "public" / "checkpoint").read_bytes(),
                              tlog.parse_verifier_key((log_dir / "log.pub").read_text().strip()))
    assert cp.checkpoint.size == 2

    # signed by another key than the one named
    assert veil("release", "keygen", "--name", "releases.veil.example", "--out",
                str(tmp_path / "other.key")).returncode == 0
    other = _signed(tmp_path, "other.key", "rel2")
    r = veil("release", "publish", str(other), "--log-dir", str(log_dir), "--publisher", vkey)
    assert r.returncode == 2 and "not signed by a trusted publisher" in r.stderr and "--publisher" in r.stderr
    # expired: its window ended a day ago
    old = _signed(tmp_path, "pub.key", "rel3", "--not-before", str(int(time.time()) - 3 * 86400), "--days", "2")
    r = veil("release", "publish", str(old), "--log-dir", str(log_dir), "--publisher", vkey)
    assert r.returncode == 2 and "expired at" in r.stderr, r.stderr
    # signed by the publisher, but its policy is not one clients parse
    signer = tlog.Signer.parse((tmp_path / "pub.key").read_text())
    now = int(time.time())
    bad = tmp_path / "bad.note"
    bad.write_bytes(tlog.sign_note(release_text("bad", now, now + 86400, {"platforms": ["simulated"], "x": 1}),
                                   [signer]))
    r = veil("release", "publish", str(bad), "--log-dir", str(log_dir), "--publisher", vkey)
    assert r.returncode == 2 and "not one clients accept" in r.stderr, r.stderr
    # not a release at all
    r = veil("release", "publish", str(tmp_path / "rel1.txt"), "--log-dir", str(log_dir), "--publisher", vkey)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert _size(log_dir) == 2

    # a log known by its URL: only its operator appends
    r = veil("release", "publish", str(note), "--log-dir", "https://log.veil.example/t", "--publisher", vkey)
    assert r.returncode == 3 and "veil log append --dir DIR rel1.note" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = veil("release", "publish", str(note), "--log-dir", str(tmp_path / "nolog"), "--publisher", vkey)
    assert r.returncode == 2 and "veil log init" in r.stderr, r.stderr


def _bundle(tmp: Path) -> Path:
    from enclave.attestation import SimulatedProvider
    from ohttp import GatewayKey, encode_list

    bundle = SimulatedProvider().collect(encode_list([GatewayKey.generate(1).config]), config={"engine": "echo"})
    (tmp / "bundle.json").write_bytes(bundle.to_json())
    return tmp / "bundle.json"
