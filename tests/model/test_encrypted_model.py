"""Encrypted models: the format round-trips, every kind of tampering is refused with a clear error, and the gateway
loads an intact model into tmpfs and refuses to serve a bad one (exits non-zero with the reason)."""

from __future__ import annotations

import base64
import filecmp
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave.model import (
    MANIFEST_NAME,
    ModelError,
    ModelIntegrityError,
    ModelKey,
    ModelKeyError,
    decrypt_model,
    decrypt_to_memory,
    encrypt_model,
    filesystem_of,
    is_memory_backed,
    key_file_source,
    load_key_file,
    read_manifest,
    write_key_file,
)
from enclave.model.container import TAG_BYTES
from tests.integration.conftest import REPO, free_port, start_veil

CHUNK = 1024
MODEL_DIR = Path.home() / ".cache" / "veil" / "models" / "SmolLM2-135M-Instruct"
SECRET = b"the-plaintext-marker-1234567890"


def small_model(root: Path) -> Path:
    """A model directory in the Hugging Face layout: weights over many chunks, small files, an empty and a nested one."""
    d = root / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "note": SECRET.decode()}))
    (d / "tokenizer.json").write_bytes(os.urandom(3 * CHUNK + 17))
    (d / "model.safetensors").write_bytes(SECRET + os.urandom(10 * CHUNK - len(SECRET)))  # exactly 10 chunks
    (d / "empty.txt").write_bytes(b"")
    (d / "sub" / "extra.bin").write_bytes(os.urandom(CHUNK - 1))
    (d / "generation_config.json").write_bytes(os.urandom(CHUNK - 1))  # as long as sub/extra.bin
    return d


@pytest.fixture
def key() -> ModelKey:
    return ModelKey.generate("test-model-key")


@pytest.fixture
def key_file(tmp_path: Path, key: ModelKey) -> Path:
    path = tmp_path / "model-key.json"
    write_key_file(path, key)
    return path


@pytest.fixture
def encrypted(tmp_path: Path, key: ModelKey) -> tuple[Path, Path]:
    """(plaintext model dir, encrypted dir) with 1 KiB chunks."""
    src = small_model(tmp_path)
    enc = tmp_path / "enc"
    encrypt_model(src, enc, key, chunk_size=CHUNK)
    return src, enc


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def blob_of(enc: Path, key: ModelKey, name: str) -> Path:
    manifest, _ = read_manifest(enc, lambda _kid: key.key)
    return enc / next(f.blob for f in manifest.files if f.name == name)


# ------------------------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_small_directory(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    src, enc = encrypted
    out = tmp_path / "out"
    stats = decrypt_model(enc, out, lambda kid: key.key, threads=3)
    assert same_tree(src, out)
    names = [f.name for f in stats.manifest.files]
    assert names == sorted(["config.json", "tokenizer.json", "model.safetensors", "empty.txt", "sub/extra.bin",
                            "generation_config.json"])
    by_name = {f.name: f for f in stats.manifest.files}
    assert by_name["model.safetensors"].chunks == 10 and by_name["empty.txt"].chunks == 1
    assert by_name["config.json"].sha256 == hashlib.sha256((src / "config.json").read_bytes()).hexdigest()
    # Nothing of the plaintext, not even file names or hashes, is readable in the encrypted directory.
    for p in enc.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert SECRET not in data and b"safetensors" not in data and by_name["config.json"].sha256.encode() not in data
    # Every encryption is fresh: same model, same key, different ciphertext and manifest id.
    enc2 = tmp_path / "enc2"
    m2 = encrypt_model(src, enc2, key, chunk_size=CHUNK)
    assert m2.manifest_id != stats.manifest.manifest_id
    assert (enc2 / "blobs" / "00000.bin").read_bytes() != (enc / "blobs" / "00000.bin").read_bytes()


