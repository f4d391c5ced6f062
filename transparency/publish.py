"""``veil release publish``: check a signed release the way clients will, then append it to a local log.

A release goes into the log only if it opens under a publisher key the caller names (a note signed by another key
would be logged for everyone to see, yet admit no gateway for clients trusting that publisher), its policy is one
clients can parse, and its window has not ended. Appending is the log operator's act on the log's own directory:
the log has no HTTP write endpoint, so a log known only by its URL cannot be appended to from here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tlog import Verifier
from tlog.errors import StatementError

from .log import Log
from .statements import Release, open_release

__all__ = ["Published", "check_release", "publish_release", "is_url"]


@dataclass(frozen=True)
class Published:
    release: Release
    index: int
    size: int
    #: False when the log already held this exact release (it keeps its index; nothing was appended)
    appended: bool


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def check_release(raw: bytes, publishers: Sequence[Verifier], now: float) -> Release:
    """The release, if it is signed by one of ``publishers``, well formed and not expired at ``now``."""
    from enclave.attestation import EvidenceFormatError, Policy

    try:
        rel = open_release(raw, publishers)
    except StatementError as exc:
        raise StatementError(f"{exc}: sign the release with the publisher key you name (veil release sign --key "
                             "FILE), or pass that key's verifier with --publisher") from None
    try:
        Policy.from_dict(rel.policy)
    except EvidenceFormatError as exc:
        raise StatementError(f"release {rel.name!r}: its policy is not one clients accept: {exc}") from None
    if now >= rel.not_after:
        ended = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(rel.not_after))
        raise StatementError(f"release {rel.name!r} expired at {ended}: "
                             "create and sign it again with a new window (veil release create --days N)")
    return rel


def publish_release(raw: bytes, publishers: Sequence[Verifier], log_dir: Path, now: float) -> Published:
    rel = check_release(raw, publishers, now)
    log = Log(log_dir)
    try:
        before = log.size()
        [index] = log.append([raw])
        return Published(rel, index, log.size(), appended=index >= before)
    finally:
        log.close()
