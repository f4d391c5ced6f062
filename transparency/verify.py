"""Verify a gateway's evidence with the policy a log gives: the unexpired releases a trusted publisher signed that
are included in the log, and a logged key-configuration entry for the exact key configuration the evidence binds.

Two ways to the same verdict: :func:`verify_with_log` reads the whole log (``TrustedLog.open``);
:func:`verify_with_proofs` checks the proofs the gateway served with its evidence (``transparency.proofs``),
offline but for the consistency with the kept checkpoint."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from enclave.attestation import Bundle, Policy, Verdict, verify_bundle
from tlog import Verifier
from tlog.errors import StatementError

from .client import LogView, TrustedLog
from .proofs import CERT_KEY, LogProofs, NoReleaseInProofs, verify_proofs
from .statements import KeyEntry, Release

__all__ = ["LogVerdict", "bundle_proofs", "verify_with_log", "verify_with_proofs", "verify_with_proofs_or_log"]


@dataclass(frozen=True)
class LogVerdict:
    verdict: Verdict
    release: Release | None
    key_index: int
    key_entry: KeyEntry
    log_size: int
    skipped: tuple[str, ...]
    #: where the entries and proofs came from: "log" (read from the log) or "gateway" (served with the evidence)
    source: str = "log"
    #: why the whole log was read although the gateway served proofs (None: it was not)
    fallback: str | None = None

    @property
    def via(self) -> str:
        """Where the entries came from, in words (empty for the plain full-log path)."""
        if self.source == "gateway":
            return " (proofs from the gateway)"
        if self.fallback is not None:
            return f" (read from the log: {self.fallback})"
        return ""

    def line(self) -> str:
        """What the verification document says about the log."""
        name = self.release.name if self.release is not None else None
        return f"logged: release {name!r}, key configuration at index {self.key_index} of {self.log_size}{self.via}"


def _judge(bundle: Bundle, releases: Sequence[Release], skipped: tuple[str, ...], key_index: int,
           key_entry: KeyEntry, size: int, source: str, now: dt.datetime, allow_simulated: bool,
           keys_body: bytes | None) -> LogVerdict:
    """The verdict under the first release whose policy the evidence satisfies (the last failing one when none).

    With ``keys_body`` (the key configuration the client fetched) the same ``verify_bundle`` call also checks that
    the evidence binds those exact bytes: a release admits the gateway when every other check passes, and the
    verdict under it then fails if the keys differ (``release`` set, ``verdict.ok`` False). When no release admits
    it, the verdict is reported without the key check, as the policies alone judged it."""
    verdict: Verdict | None = None
    for rel in releases:
        verdict = verify_bundle(bundle, keys_body, Policy.from_dict(rel.policy), now=now,
                                allow_simulated=allow_simulated)
        # verify_bundle records the key check first, and only when given keys
        judged = verdict.checks[1:] if keys_body is not None else verdict.checks
        if judged and all(c.ok is True for c in judged):
            return LogVerdict(verdict, rel, key_index, key_entry, size, skipped, source)
    assert verdict is not None
    if keys_body is not None:
        del verdict.checks[0]
    return LogVerdict(verdict, None, key_index, key_entry, size, skipped, source)


def verify_with_log(bundle: Bundle, view: LogView, publishers: Sequence[Verifier], *, now: dt.datetime,
                    allow_simulated: bool = False, keys_body: bytes | None = None) -> LogVerdict:
    """The verdict under the first logged release whose policy the evidence satisfies (the last failing verdict
    when none does). ``StatementError`` when no release of the publisher is logged or the key is not in the log.
    ``keys_body``: the key configuration the client fetched, checked in the same verification (see ``_judge``)."""
    ts = now.timestamp()
    releases, skipped = view.releases(publishers, ts)
    if not releases:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise StatementError(f"no unexpired release signed by the publisher is in the log at size {view.size}{detail}")
    key_index, key_entry = view.key_entry(bundle.key_config, ts)
    return _judge(bundle, releases, tuple(skipped), key_index, key_entry, view.size, "log", now, allow_simulated,
                  keys_body)


def bundle_proofs(bundle: Bundle) -> LogProofs | None:
    """The log proofs the bundle carries (``AttachmentError`` when malformed), or None: then read the log."""
    text = bundle.certs.get(CERT_KEY)
    return None if text is None else LogProofs.parse(text)


def verify_with_proofs(bundle: Bundle, proofs: LogProofs, trusted: TrustedLog, publishers: Sequence[Verifier], *,
                       now: dt.datetime, allow_simulated: bool = False, keys_body: bytes | None = None
                       ) -> LogVerdict:
    """:func:`verify_with_log` from the proofs the gateway served: checkpoint signatures, inclusion proofs and
    statements offline (``verify_proofs``), then consistency with ``trusted``'s kept checkpoint (tiles fetched only
    when the two differ in size)."""
    proven = verify_proofs(proofs, bundle.key_config, log_key=trusted.log_key, publishers=publishers,
                           now=now.timestamp(), witnesses=trusted.witnesses, min_witnesses=trusted.min_witnesses,
                           origin=trusted.origin)
    trusted.accept(proven.checkpoint)
    return _judge(bundle, proven.releases, proven.skipped, proven.key_index, proven.key_entry, proven.size,
                  "gateway", now, allow_simulated, keys_body)


def verify_with_proofs_or_log(bundle: Bundle, proofs: LogProofs | None, trusted: TrustedLog,
                              publishers: Sequence[Verifier], *, now: dt.datetime, allow_simulated: bool = False,
                              read_log: bool, keys_body: bytes | None = None) -> LogVerdict:
    """:func:`verify_with_log` on the whole log when the bundle carried no ``proofs``; else :func:`verify_with_proofs`,
    and when its proofs verify but carry no release that admits the gateway (in a log
    shared by publishers, a gateway may attach others' releases) and ``read_log`` (a log URL is configured), the
    verdict of :func:`verify_with_log` on the whole log instead, its line saying so. Any other failure of the proofs
    (signature, inclusion, consistency, key entry) is a refusal, never a reason to look elsewhere."""
    if proofs is None:
        return verify_with_log(bundle, trusted.open(), publishers, now=now, allow_simulated=allow_simulated,
                               keys_body=keys_body)
    try:
        result = verify_with_proofs(bundle, proofs, trusted, publishers, now=now, allow_simulated=allow_simulated,
                                    keys_body=keys_body)
    except NoReleaseInProofs:
        if not read_log:
            raise
        why = "the gateway's proofs carry no unexpired release of the publisher"
    else:
        if result.release is not None or not read_log:
            return result
        why = "no release among the gateway's proofs admits it"
    full = verify_with_log(bundle, trusted.open(), publishers, now=now, allow_simulated=allow_simulated,
                           keys_body=keys_body)
    return dataclasses.replace(full, fallback=why)
