"""``veil broker import``: a model key owner hands the key to an attested broker, which seals it with its own key.

A real broker process (simulated attestation; its sealing key is a test KEK here, the per-process key is tested
below without a process and the SEV-SNP derived key through an emulated device in test_sealing.py), its OHTTP key
set generated inside it, a memory-backed state directory; ``veil broker import`` and ``veil gateway`` as processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from enclave.attestation import SimulatedProvider
from enclave.broker.config import BrokerConfigError, load_resources
from enclave.broker.importer import token_hash, upload
from enclave.broker.policy import AttestationPolicy
from enclave.broker.sealing import seal
from enclave.kbs_client import KbsClient, KbsClientError, attest_broker
from enclave.ohttp_key_set import KeySetError, new_key_set, parse_key_set
from tests.integration.conftest import REPO, Proc, free_port

from .conftest import KEYSET, BrokerFiles, BrokerProc, make_broker_files, start_broker

pytestmark = pytest.mark.integration

MODEL = "veil/model-key/fleet-model-2"
LOCKED = "veil/model-key/locked"
TOKEN = b"0123456789abcdef" * 4


def veil(*args: str, check: bool = False, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_BROKER")}
    r = subprocess.run([sys.executable, "-m", "veil_cli", *args], cwd=REPO, capture_output=True, timeout=120,
                       input=stdin, env=clean)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr.decode())
    return r


@dataclass
class Site:
    """The broker and the owner's files: policies, token, model key, encrypted model."""

    files: BrokerFiles
    broker: BrokerProc
    state: Path
    token_file: Path
    key_file: Path
    model_enc: Path

    def audit(self) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.files.audit_lines()]

    def import_args(self, *extra: str, policy: str = "allow.toml", resource: str = MODEL,
                    key_file: Path | None = None, token_file: Path | None = None) -> list[str]:
        return ["broker", "import", "--broker", self.broker.base, "--broker-policy", str(self.files.dir / policy),
                "--resource", resource, "--secret-file", str(key_file or self.key_file),
                "--admin-token-file", str(token_file or self.token_file), *extra]


def resources_toml(token_sha256: str, *, locked: bool = True) -> str:
    table = (f'[resources."{KEYSET}"]\npath = "keyset.sealed"\npolicy = "allow.toml"\ngenerate = "ohttp-keyset"\n'
            f'[resources."{MODEL}"]\npath = "model.sealed"\npolicy = "allow.toml"\nimport = "model-key"\n'
            f'import-token-sha256 = "{token_sha256}"\n'
            f'[resources."{LOCKED}"]\npath = "locked.sealed"\npolicy = "allow.toml"\n')
    return table if locked else table.split(f'[resources."{LOCKED}"]')[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("import")
    files = make_broker_files(root / "broker")
    (files.dir / "keyset.sealed").unlink()
    token_file = root / "owner" / "import.token"
    token_file.parent.mkdir()
    out = veil("broker", "import", "--admin-token-file", str(token_file), "--print-token-hash", check=True)
    line = out.stdout.decode().strip()
    assert line == f'import-token-sha256 = "{token_hash(token_file.read_bytes().strip())}"'
    (files.dir / "resources.toml").write_text(resources_toml(line.split('"')[1]))
    state = Path("/dev/shm") / f"veil-broker-state-{os.getpid()}-{free_port()}"
    state.mkdir(mode=0o700)
    # A resource without import: sealed offline (simulated attestation with a test KEK only).
    kek = bytes.fromhex(files.kek_file.read_text())
    (state / "locked.sealed").write_bytes(seal(kek, LOCKED, b'{"key_id": "locked", "key": "' + b"22" * 32 + b'"}'))
    # The owner's side: a model key and the model encrypted under it.
    key_file = token_file.parent / "model-key.json"
    model = root / "owner" / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "dummy"}))
    (model / "weights.bin").write_bytes(os.urandom(1 << 16))
    veil("model", "keygen", "--key-id", MODEL.rsplit("/", 1)[1], str(key_file), check=True)
    veil("model", "encrypt", str(model), str(root / "owner" / "model.enc"), "--key-file", str(key_file), check=True)
    broker = start_broker(["--resources", str(files.dir / "resources.toml"), "--state-dir", str(state),
                           "--audit-log", str(files.audit), "--insecure-allow-simulated", "--kek-file",
                           str(files.kek_file), "--evidence-burst", "40"], free_port())
    try:
        yield Site(files, broker, state, token_file, key_file, root / "owner" / "model.enc")
    finally:
        broker.stop()
        broker.log_path.unlink(missing_ok=True)
        for p in state.iterdir():
            p.unlink()
        state.rmdir()


