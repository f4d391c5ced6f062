"""The encrypted model format: AES-256-GCM in independently authenticated chunks, under a sealed manifest.

An encrypted model is a directory::

    veil-model.json      the manifest: a small clear header and the sealed (AES-256-GCM) list of files
    blobs/00000.bin      one blob per plaintext file: its chunks' ciphertexts, each followed by its 16-byte tag
    blobs/00001.bin      ...

Keys. Every encryption draws a fresh 16-byte *manifest id*. HKDF-SHA256 (salt = manifest id) turns the owner's
32-byte model key into three values: the chunk key, the manifest key, and a 16-byte *key check* stored in the
clear header. A wrong key is therefore told apart from a tampered file (and AES-GCM, which is not key-committing,
gets a key commitment), and nonces can never repeat across two encryptions under the same model key.

Chunks. A file of ``size`` bytes is cut into ``max(1, ceil(size / chunk_size))`` chunks (4 MiB by default; an
empty file is one empty chunk, so even it is authenticated). Chunk ``i`` is sealed with the chunk key under

* nonce = the file's random 8-byte prefix || ``i`` as 4 bytes big-endian (prefixes are distinct within a model);
* AAD = ``b"veil-model/1 chunk\\0"`` || manifest id || ``i`` (4 bytes) || final flag (1 byte) || file name (UTF-8),

and stored at offset ``i * (chunk_size + 16)`` of the file's blob, so chunks are read, verified and decrypted in
parallel, in any order. A chunk moved to another place, file or model, a truncated or extended blob, and a final
chunk dropped are all caught by the AAD, the nonce, the chunk count and the blob size.

Manifest. The clear header (format, version, cipher, KDF, key id, manifest id, key check, nonce) is the AAD of the
sealed body, so none of it can be changed either. The body lists, per file: name, size, chunk count, SHA-256 of
the plaintext, nonce prefix and blob; the chunk size; the total. Sealing (not only MACing) it keeps the file names
and hashes private: the SHA-256 of a published model's weights would otherwise say which model it is.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import hmac
import math
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import ModelError, ModelIntegrityError, ModelKeyError
from .model_key import KEY_BYTES, KeySource, ModelKey, check_key_id

FORMAT: Final = "veil-encrypted-model"
VERSION: Final = 1
CIPHER: Final = "AES-256-GCM"
KDF: Final = "HKDF-SHA256"
MANIFEST_NAME: Final = "veil-model.json"
BLOB_DIR: Final = "blobs"
DEFAULT_CHUNK_SIZE: Final = 4 * 1024 * 1024
MIN_CHUNK_SIZE: Final = 1024
MAX_CHUNK_SIZE: Final = 256 * 1024 * 1024
TAG_BYTES: Final = 16
NONCE_PREFIX_BYTES: Final = 8
MANIFEST_ID_BYTES: Final = 16
MAX_FILES: Final = 100_000
MAX_MANIFEST_BYTES: Final = 64 * 1024 * 1024

_LABEL: Final = b"veil-model/1 "
_BLOB = re.compile(r"blobs/[0-9]{5,9}\.bin\Z")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")


# ------------------------------------------------------------------------------------------------------------------
# The format's pieces


@dataclass(frozen=True)
class FileEntry:
    """One plaintext file of the model, as the sealed manifest lists it."""

    name: str  # relative POSIX path inside the model directory
    size: int
    chunks: int
    sha256: str  # hex, of the whole plaintext file
    nonce_prefix: bytes
    blob: str  # relative path of the blob inside the encrypted directory

    def plain_len(self, index: int, chunk_size: int) -> int:
        """Plaintext bytes in chunk ``index``."""
        return max(0, min(chunk_size, self.size - index * chunk_size))

    def blob_size(self) -> int:
        """Bytes the blob must have: the plaintext and one tag per chunk."""
        return self.size + TAG_BYTES * self.chunks


@dataclass(frozen=True)
class Manifest:
    """The opened (authenticated) manifest of an encrypted model."""

    key_id: str
    manifest_id: bytes
    chunk_size: int
    files: tuple[FileEntry, ...]
    #: SHA-256 (hex) of the exact ``veil-model.json`` bytes this manifest was read from (or written as): the
    #: model's identity a gateway binds into its evidence (``model_manifest_sha256``)
    sha256: str = ""

    @property
    def total_bytes(self) -> int:
        """Plaintext bytes of all files."""
        return sum(f.size for f in self.files)


@dataclass(frozen=True, repr=False)
class _Keys:
    chunk: AESGCM
    manifest: AESGCM
    check: bytes


def derive_keys(key: bytes, manifest_id: bytes) -> _Keys:
    """The chunk key, the manifest key and the key check value of one encryption (HKDF-SHA256)."""
    if len(key) != KEY_BYTES:
        raise ModelKeyError(f"a model key is {KEY_BYTES} bytes, got {len(key)}")

    def hkdf(label: bytes, length: int) -> bytes:
        return HKDF(hashes.SHA256(), length, salt=manifest_id, info=_LABEL + label).derive(key)

    return _Keys(AESGCM(hkdf(b"chunk key", 32)), AESGCM(hkdf(b"manifest key", 32)), hkdf(b"key check", 16))


def chunk_nonce(prefix: bytes, index: int) -> bytes:
    """Nonce of chunk ``index``: the file's prefix || the chunk counter (4 bytes, big-endian)."""
    return prefix + index.to_bytes(4, "big")


