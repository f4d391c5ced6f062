"""The log's sequencer: entries in SQLite, C2SP tlog-tiles (tiles, entry bundles, signed checkpoint) written as
static files under ``<dir>/public``, which any web server, object store or CDN can serve.

``<dir>/log.sqlite`` holds every entry and its leaf hash (the source of truth); ``<dir>/log.key`` the log's signer
key. After each append the new full tiles, the partial tiles of the new size, the entry bundles and then the
checkpoint are written (each file atomically, the checkpoint last), so a reader never sees a checkpoint whose
tiles are missing.
"""

from __future__ import annotations

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
    generate_signer,
    leaf_hash,
    root_from_leaf_hashes,
    sign_checkpoint,
    tiles_to_write,
)
from tlog.errors import StatementError

__all__ = ["Log"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS leaves (idx INTEGER PRIMARY KEY, data BLOB NOT NULL, hash BLOB NOT NULL UNIQUE,
                                   added REAL NOT NULL);
"""


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
        n: int = self.db.execute("SELECT COUNT(*) FROM leaves").fetchone()[0]
        return n

    def leaf_hashes(self) -> list[bytes]:
        return [bytes(r[0]) for r in self.db.execute("SELECT hash FROM leaves ORDER BY idx")]

    def append(self, entries: Sequence[bytes]) -> list[int]:
        """Sequence entries (an entry already in the log keeps its index) and publish the new tree."""
        old = self.size()
        indices: list[int] = []
        with self.db:
            for data in entries:
                if len(data) > 0xFFFF:
                    raise StatementError(f"entry of {len(data)} bytes exceeds 65535")
                h = leaf_hash(data)
                row = self.db.execute("SELECT idx FROM leaves WHERE hash = ?", (h,)).fetchone()
                if row is not None:
                    indices.append(int(row[0]))
                    continue
                idx = self.size()
                self.db.execute("INSERT INTO leaves VALUES (?, ?, ?, ?)", (idx, data, h, time.time()))
                indices.append(idx)
        self.publish(old)
        return indices

    def publish(self, old_size: int) -> bytes:
        """Write tiles, entry bundles and the checkpoint for the current size (files for sizes > old_size)."""
        hashes = self.leaf_hashes()
        size = len(hashes)
        levels: list[list[bytes]] = []
        extend_levels(levels, hashes)
        for path, data in tiles_to_write(levels, old_size, size).items():
            _atomic_write(self.public / path, data)
        if size:
            rows = [bytes(r[0]) for r in self.db.execute("SELECT data FROM leaves ORDER BY idx")]
            for n in range(old_size // 256, (size - 1) // 256 + 1):
                chunk = rows[n * 256 : min((n + 1) * 256, size)]
                _atomic_write(self.public / entries_path(n, 0 if len(chunk) == 256 else len(chunk)),
                              encode_entry_bundle(chunk))
        cp = Checkpoint(self.origin, size, root_from_leaf_hashes(hashes))
        note = sign_checkpoint(cp, self.signer)
        _atomic_write(self.public / "checkpoint", note)
        return note

    def entries(self, start: int = 0) -> list[tuple[int, bytes]]:
        return [(int(i), bytes(d)) for i, d in
                self.db.execute("SELECT idx, data FROM leaves WHERE idx >= ? ORDER BY idx", (start,))]

    def close(self) -> None:
        self.db.close()