def _model_key_from_broker(site: Site) -> bytes:
    async def go() -> bytes:
        pin, _ = await attest_broker(site.broker.base, AttestationPolicy.load(site.files.dir / "allow.toml"),
                                     allow_simulated=True)
        async with KbsClient(site.broker.base, SimulatedProvider(), ssl=pin) as c:
            return await c.get_resource(MODEL)

    return asyncio.run(go())


# ------------------------------------------------------------------------------------------------------------------


def test_token_file_is_made_private_and_short_tokens_are_refused(site: Site, tmp_path: Path) -> None:
    assert stat.S_IMODE(site.token_file.stat().st_mode) == 0o600
    assert len(site.token_file.read_bytes().strip()) == 64
    # An existing file is never overwritten: the same hash again.
    again = veil("broker", "import", "--admin-token-file", str(site.token_file), "--print-token-hash", check=True)
    assert token_hash(site.token_file.read_bytes().strip()) in again.stdout.decode()
    short = tmp_path / "short.token"
    short.write_text("hunter2\n")
    r = veil("broker", "import", "--admin-token-file", str(short), "--print-token-hash")
    assert r.returncode != 0 and b"at least 32" in r.stderr


def test_imported_model_key_is_sealed_audited_and_released_to_an_attested_gateway(
        site: Site, veil_process: Callable[..., Proc]) -> None:
    def gateway_args(port: int) -> list[str]:
        return ["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", "--key-broker", site.broker.base,
                "--key-broker-policy", str(site.files.dir / "allow.toml"), "--insecure-allow-simulated-broker",
                "--encrypted-model", str(site.model_enc), "--model-key-repo", MODEL.split("/")[0],
                "--model-tmpfs", "/dev/shm"]

    # Before the import, a gateway stops with the reason (and Kubernetes would restart it until the key is there).
    port = free_port()
    with pytest.raises(RuntimeError, match="404 InvalidRequestPath: resource veil/model-key/fleet-model-2 has not "
                                           "been imported yet"):
        veil_process(gateway_args(port), port, timeout=60)
    before = len(site.audit())
    r = veil(*site.import_args("--insecure-allow-simulated-broker"), check=True)
    out = r.stdout.decode()
    assert out.startswith(f"imported {MODEL} at {site.broker.base} (attested broker, measurement ")
    assert "sealed with an operator KEK (simulated attestation only)" in out
    # Sealed at rest in the state directory; the key appears in no file there and in no audit line.
    key_hex = orjson.loads(site.key_file.read_bytes())["key"]
    sealed = (site.state / "model.sealed").read_bytes()
    assert orjson.loads(sealed)["resource"] == MODEL and stat.S_IMODE((site.state / "model.sealed").stat().st_mode) \
        == 0o600
    for p in site.state.iterdir():
        assert key_hex.encode() not in p.read_bytes() and bytes.fromhex(key_hex) not in p.read_bytes()
    lines = site.audit()[before:]
    assert [(x["event"], x["resource"], x["outcome"], x["reason"]) for x in lines] == \
        [("import", MODEL, "imported", "new")]
    assert lines[0]["session"] is None and key_hex not in site.files.audit.read_text()
    assert site.token_file.read_text().strip() not in site.files.audit.read_text()
    assert site.token_file.read_text().strip() not in site.broker.log()
    # A gateway that attests gets the key from the broker and decrypts the owner's model with it.
    port = free_port()
    gw = veil_process(gateway_args(port), port, timeout=60)
    assert "model verified and decrypted" in gw.log()
    released = [x for x in site.audit()[before:] if x["event"] == "resource" and x["outcome"] == "released"]
    assert {x["resource"] for x in released} == {KEYSET, MODEL}


def test_a_second_import_replaces_the_key(site: Site, tmp_path: Path) -> None:
    new = tmp_path / "new.json"
    veil("model", "keygen", "--key-id", MODEL.rsplit("/", 1)[1], str(new), check=True)
    before = len(site.audit())
    r = veil(*site.import_args("--insecure-allow-simulated-broker", key_file=new), check=True)
    assert r.stdout.decode().startswith(f"replaced {MODEL}")
    assert [(x["outcome"], x["reason"]) for x in site.audit()[before:]] == [("imported", "replaced the earlier secret")]
    assert orjson.loads(_model_key_from_broker(site)) == orjson.loads(new.read_bytes())
    veil(*site.import_args("--insecure-allow-simulated-broker"), check=True)  # back to the model's key
    assert orjson.loads(_model_key_from_broker(site)) == orjson.loads(site.key_file.read_bytes())


