"""The commands end to end as a publisher and a log operator run them: ``veil release keygen|create|sign|show``,
``veil log init|append|serve|monitor`` (real processes; the log served over HTTP on loopback)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from enclave.attestation import SimulatedProvider
from ohttp import GatewayKey, encode_list
from tests.helpers import REPO

VEIL = [sys.executable, str(REPO / "veil_cli.py")]


def veil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VEIL, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_publisher_and_log_operator_flow(tmp_path: Path) -> None:
    policy = tmp_path / "release.toml"
    policy.write_text('platforms = ["simulated"]\n[config]\nrequire = { engine = "echo" }\n')
    r = veil("release", "keygen", "--name", "releases.veil.example", "--out", str(tmp_path / "pub.key"))
    assert r.returncode == 0, r.stderr
    pub_vkey = r.stdout.strip()
    assert veil("release", "create", "--name", "veil 1.0", "--policy", str(policy), "--out",
                str(tmp_path / "rel.txt")).returncode == 0
    r = veil("release", "sign", str(tmp_path / "rel.txt"), "--key", str(tmp_path / "pub.key"), "--out",
             str(tmp_path / "rel.note"))
    assert r.returncode == 0, r.stderr
    r = veil("release", "show", str(tmp_path / "rel.note"), "--publisher", pub_vkey)
    assert r.returncode == 0 and '"veil 1.0"' in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('platforms = ["simulated"]\n[config]\nrequire = { no_such_field = 1 }\n')
    r = veil("release", "create", "--name", "x", "--policy", str(bad), "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "no_such_field" in r.stderr

    log_dir = tmp_path / "log"
    r = veil("log", "init", "--dir", str(log_dir), "--origin", "log.veil.example/test")
    assert r.returncode == 0, r.stderr
    log_vkey = r.stdout.strip()
    bundle = SimulatedProvider().collect(encode_list([GatewayKey.generate(1).config]), config={"engine": "echo"})
    (tmp_path / "bundle.json").write_bytes(bundle.to_json())
    r = veil("log", "append", "--dir", str(log_dir), str(tmp_path / "rel.note"), "--evidence",
             str(tmp_path / "bundle.json"), "--gateway", "gw-1")
    assert r.returncode == 0 and r.stdout.split() == ["index", "0", "index", "1"], r.stderr

    port = 18000 + (hash(str(tmp_path)) % 2000)
    server = subprocess.Popen([*VEIL, "log", "serve", "--dir", str(log_dir), "--port", str(port)], cwd=REPO)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/checkpoint", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        # a client trusting only the publisher and the log accepts the logged gateway, and refuses an unlogged key
        attest = ["attest", "verify", "--publisher", pub_vkey, "--log", url, "--log-key", log_vkey, "--log-state",
                  str(tmp_path / "client.json"), "--insecure-allow-simulated"]
        r = veil(*attest, str(tmp_path / "bundle.json"))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "release: veil 1.0" in r.stdout and "index 1 of 2" in r.stdout
        unlogged = SimulatedProvider().collect(encode_list([GatewayKey.generate(2).config]), config={"engine": "echo"})
        (tmp_path / "unlogged.json").write_bytes(unlogged.to_json())
        r = veil(*attest, str(tmp_path / "unlogged.json"))
        assert r.returncode == 5 and "not in the log" in r.stderr, r.stdout + r.stderr
        r = veil(*attest[:5], "http://127.0.0.1:9/", *attest[6:], str(tmp_path / "bundle.json"))
        assert r.returncode == 5 and "unreachable" in r.stderr, r.stdout + r.stderr
        state = tmp_path / "monitor.json"
        r = veil("log", "monitor", "--log", url, "--log-key", log_vkey, "--publisher", pub_vkey, "--state",
                 str(state), "--once", "--insecure-allow-simulated")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "release 'veil 1.0'" in r.stdout and "consistent" in r.stdout
        # a release by another publisher is reported
        assert veil("release", "keygen", "--name", "releases.veil.example", "--out",
                    str(tmp_path / "evil.key")).returncode == 0
        assert veil("release", "sign", str(tmp_path / "rel.txt"), "--key", str(tmp_path / "evil.key"), "--out",
                    str(tmp_path / "evil.note")).returncode == 0
        assert veil("log", "append", "--dir", str(log_dir), str(tmp_path / "evil.note")).returncode == 0
        r = veil("log", "monitor", "--log", url, "--log-key", log_vkey, "--publisher", pub_vkey, "--state",
                 str(state), "--once", "--insecure-allow-simulated")
        assert r.returncode == 4 and "ALERT entry 2" in r.stdout
    finally:
        server.terminate()
        server.wait(10)
