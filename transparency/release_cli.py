"""``veil release keygen|create|sign|show``: the publisher's side of release statements.

``create`` writes the unsigned statement text (name, validity window, and the expected values as a client policy
table, validated by the same parser clients use); ``sign`` signs it with the publisher's Ed25519 key as a C2SP
signed note; ``veil log append`` then puts it in the log.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from tlog import Signer, TlogError, generate_signer, parse_verifier_key

from .statements import open_release, release_text, sign_release


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="release_command", required=True)
    k = sub.add_parser("keygen", help="make a publisher key pair (Ed25519, C2SP signed-note encoding)")
    k.add_argument("--name", required=True, help="the key name (a scheme-less URL, e.g. releases.example.org)")
    k.add_argument("--out", required=True, metavar="FILE", help="private key file (written 0600); FILE.pub gets "
                   "the verifier key clients pass as --publisher")
    c = sub.add_parser("create", help="write an unsigned release statement")
    c.add_argument("--name", required=True, help="release name (e.g. veil-gateway 1.4.0)")
    c.add_argument("--policy", required=True, metavar="FILE", help="the expected values as a client policy TOML "
                   "(platforms, [sev-snp] measurements, [tdx] ..., [nitro] ..., [nvidia] versions, [config] require)")
    c.add_argument("--not-before", type=int, metavar="UNIX", help="start of validity (default: now)")
    c.add_argument("--days", type=int, default=90, help="validity in days (default: 90)")
    c.add_argument("--out", required=True, metavar="FILE", help="where to write the statement text")
    s = sub.add_parser("sign", help="sign a statement with the publisher's key")
    s.add_argument("statement", metavar="FILE", help="the statement text from veil release create")
    s.add_argument("--key", required=True, metavar="FILE", help="the publisher's private key file")
    s.add_argument("--out", required=True, metavar="FILE", help="where to write the signed release")
    v = sub.add_parser("show", help="verify a signed release against a publisher key and print it")
    v.add_argument("release", metavar="FILE")
    v.add_argument("--publisher", required=True, action="append", metavar="VKEY", help="publisher verifier key")


def _policy_table(path: str) -> dict[str, Any]:
    from enclave.attestation import EvidenceFormatError, Policy

    data = tomllib.loads(Path(path).read_text())
    try:
        Policy.from_dict(data, base=Path(path).resolve().parent)
    except EvidenceFormatError as exc:
        raise SystemExit(f"veil release: policy {path}: {exc}") from None
    return data


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def run(args: argparse.Namespace) -> int:
    try:
        if args.release_command == "keygen":
            signer = generate_signer(args.name)
            _write_private(args.out, signer.skey() + "\n")
            Path(args.out + ".pub").write_text(signer.verifier.vkey() + "\n")
            print(signer.verifier.vkey())
        elif args.release_command == "create":
            nb = args.not_before if args.not_before is not None else int(time.time())
            text = release_text(args.name, nb, nb + args.days * 86400, _policy_table(args.policy))
            Path(args.out).write_text(text)
        elif args.release_command == "sign":
            signer = Signer.parse(Path(args.key).read_text())
            Path(args.out).write_bytes(sign_release(Path(args.statement).read_text(), signer))
        else:
            rel = open_release(Path(args.release).read_bytes(), [parse_verifier_key(k) for k in args.publisher])
            print(json.dumps({"name": rel.name, "not_before": rel.not_before, "not_after": rel.not_after,
                              "publisher": rel.publisher, "leaf_hash": rel.leaf_hash.hex(), "policy": rel.policy},
                             indent=2))
    except (TlogError, OSError, ValueError) as exc:
        print(f"veil release: {exc}", file=sys.stderr)
        return 2
    return 0