@pytest.mark.parametrize(("extra", "policy", "why"), [
    (["--insecure-allow-simulated-broker"], "deny.toml", "failed attestation(.|\n)*measurement"),
    ([], "allow.toml", "failed attestation(.|\n)*(SIMULATED|simulated)"),
])
def test_import_refuses_a_broker_whose_evidence_fails_the_policy(site: Site, extra: list[str], policy: str,
                                                                 why: str) -> None:
    """A substituted broker (another measurement than the policy names, or simulated evidence without the opt-in)
    never sees the key: the import stops before sending anything."""
    before = len(site.audit())
    sealed = (site.state / "model.sealed").read_bytes() if (site.state / "model.sealed").exists() else None
    r = veil(*site.import_args(*extra, policy=policy))
    assert r.returncode != 0 and re.search(why, r.stderr.decode()), r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()
    assert [x for x in site.audit()[before:] if x["event"] == "import"] == []
    now = (site.state / "model.sealed").read_bytes() if (site.state / "model.sealed").exists() else None
    assert now == sealed


async def test_the_upload_goes_only_to_the_attested_broker(site: Site, tmp_path: Path) -> None:
    """Evidence verified at one broker, a connection to another (a man in the middle relaying the real broker's
    evidence): the pinned connection fails before the key is sent."""
    other_files = make_broker_files(tmp_path / "other")
    other_files.dir.joinpath("resources.toml").write_text(resources_toml(token_hash(TOKEN), locked=False))
    (other_files.dir / "keyset.sealed").unlink()
    other = start_broker(["--resources", str(other_files.dir / "resources.toml"), "--audit-log",
                          str(other_files.audit), "--insecure-allow-simulated"], free_port(),
                         env={"VEIL_BROKER_KEK": "", "VEIL_BROKER_KEK_FILE": ""})
    try:
        pin, _ = await attest_broker(site.broker.base, AttestationPolicy.load(site.files.dir / "allow.toml"),
                                     allow_simulated=True)
        with pytest.raises(KbsClientError, match="not the one its evidence binds.*nothing was sent"):
            await upload(other.base, MODEL, site.key_file.read_bytes(), TOKEN, ssl=pin)
        assert other_files.audit_lines() == [] and not (other_files.dir / "model.sealed").exists()
    finally:
        other.stop()
        other.log_path.unlink(missing_ok=True)


