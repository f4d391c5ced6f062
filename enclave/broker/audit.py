"""The broker's audit log: one JSON line per attestation and per resource decision.

Fields: ``time`` (RFC 3339, UTC), ``event`` (``attest`` | ``resource`` | ``import``), ``resource``
(``repo/type/tag`` or null), ``platform``, ``measurement`` (hex or null), ``session`` (first 16 bytes of SHA-256 of
the session id, hex: lines of one session link up, the cookie cannot be recovered; null for imports, which have no
session), ``outcome`` (``attested`` | ``refused`` | ``released`` | ``denied`` | ``not-found`` | ``imported``),
``reason`` (names of failed checks or a short cause). Never evidence bytes, keys, secrets, tokens or client
addresses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from pathlib import Path

import orjson

log = logging.getLogger("veil.broker.audit")


def session_hash(session_id: str) -> str:
    """What the audit log records instead of a session id."""
    return hashlib.sha256(session_id.encode("utf-8")).digest()[:16].hex()


class AuditLog:
    """Appends JSON lines to a file (flushed per line), or to the ``veil.broker.audit`` logger without one."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        if self.path is not None:
            # Opened once at start, so a broker that cannot write its audit log does not start.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fh = os.fdopen(fd, "ab", buffering=0)

    def record(self, *, event: str, outcome: str, session_id: str | None, resource: str | None = None,
               platform: str | None = None, measurement: bytes | None = None, reason: str = "") -> None:
        line = orjson.dumps({
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "resource": resource,
            "platform": platform,
            "measurement": measurement.hex() if measurement is not None else None,
            "session": session_hash(session_id) if session_id is not None else None,
            "outcome": outcome,
            "reason": reason,
        })
        if self.path is None:
            log.info("%s", line.decode())
        else:
            self._fh.write(line + b"\n")

    def close(self) -> None:
        if self.path is not None:
            self._fh.close()