def chunk_aad(manifest_id: bytes, name: str, index: int, final: bool) -> bytes:
    """Associated data of chunk ``index``: binds the model (manifest id), the file, the position and finality."""
    return b"".join((_LABEL, b"chunk\0", manifest_id, index.to_bytes(4, "big"), b"\1" if final else b"\0",
                     name.encode()))


def _header_aad(header: dict[str, Any]) -> bytes:
    clear = {k: v for k, v in header.items() if k != "manifest"}
    return _LABEL + b"manifest\0" + orjson.dumps(clear, option=orjson.OPT_SORT_KEYS)


def _check_name(name: str) -> str:
    p = PurePosixPath(name)
    if (not name or name.startswith("/") or "\\" in name or "\0" in name or p.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise ModelError(f"unsafe file name {name!r} in the manifest")
    return name


def _pread_exact(fd: int, buf: memoryview, offset: int) -> int:
    """Read into all of ``buf`` from ``offset``; fewer bytes only at end of file. Returns the bytes read."""
    got = 0
    while got < len(buf):
        n = os.preadv(fd, [buf[got:]], offset + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_all(fd: int, buf: memoryview, offset: int) -> None:
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, buf[done:], offset + done)


def default_threads() -> int:
    """Threads for encryption and decryption: one per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class _Buffers(threading.local):
    """Per-thread chunk buffers, reused for every chunk (``decrypt_into``/``encrypt_into``: no allocation)."""

    def __init__(self) -> None:
        self.size = 0
        self.sealed = bytearray()
        self.plain = bytearray()

    def get(self, chunk_size: int) -> tuple[memoryview, memoryview]:
        if self.size != chunk_size:
            self.size = chunk_size
            self.sealed = bytearray(chunk_size + TAG_BYTES)
            self.plain = bytearray(chunk_size)
        return memoryview(self.sealed), memoryview(self.plain)


def _run_all(threads: int, tasks: list[Callable[[], None]]) -> None:
    """Run ``tasks`` on a thread pool; on the first failure (or an interrupt) skip the rest and raise the earliest
    task's error (in submission order: a stable, meaningful message)."""
    abort = threading.Event()

    def guarded(task: Callable[[], None]) -> None:
        if not abort.is_set():
            task()

    pool = cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="veil-model")
    try:
        futures = [pool.submit(guarded, t) for t in tasks]
        done, _ = cf.wait(futures, return_when=cf.FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            abort.set()
    except BaseException:  # KeyboardInterrupt, SystemExit from a signal handler: stop now, not after every task
        abort.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True, cancel_futures=True)
    for f in futures:
        if not f.cancelled() and (exc := f.exception()) is not None:
            raise exc