def test_wrong_or_missing_token_is_refused(site: Site, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text(os.urandom(32).hex())
    before = len(site.audit())
    sealed = (site.state / "model.sealed").read_bytes() if (site.state / "model.sealed").exists() else None
    r = veil(*site.import_args("--insecure-allow-simulated-broker", token_file=wrong))
    assert r.returncode != 0 and "401 TokenVerifierError" in r.stderr.decode(), r.stderr.decode()
    lines = site.audit()[before:]
    assert [(x["event"], x["resource"], x["outcome"], x["reason"]) for x in lines] == \
        [("import", MODEL, "refused", "import token missing or wrong")]
    assert wrong.read_text() not in site.files.audit.read_text()
    now = (site.state / "model.sealed").read_bytes() if (site.state / "model.sealed").exists() else None
    assert now == sealed


async def _raw_post(site: Site, resource: str, body: bytes, token: bytes | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token.decode()}"} if token is not None else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as s, \
            s.post(f"{site.broker.base}/kbs/v0/resource/{resource}", data=body, headers=headers) as r:
        return r.status, orjson.loads(await r.read())


async def test_the_key_set_and_other_resources_cannot_be_imported(site: Site) -> None:
    token = site.token_file.read_bytes().strip()
    keyset = new_key_set()
    before = len(site.audit())
    generated = (site.state / "keyset.sealed").read_bytes()
    # The generated key set: refused whatever the token (there is none for it).
    for t in (token, None):
        status, obj = await _raw_post(site, KEYSET, keyset, t)
        assert status == 403 and "generated inside the broker" in obj["detail"]
    # A resource without import = "model-key", and one that does not exist.
    status, obj = await _raw_post(site, LOCKED, site.key_file.read_bytes(), token)
    assert status == 403 and "takes no imports" in obj["detail"]
    status, obj = await _raw_post(site, "veil/model-key/nope", site.key_file.read_bytes(), token)
    assert status == 404
    # The importable resource takes only a model key file for its own key id: never a key set, whatever the token.
    for body, why in [(keyset, "not a model key file"), (b"not json", "not JSON"),
                      (orjson.dumps({"key_id": "other", "key": "00" * 32}), "key_id must be 'fleet-model-2'"),
                      (orjson.dumps({"key_id": "fleet-model-2", "key": "00" * 31}), "64 hex"),
                      (orjson.dumps({"key_id": "fleet-model-2", "key": "00" * 32, "seed": "00" * 32}), "exactly")]:
        status, obj = await _raw_post(site, MODEL, body, token)
        assert status == 400 and why in obj["detail"], (status, obj)
    status, obj = await _raw_post(site, MODEL, b"x" * (64 * 1024 + 1), token)
    assert status == 413
    assert (site.state / "keyset.sealed").read_bytes() == generated
    lines = [x for x in site.audit()[before:] if x["event"] == "import"]
    assert [x["outcome"] for x in lines] == ["refused"] * len(lines) and len(lines) == 10
    # Nothing the model key resource can hold ever passes for a key set.
    with pytest.raises(KeySetError):
        parse_key_set(site.key_file.read_bytes())


def test_resource_table_import_rules(tmp_path: Path) -> None:
    files = make_broker_files(tmp_path / "b")
    kek = bytes.fromhex(files.kek_file.read_text())
    table = files.dir / "resources.toml"
    good = token_hash(TOKEN)
    for body, why in [
        (f'import = "model-key"\nimport-token-sha256 = "{good}"\ngenerate = "ohttp-keyset"\n', "exclude each other"),
        ('import = "model-key"\n', "needs import-token-sha256"),
        ('import = "model-key"\nimport-token-sha256 = "abcd"\n', "64 hex"),
        (f'import = "ohttp-keyset"\nimport-token-sha256 = "{good}"\n', "only ever generated inside"),
        (f'import-token-sha256 = "{good}"\n', "without import"),
    ]:
        table.write_text(f'[resources."{MODEL}"]\npath = "m.sealed"\npolicy = "allow.toml"\n{body}')
        with pytest.raises(BrokerConfigError, match=why):
            load_resources(table, kek)
    table.write_text(f'[resources."{KEYSET}"]\npath = "same.sealed"\npolicy = "allow.toml"\ngenerate = '
                     f'"ohttp-keyset"\n[resources."{MODEL}"]\npath = "same.sealed"\npolicy = "allow.toml"\n'
                     f'import = "model-key"\nimport-token-sha256 = "{good}"\n')
    (tmp_path / "s0").mkdir()
    with pytest.raises(BrokerConfigError, match="is default/ohttp/keyset's too"):
        load_resources(table, kek, state_dir=tmp_path / "s0")


def test_imports_live_in_the_state_dir_and_a_new_process_key_drops_them(tmp_path: Path) -> None:
    files = make_broker_files(tmp_path / "b")
    (files.dir / "keyset.sealed").unlink()
    table = files.dir / "resources.toml"
    table.write_text(resources_toml(token_hash(TOKEN), locked=False))
    state = tmp_path / "state"
    state.mkdir()
    first = os.urandom(32)
    res = load_resources(table, first, ephemeral=True, state_dir=state)
    assert res[KEYSET].sealed_file == state / "keyset.sealed" and (state / "keyset.sealed").exists()
    assert res[MODEL].sealed_file == state / "model.sealed" and not (state / "model.sealed").exists()
    assert not (files.dir / "keyset.sealed").exists()
    res[MODEL].store(first, b'{"key_id":"fleet-model-2","key":"' + b"11" * 32 + b'"}')
    assert res[MODEL].read(first).startswith(b'{"key_id"')
    # The next process (TDX, Azure, Nitro, simulated without a KEK) has another key: the import is gone, the key set
    # made again.
    again = load_resources(table, os.urandom(32), ephemeral=True, state_dir=state)
    assert not (state / "model.sealed").exists() and MODEL in again
    # A state directory that cannot be written is refused at start, saying so.
    with pytest.raises(BrokerConfigError, match="writable --state-dir"):
        load_resources(table, os.urandom(32), ephemeral=True, state_dir=tmp_path / "missing")
