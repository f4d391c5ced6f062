"""The client's check of a gateway's evidence before it sends anything (fail closed).

The verification itself lives in ``enclave.attestation`` (one implementation, shared with the gateway side and
``veil attest``); this module adapts it to :class:`proxy.transport.OhttpClient`'s verifier hook.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from enclave.attestation import AttestationError, Bundle, BundleError, Policy, Verdict, verify_bundle
from enclave.attestation import evidence_expiry as bundle_expiry
from transparency.client import DEFAULT_LOG_STATE

if TYPE_CHECKING:
    from tlog import Verifier as NoteVerifier
    from transparency.client import TrustedLog

log = logging.getLogger("veil.client")

class AttestationRefused(Exception):
    """The gateway's evidence does not pass; nothing may be sent to its keys."""

    def __init__(self, message: str, verdict: Verdict | None = None) -> None:
        super().__init__(message)
        self.verdict = verdict


#: A policy as callers give it: loaded already, or the path of its TOML file (``veil proxy --policy FILE``).
PolicyLike = Policy | str | os.PathLike[str]


def load_policy(policy: PolicyLike | None) -> Policy:
    """``policy`` as a :class:`Policy`: a path is loaded (relative files it names are read from its folder); None is
    the default policy, which accepts no measurement.

    Raises:
        AttestationError: the file cannot be read or is not a valid policy (a typo must not loosen it).
    """
    if policy is None:
        return Policy()
    if isinstance(policy, Policy):
        return policy
    return Policy.load(os.fspath(policy))


@dataclass(frozen=True)
class Transparency:
    """Trust a publisher through a transparency log instead of naming measurements (``veil proxy --publisher VKEY
    --log URL --log-key VKEY``): the policy is the publisher's unexpired releases included in the log, and the
    gateway's key configuration must be logged (a key not in the log may be a split view: refused).

    Keys are verifier keys (``name+hexid+base64``) as strings or parsed ``tlog.Verifier`` objects. ``state_file``
    keeps the last checkpoint seen (a rolled-back or forked log is refused against it); None keeps none.
    ``fetch`` replaces the HTTP fetch of the log's static paths (tests, a mirror)."""

    publishers: Sequence[str | NoteVerifier]
    log: str
    log_key: str | NoteVerifier
    witnesses: Sequence[str | NoteVerifier] = ()
    min_witnesses: int = 0
    state_file: str | os.PathLike[str] | None = DEFAULT_LOG_STATE
    fetch: Callable[[str], bytes] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.publishers:
            raise ValueError("transparency: at least one publisher key is needed")
        self.trusted_log()  # bad keys fail here, not at the first request
        self.publisher_keys()

    def publisher_keys(self) -> list[NoteVerifier]:
        from tlog import parse_verifier_key

        return [parse_verifier_key(k) if isinstance(k, str) else k for k in self.publishers]

    def trusted_log(self) -> TrustedLog:
        from tlog import parse_verifier_key
        from transparency.client import TrustedLog, http_fetcher

        def key(k: str | NoteVerifier) -> NoteVerifier:
            return parse_verifier_key(k) if isinstance(k, str) else k

        return TrustedLog(key(self.log_key), self.fetch or http_fetcher(self.log),
                          Path(self.state_file) if self.state_file is not None else None,
                          [key(w) for w in self.witnesses], self.min_witnesses)


def _log_refusal(exc: Exception) -> str:
    """Which log check refused, in words (the message of the error says the details)."""
    from tlog.errors import ConsistencyError, ProofError, StatementError
    from transparency.client import LogUnavailableError

    if isinstance(exc, LogUnavailableError):
        kind = "log unreachable"
    elif isinstance(exc, ConsistencyError):
        kind = "log fork or rollback against the last checkpoint seen"
    elif isinstance(exc, ProofError):
        kind = "log proof does not verify"
    elif isinstance(exc, StatementError):
        kind = "not in the log"
    else:
        kind = "log checkpoint refused"
    return f"refused by the transparency log ({kind}): {exc}"