# ------------------------------------------------------------------------------------------------------------------
# Encryption (the model owner's side)


def _list_files(src: Path) -> list[str]:
    names: list[str] = []
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for fname in files:
            full = Path(root) / fname
            rel = full.relative_to(src).as_posix()
            try:
                rel.encode()
                st = full.stat()  # follows symlinks (Hugging Face snapshots link into blobs)
            except UnicodeEncodeError:
                raise ModelError(f"file name {rel!r} is not UTF-8") from None
            except OSError as exc:
                raise ModelError(f"cannot read {full}: {exc.strerror or exc}") from None
            if not stat.S_ISREG(st.st_mode):
                raise ModelError(f"{full} is not a regular file")
            names.append(rel)
    names.sort()
    if len(names) > MAX_FILES:
        raise ModelError(f"{src} has {len(names)} files; at most {MAX_FILES}")
    return names


def _prepare_out(out: Path) -> bool:
    """Make ``out`` an empty directory (mode 0700). Returns whether it was created here."""
    if out.exists():
        if not out.is_dir() or any(out.iterdir()):
            raise ModelError(f"{out} exists and is not an empty directory")
        return False
    try:
        out.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise ModelError(f"cannot create {out}: {exc.strerror or exc}") from None
    return True


def _clear(out: Path, created: bool) -> None:
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def encrypt_model(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    key: ModelKey,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    threads: int | None = None,
) -> Manifest:
    """Encrypt every file of the model directory ``src`` into the new directory ``out``."""
    src_dir, out_dir = Path(src), Path(out)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ModelError(f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes")
    if not src_dir.is_dir():
        raise ModelError(f"model directory {src_dir} not found")
    names = _list_files(src_dir)
    if not names:
        raise ModelError(f"model directory {src_dir} has no files")
    if MANIFEST_NAME in names:
        raise ModelError(f"{src_dir} is an encrypted model already ({MANIFEST_NAME})")
    if out_dir.resolve() == src_dir.resolve() or src_dir.resolve() in out_dir.resolve().parents:
        raise ModelError("the output directory must be outside the model directory")
    created = _prepare_out(out_dir)
    try:
        return _encrypt(src_dir, out_dir, names, key, chunk_size, threads or default_threads())
    except BaseException:
        _clear(out_dir, created)
        raise


def _encrypt(src: Path, out: Path, names: list[str], key: ModelKey, chunk_size: int, threads: int) -> Manifest:
    manifest_id = os.urandom(MANIFEST_ID_BYTES)
    keys = derive_keys(key.key, manifest_id)
    (out / BLOB_DIR).mkdir(mode=0o700)
    prefixes: set[bytes] = set()
    fds: list[int] = []
    entries: list[dict[str, Any]] = []
    stats: list[os.stat_result] = []
    tasks: list[Callable[[], None]] = []
    buffers = _Buffers()
    try:
        for index, name in enumerate(names):
            while (prefix := os.urandom(NONCE_PREFIX_BYTES)) in prefixes:  # pragma: no cover - 2^-64
                pass
            prefixes.add(prefix)
            in_fd = os.open(src / name, os.O_RDONLY)
            fds.append(in_fd)
            st = os.fstat(in_fd)
            stats.append(st)
            chunks = max(1, math.ceil(st.st_size / chunk_size))
            if chunks >= 2**32:
                raise ModelError(f"{name} is too large for chunks of {chunk_size} bytes")
            blob = f"{BLOB_DIR}/{index:05d}.bin"
            out_fd = os.open(out / blob, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fds.append(out_fd)
            entry = {"name": name, "size": st.st_size, "chunks": chunks, "sha256": "",
                     "nonce_prefix": prefix.hex(), "blob": blob}
            entries.append(entry)
            for i in range(chunks):
                tasks.append(_encrypt_task(keys.chunk, buffers, in_fd, out_fd, manifest_id, name, prefix, i, chunks,
                                           st.st_size, chunk_size))
            tasks.append(_hash_task(in_fd, entry, name))
        _run_all(threads, tasks)
        for name, entry, before in zip(names, entries, stats):
            after = (src / name).stat()
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                raise ModelError(f"{name} changed while it was being encrypted; try again")
    finally:
        for fd in fds:
            os.close(fd)
    body = {"chunk_size": chunk_size, "total_bytes": sum(int(e["size"]) for e in entries), "files": entries}
    nonce = os.urandom(12)
    header: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "cipher": CIPHER, "kdf": KDF, "key_id": key.key_id,
        "manifest_id": manifest_id.hex(), "key_check": keys.check.hex(), "nonce": nonce.hex(),
    }
    sealed = keys.manifest.encrypt(nonce, orjson.dumps(body), _header_aad(header))
    header["manifest"] = base64.b64encode(sealed).decode()
    tmp = out / (MANIFEST_NAME + ".tmp")
    raw = orjson.dumps(header, option=orjson.OPT_INDENT_2) + b"\n"
    tmp.write_bytes(raw)
    tmp.replace(out / MANIFEST_NAME)
    return replace(_manifest_from_body(key.key_id, manifest_id, body), sha256=hashlib.sha256(raw).hexdigest())


def _encrypt_task(aead: AESGCM, buffers: _Buffers, in_fd: int, out_fd: int, manifest_id: bytes, name: str,
                  prefix: bytes, index: int, chunks: int, size: int, chunk_size: int) -> Callable[[], None]:
    def task() -> None:
        sealed, plain = buffers.get(chunk_size)
        n = max(0, min(chunk_size, size - index * chunk_size))
        if _pread_exact(in_fd, plain[:n], index * chunk_size) != n:
            raise ModelError(f"{name} got shorter while it was being encrypted; try again")
        final = index == chunks - 1
        aead.encrypt_into(chunk_nonce(prefix, index), plain[:n], chunk_aad(manifest_id, name, index, final),
                          sealed[: n + TAG_BYTES])
        _pwrite_all(out_fd, sealed[: n + TAG_BYTES], index * (chunk_size + TAG_BYTES))

    return task


def _hash_task(fd: int, entry: dict[str, Any], name: str) -> Callable[[], None]:
    def task() -> None:
        h = hashlib.sha256()
        buf = memoryview(bytearray(1024 * 1024))
        offset = 0
        while n := os.preadv(fd, [buf], offset):
            h.update(buf[:n])
            offset += n
        entry["sha256"] = h.hexdigest()

    return task


# ------------------------------------------------------------------------------------------------------------------
# Opening the manifest


def read_manifest(enc_dir: str | os.PathLike[str], key_source: KeySource) -> tuple[Manifest, _Keys]:
    """Read the manifest, get the key for its key id from ``key_source``, check the key and open the manifest."""
    path = Path(enc_dir) / MANIFEST_NAME
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ModelError(f"{enc_dir} is not an encrypted model: {MANIFEST_NAME} is missing") from None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError("too large")
        header = orjson.loads(raw)
        if not isinstance(header, dict):
            raise TypeError("not a JSON object")
        if header.get("format") != FORMAT:
            raise ValueError(f"format is {header.get('format')!r}, not {FORMAT!r}")
        if header.get("version") != VERSION or header.get("cipher") != CIPHER or header.get("kdf") != KDF:
            raise ValueError(f"unsupported version {header.get('version')!r} / cipher / KDF")
        key_id = check_key_id(header["key_id"])
        manifest_id = bytes.fromhex(header["manifest_id"])
        key_check = bytes.fromhex(header["key_check"])
        nonce = bytes.fromhex(header["nonce"])
        sealed = base64.b64decode(header["manifest"], validate=True)
        if len(manifest_id) != MANIFEST_ID_BYTES or len(key_check) != 16 or len(nonce) != 12:
            raise ValueError("manifest_id, key_check or nonce has the wrong length")
    except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, ModelKeyError) as exc:
        raise ModelIntegrityError(f"{path} is damaged or not a Veil model manifest: {exc}") from None
    try:
        key = key_source(key_id)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelKeyError(f"cannot get the model key {key_id!r}: {exc}") from exc
    keys = derive_keys(bytes(key), manifest_id)
    if not hmac.compare_digest(keys.check, key_check):
        raise ModelKeyError(f"wrong model key: the key given for key id {key_id!r} is not the key this model was "
                            "encrypted with (or the manifest header was modified)")
    try:
        body = orjson.loads(keys.manifest.decrypt(nonce, sealed, _header_aad(header)))
    except InvalidTag:
        raise ModelIntegrityError(f"{path}: the manifest failed authentication; it was modified after "
                                  "encryption") from None
    manifest = _manifest_from_body(key_id, manifest_id, body)
    return replace(manifest, sha256=hashlib.sha256(raw).hexdigest()), keys


