"""Everything one issuer app holds (aiohttp's "no singletons"), and the AppKey it is stored under."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field

from aiohttp import web

from .attester import Attester, load_attester
from .config import IssuerConfig
from .keys import KeySchedule, open_db
from .metrics import IssuerMetrics

_USAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS issuance_counts (
    subject BLOB NOT NULL,
    window INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (subject, window)
);
"""


class IssuanceLimits:
    """Tokens per subject per window, counted in the issuer's SQLite file (so they survive restarts and are shared by
    issuer processes on one file). Subjects are the attester's opaque bytes (an API key's hash)."""

    def __init__(self, db: sqlite3.Connection, *, default_limit: int, window: float) -> None:
        self._db = db
        self.default_limit, self.window = default_limit, window
        db.executescript(_USAGE_SCHEMA)

    def charge(self, subject: bytes, limit: int | None, now: float | None = None) -> bool:
        """Count one token for ``subject``; False (and nothing counted) if its limit for this window is reached."""
        limit = self.default_limit if limit is None else limit
        if limit == 0:
            return True
        window = int((time.time() if now is None else now) // self.window)
        row = self._db.execute(
            "INSERT INTO issuance_counts VALUES (?, ?, 1) ON CONFLICT (subject, window) DO UPDATE "
            "SET count = count + 1 WHERE count < ? RETURNING count", (subject, window, limit)).fetchone()
        return row is not None

    def prune(self, now: float) -> None:
        """Forget windows before the current one."""
        self._db.execute("DELETE FROM issuance_counts WHERE window < ?", (int(now // self.window),))


@dataclass
class IssuerState:
    """Per-app state: the database, the key schedule, the attester, the limits and the metrics."""

    #: the attester to use; None: the one ``config`` names (see :func:`.attester.load_attester`)

    config: IssuerConfig
    attester: Attester | None = None
    db: sqlite3.Connection = field(init=False)
    schedule: KeySchedule = field(init=False)
    limits: IssuanceLimits = field(init=False)
    metrics: IssuerMetrics = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.db = open_db(cfg.state_path)
        # The key schedule runs in a worker thread, inside its own transactions: its own connection.
        self.schedule = KeySchedule(open_db(cfg.state_path), lifetime=cfg.key_lifetime, overlap=cfg.key_overlap,
                                    publish_ahead=cfg.key_publish_ahead)
        self.limits = IssuanceLimits(self.db, default_limit=cfg.tokens_per_key, window=cfg.limit_window)
        self.metrics = IssuerMetrics()
        if self.attester is None:
            self.attester = load_attester(cfg)


STATE = web.AppKey("STATE", IssuerState)
