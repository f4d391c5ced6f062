"""``veil log init|append|serve|monitor``: run a transparency log whose tiles are static files.

``init`` makes the directory (SQLite state, the log key, ``public/``); ``append`` sequences signed releases and
key-configuration entries and rewrites the tiles and checkpoint; ``serve`` serves ``public/`` over HTTP (any web
server, object store or CDN can serve it instead); ``monitor`` follows a log, verifies every checkpoint's
consistency with the last one, and reports releases not signed by an expected publisher and key entries that
name no logged release.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from tlog import TlogError, parse_verifier_key

from .statements import KeyEntry, entry_kind, key_entry_bytes, open_release, parse_key_entry


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


def key_entry_for_bundle(bundle_bytes: bytes, gateway: str, days: int, release: str | None) -> bytes:
    from enclave.attestation import Bundle
    from ohttp import decode_list

    bundle = Bundle.from_json(bundle_bytes)
    now = int(time.time())
    entry = KeyEntry(gateway, tuple(c.key_id for c in decode_list(bundle.key_config)),
                     hashlib.sha256(bundle.key_config).hexdigest(), hashlib.sha256(bundle_bytes).hexdigest(),
                     now - 60, now + days * 86400, release)
    return key_entry_bytes(entry)


def _monitor_once(args: argparse.Namespace, seen: int) -> tuple[int, int]:
    from .client import TrustedLog, http_fetcher

    trusted = TrustedLog(parse_verifier_key(args.log_key), http_fetcher(args.log), Path(args.state))
    view = trusted.open()
    publishers = [parse_verifier_key(k) for k in args.publisher]
    releases = set()
    problems = 0
    for raw in view.entries:
        if entry_kind(raw) == "release":
            releases.add(hashlib.sha256(b"\x00" + raw).hexdigest())
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
            entry = parse_key_entry(raw)
            if entry.release is not None and entry.release not in releases:
                problems += 1
                print(f"ALERT entry {i}: key entry of {entry.gateway} names a release not in the log")
            else:
                print(f"entry {i}: key configuration of {entry.gateway} (key ids {list(entry.key_ids)})")
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
                entries.append(key_entry_for_bundle(Path(args.evidence).read_bytes(), args.gateway, args.days,
                                                    args.release_hash))
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
