"""The log's sequencer: entries in SQLite, C2SP tlog-tiles (tiles, entry bundles, signed checkpoint) written as
static files under ``<dir>/public``, which any web server, object store or CDN can serve.

``<dir>/log.sqlite`` holds every entry and its leaf hash (the source of truth), the tile hashes above the leaves
(``nodes``: level l >= 1 holds the roots of full 256**l-leaf subtrees, stored in the transaction that sequences
their leaves); ``<dir>/log.key`` the log's signer key. After each append the new full tiles, the partial tiles of
the new size, the entry bundles and then the checkpoint are written (each file atomically, the checkpoint last),
so a reader never sees a checkpoint whose tiles are missing, and the checkpoint on disk names the size whose files
are all written: the next append writes from there, so files a crash left unwritten are written then. An append reads only the tree's right edge (each level's last tile), so it costs the entries it
adds, not the size of the log; a log written before ``nodes`` existed gets them rebuilt once when it is opened.

``public/evidence/<sha256 hex>`` holds the exact evidence bundle each key entry names by ``evidence_sha256``
(:meth:`Log.store_evidence`, written before the checkpoint that includes the entry; content-addressed, so immutable),
for monitors to re-verify: a key entry holds only the digest (entries are at most 64 KiB, bundles up to a MiB).
Attestation bundles are public (every client fetches them). This is Veil's addition, not tlog-tiles: other logs need
not carry it (a monitor then reports the evidence as not available).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from tlog import (
    Checkpoint,
    Signer,
    encode_entry_bundle,
    entries_path,
    extend_levels,
    TlogError,
    generate_signer,
    leaf_hash,
    open_checkpoint,
    root_from_levels,
    sign_checkpoint,
    tiles_to_write,
)
from tlog.errors import StatementError

__all__ = ["EVIDENCE_DIR", "Log", "MAX_EVIDENCE_BYTES", "evidence_path"]

#: the folder under ``public/`` of the evidence bundles key entries name, each at ``evidence/<sha256 hex>``
EVIDENCE_DIR = "evidence"
#: the most bytes of an evidence bundle the log stores and a monitor fetches (GPU evidence makes them ~1 MiB)
MAX_EVIDENCE_BYTES = 2 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, data BLOB NOT NULL, hash BLOB NOT NULL UNIQUE,
                                   added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                                  PRIMARY KEY (level, idx)) WITHOUT ROWID;
"""
_LEVEL_BITS = 8  # a tile is 256 hashes wide: level l hashes are roots of 256**l leaves


