"""``veil log init|append|serve|monitor``: run a transparency log whose tiles are static files.

``init`` makes the directory (SQLite state, the log key, ``public/``); ``append`` sequences signed releases and
key-configuration entries and rewrites the tiles and checkpoint; ``serve`` serves ``public/`` over HTTP (any web
server, object store or CDN can serve it instead; ``append --evidence`` also stores the bundle there as
``evidence/<sha256>``); ``monitor`` follows a log, verifies every checkpoint's consistency with the last one, and
reports releases not signed by an expected publisher, key entries that name no logged release, and key entries whose
evidence is not available, does not match the entry or does not verify under the release policy that admits it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tlog import TlogError, Verifier, leaf_hash, parse_verifier_key

from .log import MAX_EVIDENCE_BYTES, evidence_path
from .statements import (
    KeyEntry,
    Release,
    entry_kind,
    key_entry_bytes,
    open_release,
    parse_key_entry,
    usable_release,
)

if TYPE_CHECKING:
    from enclave.attestation import Check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="log_command", required=True)
    i = sub.add_parser("init", help="create a log directory and its signing key")
    i.add_argument("--dir", required=True, help="log directory (state, key, public/)")
    i.add_argument("--origin", required=True, help="the log's origin, a scheme-less URL (e.g. log.example.org/veil)")
    a = sub.add_parser("append", help="append signed releases and/or a gateway's key configuration")
    a.add_argument("--dir", required=True, help="log directory")
    a.add_argument("release", nargs="*", metavar="RELEASE", help="signed release files (veil release sign)")
    a.add_argument("--evidence", metavar="FILE", help="a gateway's evidence bundle: its key configuration is logged")
    a.add_argument("--gateway", metavar="NAME", help="the gateway's name in the key entry (with --evidence)")
    a.add_argument("--days", type=int, default=30, help="key entry validity in days (default: 30)")
    a.add_argument("--release-hash", metavar="HEX", help="leaf hash of the release the gateway runs")
    s = sub.add_parser("serve", help="serve the log's public/ directory over HTTP")
    s.add_argument("--dir", required=True, help="log directory")
    s.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    s.add_argument("--port", type=int, default=8090, help="listen port (default: 8090)")
    m = sub.add_parser("monitor", help="follow a log: verify consistency, report unexpected entries")
    m.add_argument("--log", required=True, metavar="URL", help="the log's tiles prefix URL")
    m.add_argument("--log-key", required=True, metavar="VKEY", help="the log's verifier key")
    m.add_argument("--publisher", action="append", default=[], metavar="VKEY", help="an expected publisher key")
    m.add_argument("--state", required=True, metavar="FILE", help="the monitor's last-checkpoint file")
    m.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default: 60)")
    m.add_argument("--once", action="store_true", help="check once and exit")
    m.add_argument("--evidence-url", metavar="URL",
                   help="where key entries' evidence is served, as evidence/<sha256> (default: the --log URL)")
    m.add_argument("--insecure-allow-simulated", action="store_true",
                   help="accept SIMULATED evidence in key entries (development only: no TEE)")


def key_entry_for_bundle(bundle_bytes: bytes, gateway: str, days: int, release: str | None) -> bytes:
    from enclave.attestation import Bundle
    from ohttp import decode_list

    bundle = Bundle.from_json(bundle_bytes)
    now = int(time.time())
    entry = KeyEntry(gateway, tuple(c.key_id for c in decode_list(bundle.key_config)),
                     hashlib.sha256(bundle.key_config).hexdigest(), hashlib.sha256(bundle_bytes).hexdigest(),
                     now - 60, now + days * 86400, release)
    return key_entry_bytes(entry)


class _EvidenceAlert(Exception):
    """Why a key entry's evidence is not accepted (one ALERT line)."""


def _failed_checks(failures: Sequence[Check]) -> str:
    """The first two failing checks, in words."""
    parts = []
    for c in failures[:2]:
        text = c.name
        if c.expected or c.found:
            text += f": expected {c.expected or '-'}, found {c.found or '-'}"
        if c.detail:
            text += f" ({c.detail})"
        parts.append(text)
    return "; ".join(parts)


