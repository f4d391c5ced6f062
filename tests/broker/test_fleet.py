"""The fleet end to end on loopback: a key broker, two gateway replicas that get their OHTTP key set *and* the
model key from it and load an encrypted model into tmpfs, one relay spreading over both, and the OpenAI SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import openai

from tests.integration.conftest import REPO, Proc, free_port, start_veil

from .conftest import BrokerFiles, BrokerProc, seal_with_cli, start_broker

MODEL_KEY_ID = "fleet-model-1"


def _veil(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "veil_cli", *args], cwd=REPO, check=True, capture_output=True)


def _keys_body(gw: Proc) -> bytes:
    with urllib.request.urlopen(gw.base + "/.well-known/ohttp-gateway", timeout=5) as r:
        body: bytes = r.read()
        return body


def test_broker_replicas_encrypted_model_relay_and_sdk(files: BrokerFiles, tmp_path: Path) -> None:
    # The model owner encrypts a model and hands the key to the broker (sealed); the plaintext key leaves no trace.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "dummy"}))
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    key_file = tmp_path / "model.key.json"
    _veil("model", "keygen", "--key-id", MODEL_KEY_ID, str(key_file))
    _veil("model", "encrypt", str(model), str(tmp_path / "model.enc"), "--key-file", str(key_file))
    resource = f"default/model-key/{MODEL_KEY_ID}"
    (files.dir / "model-key.sealed").write_bytes(seal_with_cli(files.kek_file, resource, key_file))
    key_file.unlink()

    extra = f'[resources."{resource}"]\npath = "model-key.sealed"\npolicy = "allow.toml"\n'
    broker: BrokerProc = start_broker(files.args("--insecure-allow-simulated", resources_extra=extra), free_port())
    procs: list[Proc] = [broker]
    try:
        gateways = []
        for _ in range(2):
            port = free_port()
            gateways.append(start_veil(
                ["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", "--key-broker", broker.base,
                 "--insecure-allow-simulated-broker", "--key-broker-policy", str(files.dir / "allow.toml"),
                 "--encrypted-model", str(tmp_path / "model.enc"),
                 "--model-tmpfs", "/dev/shm"], port, timeout=60))
            procs.append(gateways[-1])
        # Both replicas publish the same key configuration: clients cannot tell them apart.
        assert _keys_body(gateways[0]) == _keys_body(gateways[1])
        for gw in gateways:
            assert "model verified and decrypted" in gw.log()
        rp, pp = free_port(), free_port()
        urls = ",".join(f"{g.base}/.well-known/ohttp-gateway" for g in gateways)
        relay = start_veil(["relay", "--listen", f"127.0.0.1:{rp}", "--gateway", f"fleet={urls}",
                            "--health-interval", "0.5"], rp)
        procs.append(relay)
        proxy = start_veil(["proxy", "--listen", f"127.0.0.1:{pp}", "--relay", f"http://127.0.0.1:{rp}/fleet",
                            "--insecure-allow-simulated"], pp)
        procs.append(proxy)
        client = openai.OpenAI(base_url=proxy.base + "/v1", api_key="unused", max_retries=0)
        for i in range(6):
            r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"hello {i}"}])
            assert r.choices[0].message.content == f"hello {i}"
        # One replica dies: every later request still succeeds (the relay retries only what was never sent).
        gateways[0].popen.kill()
        gateways[0].popen.wait()
        for i in range(6):
            r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"after {i}"}])
            assert r.choices[0].message.content == f"after {i}"
        # The broker released the key set and the model key to each replica, and logged each release.
        released = [json.loads(line) for line in files.audit_lines()]
        assert sum(1 for e in released if e.get("resource") == resource and e.get("outcome") == "released") >= 2
    finally:
        for p in reversed(procs):
            p.stop()
            p.log_path.unlink(missing_ok=True)
