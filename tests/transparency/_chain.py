"""What the transparency-log chain tests share (``tests/transparency``, ``tests/integration``, ``tests/browser``): the
``veil`` command, plain GETs and the gateway's request count, a publisher's signed release with a fresh log, the wait
for a gateway's log proofs, and a chat the client's proxy refuses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from tests.harness import REPO, Proc
from transparency import CERT_KEY

ORIGIN = "log.veil.example/test"


def veil_run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``veil ARGS`` in the repository; asserts it succeeded unless ``ok`` is False."""
    r = subprocess.run([sys.executable, "-m", "veil_cli", *args], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def veil(*args: str) -> str:
    """The standard output of ``veil ARGS``, which must succeed."""
    return veil_run(*args).stdout


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        data: bytes = r.read()
        return data


def gateway_requests(base: str) -> float:
    """How many requests the gateway at ``base`` has answered (its metrics)."""
    text = get(base + "/metrics").decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("veil_gateway_requests_total{"))


def release_and_log(tmp: Path, release: str) -> tuple[str, str]:
    """In ``tmp``: a publisher's key (``pub.key``), the release ``release`` (simulated attestation, echo engine) it
    signed (``rel.txt``, ``rel.note``) and an empty log (``log/``, origin :data:`ORIGIN`). Returns the publisher's
    and the log's verifier keys."""
    policy = tmp / "release.toml"
    policy.write_text('platforms = ["simulated"]\n[config]\nrequire = { engine = "echo" }\n')
    pub = veil("release", "keygen", "--name", "releases.veil.example", "--out", str(tmp / "pub.key")).strip()
    veil("release", "create", "--name", release, "--policy", str(policy), "--out", str(tmp / "rel.txt"))
    veil("release", "sign", str(tmp / "rel.txt"), "--key", str(tmp / "pub.key"), "--out", str(tmp / "rel.note"))
    log_key = veil("log", "init", "--dir", str(tmp / "log"), "--origin", ORIGIN).strip()
    return pub, log_key


def wait_for_log_proofs(bundle_url: str, gw: Proc) -> None:
    """Until the gateway has read its key entry the relay may serve its bundle without proofs (at most a second)."""
    deadline = time.monotonic() + 60
    while CERT_KEY not in json.loads(get(bundle_url)).get("certs", {}):
        assert time.monotonic() < deadline, "the gateway never attached its log proofs:\n" + gw.log_tail()
        time.sleep(0.2)


def refused_chat(proxy_base: str, content: str) -> openai.APIStatusError:
    """The error of one chat through the ``veil proxy`` at ``proxy_base``, which must refuse it."""
    client = openai.OpenAI(base_url=proxy_base + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": content}])
    return err.value