def _manifest_from_body(key_id: str, manifest_id: bytes, body: Any) -> Manifest:
    try:
        chunk_size = int(body["chunk_size"])
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size}")
        files = []
        for e in body["files"]:
            entry = FileEntry(_check_name(str(e["name"])), int(e["size"]), int(e["chunks"]), str(e["sha256"]),
                              bytes.fromhex(e["nonce_prefix"]), str(e["blob"]))
            if entry.size < 0 or entry.chunks != max(1, math.ceil(entry.size / chunk_size)):
                raise ValueError(f"{entry.name}: size and chunk count disagree")
            if not _SHA256.match(entry.sha256) or len(entry.nonce_prefix) != NONCE_PREFIX_BYTES:
                raise ValueError(f"{entry.name}: bad sha256 or nonce prefix")
            if not _BLOB.match(entry.blob):
                raise ValueError(f"{entry.name}: bad blob name {entry.blob!r}")
            files.append(entry)
        if not files or len(files) > MAX_FILES:
            raise ValueError(f"{len(files)} files")
        for what, values in (("file names", [f.name for f in files]), ("blobs", [f.blob for f in files]),
                             ("nonce prefixes", [f.nonce_prefix for f in files])):
            if len(set(values)) != len(values):
                raise ValueError(f"duplicate {what}")
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"the manifest is malformed: {exc}") from None
    return Manifest(key_id, manifest_id, chunk_size, tuple(files))