def evidence_path(sha256_hex: str) -> str:
    """The static path (under ``public/``) of the evidence bundle whose SHA-256 is ``sha256_hex``."""
    return f"{EVIDENCE_DIR}/{sha256_hex}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Log:
    """One log directory. ``Log.init`` creates it; ``Log(dir)`` opens it."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        db = self.dir / "log.sqlite"
        if not db.is_file():
            raise FileNotFoundError(f"{db} does not exist (run veil log init)")
        self.db = sqlite3.connect(db)
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT v FROM meta WHERE k = 'origin'").fetchone()
        self.origin: str = row[0]
        self.signer = Signer.parse((self.dir / "log.key").read_text())
        self.public = self.dir / "public"
        self._check_nodes()

    @classmethod
    def init(cls, directory: str | Path, origin: str) -> Log:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if (d / "log.sqlite").exists():
            raise FileExistsError(f"{d} already holds a log")
        signer = generate_signer(origin)
        fd = os.open(d / "log.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(signer.skey() + "\n")
        (d / "log.pub").write_text(signer.verifier.vkey() + "\n")
        db = sqlite3.connect(d / "log.sqlite")
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO meta VALUES ('origin', ?)", (origin,))
        db.commit()
        db.close()
        log = cls(d)
        log.publish(0)
        return log

    @property
    def vkey(self) -> str:
        return self.signer.verifier.vkey()

    def size(self) -> int:
        # indices are dense from 0, so MAX is the size and, unlike COUNT(*), reads one row of the primary key
        n: int = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM leaves").fetchone()[0]
        return n

    def leaf_hashes(self) -> list[bytes]:
        return [bytes(r[0]) for r in self.db.execute("SELECT hash FROM leaves ORDER BY idx")]

    def append(self, entries: Sequence[bytes]) -> list[int]:
        """Sequence entries (an entry already in the log keeps its index) and publish the new tree."""
        indices: list[int] = []
        with self.db:
            old = size = self.size()
            for data in entries:
                if len(data) > 0xFFFF:
                    raise StatementError(f"entry of {len(data)} bytes exceeds 65535")
                h = leaf_hash(data)
                row = self.db.execute("SELECT idx FROM leaves WHERE hash = ?", (h,)).fetchone()
                if row is not None:
                    indices.append(int(row[0]))
                    continue
                self.db.execute("INSERT INTO leaves VALUES (?, ?, ?, ?)", (size, data, h, time.time()))
                indices.append(size)
                size += 1
            self._store_nodes(old, size)
        self.publish(min(old, self._published()))
        return indices

    def store_evidence(self, bundle: bytes) -> str:
        """Write ``bundle`` to ``public/evidence/<its SHA-256 hex>`` (atomically; left alone when that file already
        holds these bytes) and return its path. Call it before :meth:`append` of the key entry naming it, so no
        checkpoint includes an entry whose evidence is not yet served."""
        if len(bundle) > MAX_EVIDENCE_BYTES:
            raise StatementError(f"evidence bundle of {len(bundle)} bytes exceeds {MAX_EVIDENCE_BYTES}")
        rel = evidence_path(hashlib.sha256(bundle).hexdigest())
        path = self.public / rel
        try:
            if path.read_bytes() == bundle:
                return rel
        except FileNotFoundError:
            pass
        _atomic_write(path, bundle)
        return rel

    def _published(self) -> int:
        """The size of the checkpoint on disk (0 if there is none we signed): all files up to it are written, as
        the checkpoint is written last. Read from the file, not SQLite, to spare a second commit (an fsync) per
        append."""
        try:
            cp = open_checkpoint((self.public / "checkpoint").read_bytes(), self.signer.verifier, origin=self.origin)
        except (OSError, TlogError):
            return 0
        return cp.checkpoint.size

    def _edge(self, old_size: int, size: int) -> tuple[list[list[bytes]], list[int]]:
        """Each level's hashes from the first of its tile that was partial (or absent) at ``old_size``, up to
        ``size``, and the index each list starts at: all that tiles and the root of any size between need."""
        levels: list[list[bytes]] = []
        starts: list[int] = []
        lv = 0
        while lv == 0 or size >> (_LEVEL_BITS * lv):
            start = (old_size >> (_LEVEL_BITS * lv)) >> _LEVEL_BITS << _LEVEL_BITS
            end = size >> (_LEVEL_BITS * lv)
            if lv == 0:
                rows = self.db.execute("SELECT hash FROM leaves WHERE idx >= ? AND idx < ? ORDER BY idx",
                                       (start, end))
            else:
                rows = self.db.execute("SELECT hash FROM nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx",
                                       (lv, start, end))
            levels.append([bytes(r[0]) for r in rows])
            starts.append(start)
            if len(levels[-1]) != end - start:
                raise RuntimeError(f"{self.dir}: level {lv} of the tree is incomplete in log.sqlite")
            lv += 1
        return levels, starts

    def _store_nodes(self, old_size: int, size: int) -> None:
        """Compute and store the tile hashes that the leaves ``old_size..size`` complete (inside the caller's
        transaction, so leaves and nodes never disagree)."""
        levels, starts = self._edge(old_size, old_size)
        new = [bytes(r[0]) for r in self.db.execute("SELECT hash FROM leaves WHERE idx >= ? ORDER BY idx",
                                                    (old_size,))]
        extend_levels(levels, new, starts)
        self.db.executemany("INSERT INTO nodes VALUES (?, ?, ?)",
                            [(lv, i, levels[lv][i - starts[lv]]) for lv in range(1, len(levels))
                             for i in range(old_size >> (_LEVEL_BITS * lv), starts[lv] + len(levels[lv]))])

    def _check_nodes(self) -> None:
        """Rebuild ``nodes`` from the leaves when it does not match them (a log written before it existed)."""
        size = self.size()
        have = dict(self.db.execute("SELECT level, COUNT(*) FROM nodes GROUP BY level").fetchall())
        want = {lv: size >> (_LEVEL_BITS * lv) for lv in range(1, 9) if size >> (_LEVEL_BITS * lv)}
        if have != want:
            with self.db:
                self.db.execute("DELETE FROM nodes")
                self._store_nodes(0, size)

    def publish(self, old_size: int) -> bytes:
        """Write tiles, entry bundles and the checkpoint for the current size (files for sizes > old_size)."""
        size = self.size()
        levels, starts = self._edge(old_size, size)
        for path, data in tiles_to_write(levels, old_size, size, starts).items():
            _atomic_write(self.public / path, data)
        if size:
            first = old_size // 256
            rows = [bytes(r[0]) for r in self.db.execute("SELECT data FROM leaves WHERE idx >= ? ORDER BY idx",
                                                         (first * 256,))]
            for n in range(first, (size - 1) // 256 + 1):
                chunk = rows[(n - first) * 256 : min((n - first + 1) * 256, size - first * 256)]
                _atomic_write(self.public / entries_path(n, 0 if len(chunk) == 256 else len(chunk)),
                              encode_entry_bundle(chunk))
        cp = Checkpoint(self.origin, size, root_from_levels(levels, size, starts))
        note = sign_checkpoint(cp, self.signer)
        _atomic_write(self.public / "checkpoint", note)
        return note

    def close(self) -> None:
        self.db.close()
