"""Verify a gateway's evidence with the policy a log gives: the unexpired releases a trusted publisher signed that
are included in the log, and a logged key-configuration entry for the exact key configuration the evidence binds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from enclave.attestation import Bundle, Policy, Verdict, verify_bundle
from tlog import Verifier
from tlog.errors import StatementError

from .client import LogView
from .statements import KeyEntry, Release

__all__ = ["LogVerdict", "verify_with_log"]


@dataclass(frozen=True)
class LogVerdict:
    verdict: Verdict
    release: Release | None
    key_index: int
    key_entry: KeyEntry
    log_size: int
    skipped: tuple[str, ...]


def verify_with_log(bundle: Bundle, view: LogView, publishers: Sequence[Verifier], *, now: dt.datetime,
                    allow_simulated: bool = False) -> LogVerdict:
    """The verdict under the first logged release whose policy the evidence satisfies (the last failing verdict
    when none does). ``StatementError`` when no release of the publisher is logged or the key is not in the log."""
    ts = now.timestamp()
    releases, skipped = view.releases(publishers, ts)
    if not releases:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise StatementError(f"no unexpired release signed by the publisher is in the log at size {view.size}{detail}")
    key_index, key_entry = view.key_entry(bundle.key_config, ts)
    verdict: Verdict | None = None
    for rel in releases:
        policy = Policy.from_dict(rel.policy)
        verdict = verify_bundle(bundle, None, policy, now=now, allow_simulated=allow_simulated)
        if verdict.ok:
            return LogVerdict(verdict, rel, key_index, key_entry, view.size, tuple(skipped))
    assert verdict is not None
    return LogVerdict(verdict, None, key_index, key_entry, view.size, tuple(skipped))