# ------------------------------------------------------------------------------------------------------------------
# Decryption


@dataclass
class DecryptStats:
    """What :func:`decrypt_model` did."""

    manifest: Manifest
    seconds: float
    threads: int

    @property
    def gb_per_s(self) -> float:
        return self.manifest.total_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass(eq=False)
class _FileJob:
    """One file being decrypted; hashes its plaintext in chunk order while chunks finish in any order."""

    entry: FileEntry
    chunk_size: int
    in_fd: int
    out_fd: int
    sha: Any = field(default_factory=hashlib.sha256)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cursor: int = 0  # the next chunk to hash
    ready: set[int] = field(default_factory=set)  # chunks written but not hashed yet
    hashing: bool = False  # a thread is hashing this file now

    def chunk_done(self, index: int, plain: memoryview, scratch: memoryview) -> None:
        """Chunk ``index`` (its plaintext in ``plain``) is written. Hash it and every chunk after it that is
        written already, unless another thread is hashing this file (it will take ours in turn)."""
        with self.lock:
            if self.hashing or index != self.cursor:
                self.ready.add(index)
                return
            self.hashing = True
        self.sha.update(plain)
        while True:
            with self.lock:
                self.cursor += 1
                if self.cursor not in self.ready:
                    self.hashing = False
                    return
                self.ready.discard(self.cursor)
                nxt = self.cursor
            n = self.entry.plain_len(nxt, self.chunk_size)
            if _pread_exact(self.out_fd, scratch[:n], nxt * self.chunk_size) != n:
                raise ModelError(f"{self.entry.name}: the decrypted file shrank while it was being verified")
            self.sha.update(scratch[:n])