def test_round_trip_of_the_real_smollm2_directory(tmp_path: Path, key: ModelKey) -> None:
    if not (MODEL_DIR / "model.safetensors").is_file():
        pytest.fail("SmolLM2 is not set up: run ./scripts/setup-engine (./scripts/test does it for you)")
    enc = tmp_path / "smollm2.enc"
    manifest = encrypt_model(MODEL_DIR, enc, key)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {f.name for f in manifest.files}
    shm = Path(tempfile.mkdtemp(prefix="veil-test-", dir="/dev/shm"))
    try:
        stats = decrypt_model(enc, shm / "out", lambda kid: key.key)
        assert stats.manifest.total_bytes > 250_000_000
        assert same_tree(MODEL_DIR, shm / "out")
    finally:
        shutil.rmtree(shm)


# ------------------------------------------------------------------------------------------------------------------
# Refusals: every one says what is wrong, and leaves no plaintext behind


def refused(enc: Path, out: Path, source: object, exc: type[Exception], *words: str) -> str:
    with pytest.raises(exc) as err:
        decrypt_model(enc, out, source)  # type: ignore[arg-type]
    msg = str(err.value)
    for w in words:
        assert w in msg, msg
    assert not out.exists() or not any(out.iterdir()), "partial plaintext left behind"
    return msg


def test_tampered_chunk(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    blob = blob_of(enc, key, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[3 * (CHUNK + TAG_BYTES) + 100] ^= 1
    blob.write_bytes(bytes(data))
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "model.safetensors", "chunk 3",
            "failed authentication")


def test_tampered_tag_of_the_empty_file(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    blob = blob_of(enc, key, "empty.txt")
    data = bytearray(blob.read_bytes())
    assert len(data) == TAG_BYTES
    data[0] ^= 0x80
    blob.write_bytes(bytes(data))
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "empty.txt", "chunk 0")


def test_reordered_chunks(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    blob = blob_of(enc, key, "model.safetensors")
    data = blob.read_bytes()
    c = CHUNK + TAG_BYTES
    blob.write_bytes(data[:c] + data[2 * c:3 * c] + data[c:2 * c] + data[3 * c:])
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "model.safetensors", "chunk 1")


def test_blobs_swapped_between_files(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    a, b = blob_of(enc, key, "generation_config.json"), blob_of(enc, key, "sub/extra.bin")
    assert a.stat().st_size == b.stat().st_size  # so only the binding (name in the AAD, nonce prefix) can catch it
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "generation_config.json", "chunk 0",
            "failed authentication")


def test_truncated_file(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    blob = blob_of(enc, key, "model.safetensors")
    data = blob.read_bytes()
    blob.write_bytes(data[: -(CHUNK + TAG_BYTES)])  # the whole final chunk dropped
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "model.safetensors", "truncated")
    blob.write_bytes(data[:-1])
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "truncated")
    blob.write_bytes(data + b"extra")
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "appended")
    blob.unlink()
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "model.safetensors", "missing")