def make_verifier(
    *, allow_simulated: bool, policy: PolicyLike | None = None, transparency: Transparency | None = None
) -> Callable[[bytes, bytes], tuple[object, bool]]:
    """A verifier for :class:`proxy.transport.OhttpClient`: ``(bundle_json, keys_body) -> (verdict, simulated)``.

    ``policy`` is a :class:`Policy` or the path of a policy file (loaded now: a bad file fails here, not at the first
    request). Without a policy, the default one applies: no measurement is allowed, so every real platform is refused
    until the user names the measurements they trust (fail closed).

    With ``transparency``, the policy comes from the publisher's logged releases and the key configuration must be
    in the log (see :class:`Transparency`); a local ``policy`` then narrows it: both must pass. That verifier fetches
    the log (blocking I/O) and is marked ``blocking``, so :class:`~proxy.transport.OhttpClient` runs it in a thread.
    """
    if transparency is not None:
        return _log_verifier(allow_simulated, None if policy is None else load_policy(policy), transparency)
    pol = load_policy(policy)

    def verify(bundle_json: bytes, keys_body: bytes) -> tuple[object, bool]:
        try:
            bundle = Bundle.from_json(bundle_json)
            verdict = verify_bundle(bundle, keys_body, pol, allow_simulated=allow_simulated)
        except (BundleError, AttestationError) as exc:
            raise AttestationRefused(f"evidence unusable: {exc}") from None
        if not verdict.ok:
            failed = "; ".join(c.line() for c in verdict.failures[:3])
            if verdict.simulated and not allow_simulated:
                failed = ("the gateway presents SIMULATED attestation (no TEE); refusing it. Start the client with "
                          "--insecure-allow-simulated for development only.")
            raise AttestationRefused(failed, verdict)
        if verdict.simulated:
            log.warning("accepted SIMULATED attestation (--insecure-allow-simulated): no TEE protects this gateway")
        return verdict, verdict.simulated

    return verify


def _log_verifier(allow_simulated: bool, local: Policy | None, transparency: Transparency
                  ) -> Callable[[bytes, bytes], tuple[object, bool]]:
    from tlog import TlogError
    from transparency.verify import bundle_proofs, verify_with_proofs_or_log

    trusted = transparency.trusted_log()
    publishers = transparency.publisher_keys()

    def verify(bundle_json: bytes, keys_body: bytes) -> tuple[object, bool]:
        try:
            bundle = Bundle.from_json(bundle_json)
        except BundleError as exc:
            raise AttestationRefused(f"evidence unusable: {exc}") from None
        now = dt.datetime.now(dt.timezone.utc)
        # Without a local policy the release's verification also checks the fetched keys (one verify_bundle call);
        # with one, the evidence is verified again below under it, the keys checked there.
        keys = keys_body if local is None else None
        try:
            # The gateway's proofs when its evidence carries them (offline but for consistency with the kept
            # checkpoint); else the whole log. A present but bad attachment is refused, never skipped; valid proofs
            # without a release that admits the gateway send the client to the whole log (the line says so).
            result = verify_with_proofs_or_log(bundle, bundle_proofs(bundle), trusted, publishers, now=now,
                                               allow_simulated=allow_simulated, read_log=True, keys_body=keys)
        except TlogError as exc:
            raise AttestationRefused(_log_refusal(exc)) from None
        except AttestationError as exc:
            raise AttestationRefused(f"evidence unusable: {exc}") from None
        if result.release is None:
            failed = "; ".join(c.line() for c in result.verdict.failures[:3])
            raise AttestationRefused(f"no logged release of the publisher admits this gateway: {failed}",
                                     result.verdict)
        if local is None:
            verdict = result.verdict
        else:  # the local policy narrows the release's: the same evidence again, for the exact keys fetched
            try:
                verdict = verify_bundle(bundle, keys_body, local, now=now, allow_simulated=allow_simulated)
            except AttestationError as exc:
                raise AttestationRefused(f"evidence unusable: {exc}") from None
        if not verdict.ok:
            which = "the local policy (--policy)" if local is not None else f"release {result.release.name!r}"
            failed = "; ".join(c.line() for c in verdict.failures[:3])
            raise AttestationRefused(f"refused by {which}: {failed}", verdict)
        verdict.add(result.line(), True, "inclusion proofs and checkpoint verified")
        log.info("log: %s", result.line())
        if verdict.simulated:
            log.warning("accepted SIMULATED attestation (--insecure-allow-simulated): no TEE protects this gateway")
        return verdict, verdict.simulated

    verify.blocking = True  # type: ignore[attr-defined]
    return verify


def evidence_expiry(bundle_json: bytes) -> float | None:
    """When a bundle's evidence stops verifying by itself (unix time), or None if it does not: an MAA token's
    ``exp`` (a ``platform = "maa"`` bundle or a token attached to Azure evidence), a Nitro document's leaf
    certificate's ``not_after`` (the NSM reuses the leaf): the platform registry's ``expiry``. Read, not verified:
    call it on bytes that just verified, to know when to verify again. Unparsable bundles give None (they did not
    verify anyway)."""
    try:
        bundle = Bundle.from_json(bundle_json)
    except BundleError:
        return None
    return bundle_expiry(bundle)