def decrypt_model(
    enc_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    key_source: KeySource,
    *,
    threads: int | None = None,
) -> DecryptStats:
    """Verify and decrypt the encrypted model ``enc_dir`` into ``out`` (created, or empty).

    Every chunk is authenticated before its plaintext is written; every file's SHA-256 is checked against the
    manifest. On any failure ``out`` is emptied (no partial plaintext stays behind) and the error says which file,
    which chunk and why.
    """
    src, out_dir = Path(enc_dir), Path(out)
    t0 = time.perf_counter()
    manifest, keys = read_manifest(src, key_source)
    _check_blobs(src, manifest)
    created = _prepare_out(out_dir)
    nthreads = threads or default_threads()
    try:
        _decrypt(src, out_dir, manifest, keys, nthreads)
    except BaseException:
        _clear(out_dir, created)
        raise
    return DecryptStats(manifest, time.perf_counter() - t0, nthreads)


def _check_blobs(src: Path, manifest: Manifest) -> None:
    for entry in manifest.files:
        path = src / entry.blob
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ModelIntegrityError(f"{entry.name}: its encrypted file {entry.blob} is missing") from None
        except OSError as exc:
            raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
        want = entry.blob_size()
        if size < want:
            raise ModelIntegrityError(f"{entry.name}: its encrypted file {entry.blob} is truncated: {size} of "
                                      f"{want} bytes")
        if size > want:
            raise ModelIntegrityError(f"{entry.name}: its encrypted file {entry.blob} has {size - want} bytes more "
                                      "than the manifest says (appended data)")


def _decrypt(src: Path, out: Path, manifest: Manifest, keys: _Keys, threads: int) -> None:
    free = shutil.disk_usage(out).free
    if free < manifest.total_bytes:
        raise ModelError(f"{out} has {free} bytes free; the model needs {manifest.total_bytes}")
    cs = manifest.chunk_size
    buffers = _Buffers()
    jobs: list[_FileJob] = []
    tasks: list[Callable[[], None]] = []
    try:
        for entry in manifest.files:
            target = out / entry.name
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            in_fd = os.open(src / entry.blob, os.O_RDONLY)
            try:
                out_fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            except BaseException:
                os.close(in_fd)
                raise
            job = _FileJob(entry, cs, in_fd, out_fd)
            jobs.append(job)
            tasks.extend(_decrypt_task(keys.chunk, buffers, job, manifest.manifest_id, i) for i in range(entry.chunks))
        _run_all(threads, tasks)
        for job in jobs:
            if job.cursor != job.entry.chunks or not hmac.compare_digest(job.sha.hexdigest(), job.entry.sha256):
                raise ModelIntegrityError(f"{job.entry.name}: SHA-256 of the decrypted file does not match the "
                                          "manifest")
    except OSError as exc:
        raise ModelError(f"cannot write the decrypted model to {out}: {exc.strerror or exc}") from None
    finally:
        for job in jobs:
            os.close(job.in_fd)
            os.close(job.out_fd)


def _decrypt_task(aead: AESGCM, buffers: _Buffers, job: _FileJob, manifest_id: bytes, index: int) -> Callable[[], None]:
    entry, cs = job.entry, job.chunk_size

    def task() -> None:
        sealed, plain = buffers.get(cs)
        n = entry.plain_len(index, cs)
        ct, pt = sealed[: n + TAG_BYTES], plain[:n]
        if _pread_exact(job.in_fd, ct, index * (cs + TAG_BYTES)) != len(ct):
            raise ModelIntegrityError(f"{entry.name}: its encrypted file {entry.blob} is truncated at chunk {index}")
        final = index == entry.chunks - 1
        try:
            aead.decrypt_into(chunk_nonce(entry.nonce_prefix, index), ct, chunk_aad(manifest_id, entry.name, index,
                                                                                    final), pt)
        except InvalidTag:
            raise ModelIntegrityError(
                f"{entry.name}: chunk {index} (of chunks 0-{entry.chunks - 1}) failed authentication (modified, "
                "reordered, or from another file or model); refusing the model") from None
        _pwrite_all(job.out_fd, pt, index * cs)
        job.chunk_done(index, pt, plain)

    return task