def test_wrong_key(tmp_path: Path, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    other = ModelKey.generate("test-model-key")  # same id, different key
    refused(enc, tmp_path / "out", lambda kid: other.key, ModelKeyError, "wrong model key", "test-model-key")


def test_key_file_with_another_key_id(tmp_path: Path, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    path = tmp_path / "other.json"
    write_key_file(path, ModelKey.generate("someone-elses-key"))
    refused(enc, tmp_path / "out", key_file_source(path), ModelKeyError, "test-model-key", "someone-elses-key")


def test_key_source_failure_is_reported(tmp_path: Path, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted

    def broker(key_id: str) -> bytes:
        raise ConnectionError("broker unreachable")

    refused(enc, tmp_path / "out", broker, ModelKeyError, "test-model-key", "broker unreachable")


def test_manifest_tampering(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    _, enc = encrypted
    path = enc / MANIFEST_NAME
    original = json.loads(path.read_text())
    out = tmp_path / "out"
    anyid = lambda kid: key.key  # a key source that does not check the key id

    sealed = bytearray(base64.b64decode(original["manifest"]))
    sealed[10] ^= 1
    path.write_text(json.dumps({**original, "manifest": base64.b64encode(bytes(sealed)).decode()}))
    refused(enc, out, anyid, ModelIntegrityError, "manifest failed authentication")

    path.write_text(json.dumps({**original, "key_id": "renamed-key"}))  # header fields are the sealed body's AAD
    refused(enc, out, anyid, ModelIntegrityError, "manifest failed authentication")

    path.write_text(json.dumps({**original, "manifest_id": "00" * 16}))
    refused(enc, out, anyid, ModelKeyError, "wrong model key")

    path.write_text(json.dumps({**original, "cipher": "AES-128-CTR"}))
    refused(enc, out, anyid, ModelIntegrityError, "unsupported")

    path.write_text("{not json")
    refused(enc, out, anyid, ModelIntegrityError, "not a Veil model manifest")

    path.unlink()
    refused(enc, out, anyid, ModelError, "missing")


def test_manifest_of_another_encryption_is_refused(tmp_path: Path, key: ModelKey,
                                                   encrypted: tuple[Path, Path]) -> None:
    src, enc = encrypted
    enc2 = tmp_path / "enc2"
    encrypt_model(src, enc2, key, chunk_size=CHUNK)  # same files, same key, another manifest id
    shutil.copyfile(enc2 / MANIFEST_NAME, enc / MANIFEST_NAME)
    refused(enc, tmp_path / "out", lambda kid: key.key, ModelIntegrityError, "chunk 0", "failed authentication")


def test_refusals_of_bad_inputs(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    src, enc = encrypted
    with pytest.raises(ModelError, match="not found"):
        encrypt_model(tmp_path / "nope", tmp_path / "x", key)
    with pytest.raises(ModelError, match="not an empty directory"):
        encrypt_model(src, enc, key)
    with pytest.raises(ModelError, match="encrypted model already"):
        encrypt_model(enc, tmp_path / "again", key)
    with pytest.raises(ModelError, match="not an encrypted model"):
        decrypt_model(src, tmp_path / "o", lambda kid: key.key)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(ModelError, match="not an empty directory"):
        decrypt_model(enc, tmp_path / "busy", lambda kid: key.key)


def test_key_files(tmp_path: Path, key: ModelKey) -> None:
    path = tmp_path / "k.json"
    write_key_file(path, key)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = load_key_file(path)
    assert loaded == key and "key=<32 bytes>" in repr(loaded) and key.key.hex() not in repr(loaded)
    with pytest.raises(ModelKeyError, match="exists already"):
        write_key_file(path, key)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"key_id": "k", "key": "00" * 16}))
    with pytest.raises(ModelKeyError, match="32 bytes"):
        load_key_file(bad)
    bad.write_text(json.dumps({"key_id": "../etc", "key": "00" * 32}))
    with pytest.raises(ModelKeyError, match="key id"):
        load_key_file(bad)


# ------------------------------------------------------------------------------------------------------------------
# Where plaintext may go


def test_mount_table_lookup(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\ntmpfs /run/models\\040x tmpfs rw 0 0\n"
                      "/dev/vdb /run/models\\040x/disk xfs rw 0 0\n")
    assert filesystem_of("/dev/shm/a/b", str(mounts)) == ("/dev/shm", "tmpfs")
    assert filesystem_of("/run/models x/m", str(mounts)) == ("/run/models x", "tmpfs")
    assert filesystem_of("/run/models x/disk/m", str(mounts)) == ("/run/models x/disk", "xfs")
    assert filesystem_of("/dev/shmx", str(mounts)) == ("/", "ext4")
    assert not is_memory_backed("/var/lib", str(mounts))


def test_decrypt_to_memory_refuses_a_disk(tmp_path: Path, key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    src, enc = encrypted
    if is_memory_backed(tmp_path):
        pytest.fail(f"{tmp_path} is on tmpfs; this test needs a disk-backed temporary directory")
    with pytest.raises(ModelError, match="refusing to decrypt the model to .* persist"):
        decrypt_to_memory(str(enc), lambda kid: key.key, tmpfs=str(tmp_path))
    model = decrypt_to_memory(str(enc), lambda kid: key.key, tmpfs=str(tmp_path), allow_disk=True)
    assert same_tree(src, model.path)
    model.remove()
    assert not model.path.exists()


def test_decrypt_to_memory_in_dev_shm(key: ModelKey, encrypted: tuple[Path, Path]) -> None:
    src, enc = encrypted
    assert is_memory_backed("/dev/shm"), "/dev/shm is expected to be a tmpfs here"
    model = decrypt_to_memory(str(enc), lambda kid: key.key)
    try:
        assert model.path.parent == Path("/dev/shm") and os.stat(model.path).st_mode & 0o777 == 0o700
        assert same_tree(src, model.path)
    finally:
        model.remove()


# ------------------------------------------------------------------------------------------------------------------
# The command line: veil model ...


def veil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "veil_cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_encrypt_decrypt(tmp_path: Path) -> None:
    src = small_model(tmp_path)
    kf = tmp_path / "new-key.json"
    r = veil("model", "encrypt", str(src), str(tmp_path / "enc"), "--key-file", str(kf), "--key-id", "cli-key",
             "--chunk-size", "2048")
    assert r.returncode == 0, r.stderr
    assert "created model key file" in r.stdout and load_key_file(kf).key_id == "cli-key"
    r = veil("model", "decrypt", str(tmp_path / "enc"), str(tmp_path / "out"), "--key-file", str(kf))
    assert r.returncode == 0, r.stderr
    assert "verified and decrypted 6 files" in r.stdout
    assert same_tree(src, tmp_path / "out")
    # A key id that does not match the existing key file is refused.
    r = veil("model", "encrypt", str(src), str(tmp_path / "enc2"), "--key-file", str(kf), "--key-id", "other")
    assert r.returncode == 1 and "holds key id 'cli-key'" in r.stderr
    # A tampered model: exit 1 and the reason.
    blob = tmp_path / "enc" / "blobs" / "00002.bin"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    r = veil("model", "decrypt", str(tmp_path / "enc"), str(tmp_path / "out2"), "--key-file", str(kf))
    assert r.returncode == 1 and "failed authentication" in r.stderr
    r = veil("model", "keygen", str(tmp_path / "k2.json"), "--key-id", "fresh")
    assert r.returncode == 0 and load_key_file(tmp_path / "k2.json").key_id == "fresh"


# ------------------------------------------------------------------------------------------------------------------
# The gateway: --encrypted-model (echo engine: load, verify, then serve)


@pytest.fixture
def shm_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="veil-test-tmpfs-", dir="/dev/shm"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def gateway_args(port: int, enc: Path, key_file: Path, tmpfs: Path) -> list[str]:
    return ["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", "--encrypted-model", str(enc),
            "--model-key-file", str(key_file), "--model-tmpfs", str(tmpfs)]


def refuses_to_serve(args: list[str], port: int) -> str:
    """The gateway exits non-zero before it ever listens; returns what it printed."""
    r = subprocess.run([sys.executable, "-m", "veil_cli", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
    return r.stdout + r.stderr


@pytest.mark.integration
def test_gateway_serves_an_intact_encrypted_model(key_file: Path, encrypted: tuple[Path, Path],
                                                  shm_root: Path) -> None:
    src, enc = encrypted
    port = free_port()
    proc = start_veil(gateway_args(port, enc, key_file, shm_root), port)
    try:
        with urllib.request.urlopen(proc.base + "/healthz", timeout=5) as r:
            assert r.status == 200
        loaded = list(shm_root.iterdir())
        assert len(loaded) == 1 and same_tree(src, loaded[0])
        assert "model verified and decrypted" in proc.log()
    finally:
        proc.stop()
        proc.log_path.unlink(missing_ok=True)
    assert list(shm_root.iterdir()) == [], "the decrypted model must be removed when the gateway stops"


@pytest.mark.integration
def test_gateway_refuses_a_tampered_model(key: ModelKey, key_file: Path, encrypted: tuple[Path, Path],
                                          shm_root: Path) -> None:
    _, enc = encrypted
    blob = blob_of(enc, key, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[5 * (CHUNK + TAG_BYTES) + 7] ^= 0x10
    blob.write_bytes(bytes(data))
    port = free_port()
    out = refuses_to_serve(gateway_args(port, enc, key_file, shm_root), port)
    assert "cannot load the encrypted model" in out and "model.safetensors: chunk 5" in out
    assert list(shm_root.iterdir()) == [], "no plaintext may stay behind"


@pytest.mark.integration
def test_gateway_refuses_wrong_key_truncation_and_disk(tmp_path: Path, key_file: Path, encrypted: tuple[Path, Path],
                                                       shm_root: Path, key: ModelKey) -> None:
    _, enc = encrypted
    port = free_port()
    wrong = tmp_path / "wrong.json"
    write_key_file(wrong, ModelKey.generate(key.key_id))
    assert "wrong model key" in refuses_to_serve(gateway_args(port, enc, wrong, shm_root), port)
    out = refuses_to_serve(gateway_args(port, enc, key_file, tmp_path), port)  # tmp_path is on disk
    assert "refusing to decrypt the model" in out and "--model-tmpfs" in out
    out = refuses_to_serve(gateway_args(port, enc, key_file, shm_root)[:-4], port)
    assert "--encrypted-model needs --model-key-file" in out
    blob = blob_of(enc, key, "tokenizer.json")
    blob.write_bytes(blob.read_bytes()[:-5])
    out = refuses_to_serve(gateway_args(port, enc, key_file, shm_root), port)
    assert "tokenizer.json" in out and "truncated" in out
    assert list(shm_root.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# The real engine on a decrypted model


ENGINE_PYTHON = REPO / ".venv-engine" / "bin" / "python"


@pytest.mark.integration
@pytest.mark.vllm
async def test_vllm_serves_the_encrypted_smollm2(tmp_path: Path, key: ModelKey, key_file: Path,
                                                 shm_root: Path) -> None:
    import orjson

    from proxy import OhttpClient
    from proxy.verify import make_verifier

    if not ENGINE_PYTHON.exists() or not (MODEL_DIR / "model.safetensors").is_file():
        pytest.fail("the vLLM engine is not set up: run ./scripts/setup-engine (./scripts/test does it for you)")
    enc = tmp_path / "smollm2.enc"
    encrypt_model(MODEL_DIR, enc, key)
    port = free_port()
    proc = start_veil(["gateway", "--engine", "vllm", "--listen", f"127.0.0.1:{port}", "--engine-python",
                       str(ENGINE_PYTHON), "--encrypted-model", str(enc), "--model-key-file", str(key_file),
                       "--model-tmpfs", str(shm_root)], port, timeout=300)
    try:
        (loaded,) = shm_root.iterdir()
        assert f"'model': '{loaded}'" in proc.log() or str(loaded) in proc.log()  # vLLM runs on the tmpfs copy
        base = proc.base + "/.well-known/"
        client = OhttpClient(base + "ohttp-gateway", keys_url=base + "ohttp-gateway",
                             attestation_url=base + "veil-attestation", verifier=make_verifier(allow_simulated=True))
        try:
            body = orjson.dumps({"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 30,
                                 "messages": [{"role": "user", "content": "What is the capital of France?"}]})
            r = await client.request("POST", "/v1/chat/completions", [("content-type", "application/json")], body)
        finally:
            await client.close()
        assert r.status == 200
        assert "Paris" in orjson.loads(r.body)["choices"][0]["message"]["content"]
    finally:
        proc.stop()
        proc.log_path.unlink(missing_ok=True)
    assert list(shm_root.iterdir()) == []