def check_key_evidence(entry: KeyEntry, fetch: Callable[[str], bytes], releases: Mapping[str, bytes],
                       publishers: Sequence[Verifier], *, allow_simulated: bool) -> str:
    """The name of the release under whose policy the evidence ``entry`` names verifies, fetched as
    ``evidence/<evidence_sha256>``; else :class:`_EvidenceAlert` saying why not. ``releases``: the log's release
    entries by leaf hash (hex)."""
    from enclave.attestation import AttestationError, Bundle, BundleError, Policy, verify_bundle
    from ohttp import OHTTPError, decode_list

    from .client import LogUnavailableError

    try:
        data = fetch(evidence_path(entry.evidence_sha256))
    except LogUnavailableError as exc:
        raise _EvidenceAlert(f"evidence not available: {exc}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != entry.evidence_sha256:
        raise _EvidenceAlert(f"evidence does not match the entry: its SHA-256 is {got[:16]}..., the entry names "
                             f"{entry.evidence_sha256[:16]}...")
    try:
        bundle = Bundle.from_json(data)
    except BundleError as exc:
        raise _EvidenceAlert(f"evidence is not an evidence bundle: {exc}") from None
    if hashlib.sha256(bundle.key_config).hexdigest() != entry.key_config_sha256:
        raise _EvidenceAlert(f"evidence does not match the entry: it binds another key configuration than "
                             f"key_config_sha256 {entry.key_config_sha256[:16]}...")
    try:
        ids = tuple(c.key_id for c in decode_list(bundle.key_config))
    except OHTTPError as exc:
        raise _EvidenceAlert(f"evidence: the key configuration it binds does not parse: {exc}") from None
    if ids != entry.key_ids:
        raise _EvidenceAlert(f"evidence does not match the entry: it binds key ids {list(ids)}, the entry names "
                             f"{list(entry.key_ids)}")
    # Judge the evidence as of when the entry became valid, not now: evidence is collected when it is logged, and its
    # certificates or tokens (an MAA token lives hours) may have expired since, yet it proved then what the entry
    # claims. That is the entry's not_before, or the bundle's issued_at when later within the entry's window: `veil
    # log append` sets not_before a minute back, when a token collected just now (its nbf) or a release created just
    # before was not valid yet. issued_at is unsigned, so it is never believed outside the window the entry claims.
    # No client nonce and no fetched keys (a fresh, nonce-free verification): the bundle is the one the gateway
    # serves everyone, and the keys it binds were compared with the entry above.
    when = min(max(float(entry.not_before), bundle.issued_at), float(entry.not_after - 1))
    at = dt.datetime.fromtimestamp(when, dt.timezone.utc)  # windows are bounded when parsed (statements.MAX_TIME)
    stamp = at.isoformat(timespec="seconds")
    if entry.release is not None:
        try:
            rel = open_release(releases[entry.release], publishers)
        except TlogError as exc:
            raise _EvidenceAlert(f"the release it names is not signed by an expected publisher: {exc}") from None
        if not rel.valid_at(when):
            raise _EvidenceAlert(f"the release it names, {rel.name!r}, is not valid at {stamp}")
        candidates = [rel]
    else:
        candidates = [r for raw in releases.values() if isinstance(r := usable_release(raw, publishers, when), Release)]
        if not candidates:
            raise _EvidenceAlert(f"no release of an expected publisher in the log is valid at {stamp}")
    why: list[str] = []
    for rel in candidates:
        try:
            verdict = verify_bundle(bundle, None, Policy.from_dict(rel.policy), now=at, allow_simulated=allow_simulated)
        except AttestationError as exc:
            why.append(f"{rel.name!r}: {exc}")
            continue
        if verdict.ok:
            return rel.name
        why.append(f"{rel.name!r}: {_failed_checks(verdict.failures)}")
    raise _EvidenceAlert(f"evidence does not verify at {stamp} under release " + " | ".join(why))


def _monitor_once(args: argparse.Namespace, seen: int) -> tuple[int, int]:
    from .client import TrustedLog, http_fetcher

    trusted = TrustedLog(parse_verifier_key(args.log_key), http_fetcher(args.log), Path(args.state))
    view = trusted.open()
    evidence = http_fetcher(args.evidence_url or args.log, limit_of=lambda _path: MAX_EVIDENCE_BYTES, what="evidence")
    publishers = [parse_verifier_key(k) for k in args.publisher]
    releases: dict[str, bytes] = {}
    problems = 0
    for raw in view.entries:
        if entry_kind(raw) == "release":
            releases[leaf_hash(raw).hex()] = raw
    for i in range(seen, view.size):
        raw = view.entries[i]
        view.prove(i)
        kind = entry_kind(raw)
        if kind == "release":
            try:
                rel = open_release(raw, publishers)
                print(f"entry {i}: release {rel.name!r} by {rel.publisher}")
            except TlogError as exc:
                problems += 1
                print(f"ALERT entry {i}: release not signed by an expected publisher: {exc}")
        elif kind == "key":
            try:
                entry = parse_key_entry(raw)
            except TlogError as exc:
                problems += 1
                print(f"ALERT entry {i}: malformed key entry: {exc}")
                continue
            if entry.release is not None and entry.release not in releases:
                problems += 1
                print(f"ALERT entry {i}: key entry of {entry.gateway} names a release not in the log")
            else:
                try:
                    name = check_key_evidence(entry, evidence, releases, publishers,
                                              allow_simulated=args.insecure_allow_simulated)
                except _EvidenceAlert as exc:
                    problems += 1
                    print(f"ALERT entry {i}: key entry of {entry.gateway}: {exc}")
                else:
                    print(f"entry {i}: key configuration of {entry.gateway} (key ids {list(entry.key_ids)}): OK, "
                          f"its evidence verifies under release {name!r}")
        else:
            problems += 1
            print(f"ALERT entry {i}: unknown entry type")
    print(f"checkpoint {view.checkpoint.checkpoint.origin} size {view.size}: consistent")
    return problems, view.size


def run(args: argparse.Namespace) -> int:
    from .log import Log

    try:
        if args.log_command == "init":
            log = Log.init(args.dir, args.origin)
            print(log.vkey)
        elif args.log_command == "append":
            log = Log(args.dir)
            entries = [Path(f).read_bytes() for f in args.release]
            for raw in entries:
                if entry_kind(raw) != "release":
                    raise TlogError("not a veil/release/v1 statement")
            if args.evidence:
                if not args.gateway:
                    raise TlogError("--evidence needs --gateway NAME")
                bundle = Path(args.evidence).read_bytes()
                if len(bundle) > MAX_EVIDENCE_BYTES:
                    raise TlogError(f"{args.evidence}: {len(bundle)} bytes; an evidence bundle is at most "
                                    f"{MAX_EVIDENCE_BYTES}")
                entries.append(key_entry_for_bundle(bundle, args.gateway, args.days, args.release_hash))
                # served as public/evidence/<sha256> for monitors, written before the checkpoint that includes it
                log.store_evidence(bundle)
            for idx in log.append(entries):
                print(f"index {idx}")
        elif args.log_command == "serve":
            from aiohttp import web

            public = (Path(args.dir) / "public").resolve()
            app = web.Application()
            app.router.add_static("/", public, show_index=False, follow_symlinks=False)
            web.run_app(app, host=args.host, port=args.port, print=None)
        else:
            seen = 0
            while True:
                try:
                    problems, seen = _monitor_once(args, seen)
                except TlogError as exc:
                    print(f"ALERT: {exc}", file=sys.stderr)
                    if args.once:
                        return 4
                    problems = 0
                else:
                    if args.once:
                        return 4 if problems else 0
                time.sleep(args.interval)
    except (TlogError, OSError, ValueError) as exc:
        print(f"veil log: {exc}", file=sys.stderr)
        return 2
    return 0
