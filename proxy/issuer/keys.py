"""The issuer's key schedule, kept in SQLite: generate, publish ahead, prefer, overlap, retire.

Each key has a ``not_before`` (clients may use it from then) and an ``expires`` (``not_before + lifetime + overlap``:
it leaves the directory then, and relays stop accepting its tokens). A new key is made ``publish_ahead`` seconds
before the newest one's lifetime ends, so relays see it in the directory before any client uses it, and the old one
stays listed for ``overlap`` seconds after it. Two live keys never share a truncated key id (RFC 9578 §6.5).
Several issuer processes may share the file: a key is made inside one write transaction that checks again first.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from privacypass import Directory, DirectoryKey, IssuerKey

_SCHEMA = """
CREATE TABLE IF NOT EXISTS issuer_keys (
    key_id BLOB PRIMARY KEY,
    pem BLOB NOT NULL,
    not_before REAL NOT NULL,
    expires REAL NOT NULL
);
"""


@dataclass(frozen=True)
class ScheduledKey:
    """One key and its schedule."""

    key: IssuerKey
    not_before: float
    expires: float


def open_db(path: str) -> sqlite3.Connection:
    """The issuer's SQLite file (created 0600: it holds private keys), in WAL mode for concurrent readers."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=30000")
    db.executescript(_SCHEMA)
    return db


def _new_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class KeySchedule:
    """The live keys (loaded from and saved to SQLite) and the rotation step."""

    def __init__(self, db: sqlite3.Connection, *, lifetime: float, overlap: float, publish_ahead: float,
                 new_key: Callable[[], rsa.RSAPrivateKey] = _new_private_key) -> None:
        self._db = db
        self.lifetime, self.overlap, self.publish_ahead = lifetime, overlap, publish_ahead
        self._new_key = new_key
        self.keys: list[ScheduledKey] = []
        self._loaded: dict[bytes, ScheduledKey] = {}

    def load(self, now: float) -> None:
        """Read the live keys from the database (after this or another process changed them)."""
        rows = self._db.execute("SELECT key_id, pem, not_before, expires FROM issuer_keys WHERE expires > ? "
                                "ORDER BY not_before DESC", (now,)).fetchall()
        keys = []
        for key_id, pem, not_before, expires in rows:
            cached = self._loaded.get(key_id)
            if cached is None:
                sk = serialization.load_pem_private_key(pem, password=None)
                assert isinstance(sk, rsa.RSAPrivateKey)
                cached = ScheduledKey(IssuerKey.from_private_key(sk), not_before, expires)
            keys.append(cached)
        self._loaded = {k.key.public.key_id: k for k in keys}
        self.keys = keys

    def due(self, now: float) -> bool:
        """Whether a new key must be made now."""
        newest = max((k.not_before for k in self.keys), default=None)
        return newest is None or now >= newest + self.lifetime - self.publish_ahead

    def rotate(self, now: float | None = None) -> bool:
        """Drop expired keys and make the next key when it is due; True if a key was made. Blocking (key generation
        takes a few hundred ms): call it in a worker thread."""
        now = time.time() if now is None else now
        self._db.execute("DELETE FROM issuer_keys WHERE expires <= ?", (now,))
        self.load(now)
        if not self.due(now):
            return False
        private = self._new_key()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self.load(now)
            if not self.due(now):  # another process made it meanwhile
                self._db.execute("COMMIT")
                return False
            taken = {k.key.public.truncated_key_id for k in self.keys}
            key = IssuerKey.from_private_key(private)
            while key.public.truncated_key_id in taken:
                key = IssuerKey.from_private_key(private := self._new_key())
            newest = max((k.not_before for k in self.keys), default=None)
            not_before = now if newest is None else max(now, newest + self.lifetime)
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            self._db.execute("INSERT INTO issuer_keys VALUES (?, ?, ?, ?)",
                             (key.public.key_id, pem, not_before, not_before + self.lifetime + self.overlap))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.load(now)
        return True

    def signing_keys(self, now: float) -> list[IssuerKey]:
        """Every listed key (a client that uses a key published ahead a little early is still served)."""
        return [k.key for k in self.keys if k.expires > now]

    def directory(self, request_uri: str, now: float) -> Directory:
        """The directory: usable keys newest first, then keys published ahead (clients that ignore not-before and
        take the first key still get a usable one)."""
        live = [k for k in self.keys if k.expires > now]
        usable = sorted((k for k in live if k.not_before <= now), key=lambda k: -k.not_before)
        ahead = sorted((k for k in live if k.not_before > now), key=lambda k: k.not_before)
        return Directory(request_uri, tuple(DirectoryKey(k.key.public, int(k.not_before)) for k in usable + ahead))

    def next_change(self, now: float) -> float:
        """Seconds until the directory changes (a key expires, becomes usable, or is made)."""
        times = [k.expires for k in self.keys] + [k.not_before for k in self.keys if k.not_before > now]
        newest = max((k.not_before for k in self.keys), default=now)
        times.append(newest + self.lifetime - self.publish_ahead)
        return max(0.0, min(times) - now)
