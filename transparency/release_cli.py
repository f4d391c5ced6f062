"""``veil release keygen|create|sign|show|publish``: the publisher's side of release statements.

``create`` writes the unsigned statement text (name, validity window, and the expected values as a client policy
table, validated by the same parser clients use; SEV-SNP launch digests can be computed from the image parts with
``--snp-*``); ``sign`` signs it with the publisher's Ed25519 key as a C2SP signed note; ``publish`` checks it and
appends it to a log directory (as ``veil log append`` does, after the checks).
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
    _add_snp_arguments(c)
    s = sub.add_parser("sign", help="sign a statement with the publisher's key")
    s.add_argument("statement", metavar="FILE", help="the statement text from veil release create")
    s.add_argument("--key", required=True, metavar="FILE", help="the publisher's private key file")
    s.add_argument("--out", required=True, metavar="FILE", help="where to write the signed release")
    v = sub.add_parser("show", help="verify a signed release against a publisher key and print it")
    v.add_argument("release", metavar="FILE")
    v.add_argument("--publisher", required=True, action="append", metavar="VKEY", help="publisher verifier key")
    p = sub.add_parser("publish", help="check a signed release (publisher key, policy, not expired) and append it "
                       "to a log directory")
    p.add_argument("release", metavar="FILE", help="the signed release (veil release sign)")
    p.add_argument("--log-dir", required=True, metavar="DIR", help="the log's directory (veil log init); a URL is "
                   "refused: only the log operator appends, with veil log append on that directory")
    p.add_argument("--publisher", required=True, action="append", metavar="VKEY",
                   help="the publisher's verifier key the release must be signed by (repeatable)")


def _add_snp_arguments(c: argparse.ArgumentParser) -> None:
    from .snp_measure import VCPU_TYPES, VMM_TYPES

    g = c.add_argument_group("SEV-SNP launch digests (sev-snp-measure), added to the policy's [sev-snp] measurements")
    g.add_argument("--snp-ovmf", metavar="FILE", help="the OVMF firmware image the guest boots (with SEV metadata)")
    g.add_argument("--snp-kernel", metavar="FILE",
                   help="the kernel QEMU loads directly (-kernel; needs an AmdSev OVMF)")
    g.add_argument("--snp-initrd", metavar="FILE", help="the initrd (-initrd; with --snp-kernel)")
    g.add_argument("--snp-append", metavar="STR", help="the kernel command line (-append; with --snp-kernel)")
    g.add_argument("--snp-vcpus", action="append", default=[], metavar="N[,N...]",
                   help="vCPU counts, one digest each (repeatable, e.g. 1,2,4,8)")
    g.add_argument("--snp-vcpu-type", action="append", default=[], metavar="TYPE[,TYPE...]",
                   help=f"vCPU types, one digest each per count (repeatable; {', '.join(VCPU_TYPES)}); "
                   "needed with QEMU")
    g.add_argument("--snp-vmm-type", default="QEMU", metavar="TYPE",
                   help=f"the VMM that launches the guest ({', '.join(VMM_TYPES)}; default: QEMU)")
    g.add_argument("--snp-guest-features", default="0x1", metavar="HEX",
                   help="the SEV features in the VMSA (default: 0x1, SNP active, as QEMU sets)")


def _policy_table(path: str) -> dict[str, Any]:
    data = tomllib.loads(Path(path).read_text())
    _check_policy(data, path)
    return data


def _check_policy(data: dict[str, Any], path: str) -> None:
    from enclave.attestation import EvidenceFormatError, Policy

    try:
        Policy.from_dict(data, base=Path(path).resolve().parent)
    except EvidenceFormatError as exc:
        raise SystemExit(f"veil release: policy {path}: {exc}") from None


def _snp_digests(args: argparse.Namespace) -> list[str]:
    """The launch digests the ``--snp-*`` options ask for (none without --snp-ovmf), one line each on stderr."""
    from .snp_measure import SnpImage, SnpMeasureError, launch_digests, parse_vcpu_types, parse_vcpus

    others = [args.snp_kernel, args.snp_initrd, args.snp_append, *args.snp_vcpus, *args.snp_vcpu_type]
    if args.snp_ovmf is None:
        if any(v is not None for v in others):
            raise SnpMeasureError("the --snp-* options describe a guest image: add --snp-ovmf FILE")
        return []
    try:
        features = int(args.snp_guest_features, 16)
    except ValueError:
        raise SnpMeasureError(f"--snp-guest-features {args.snp_guest_features!r} is not hex (e.g. 0x1)") from None
    image = SnpImage(Path(args.snp_ovmf), Path(args.snp_kernel) if args.snp_kernel else None,
                     Path(args.snp_initrd) if args.snp_initrd else None, args.snp_append, features, args.snp_vmm_type)
    digests = launch_digests(image, parse_vcpus(args.snp_vcpus), parse_vcpu_types(args.snp_vcpu_type))
    for shape, digest in digests:
        print(f"sev-snp: {shape.vcpus} vCPU {shape.vcpu_type or args.snp_vmm_type}: {digest}", file=sys.stderr)
    return [d for _, d in digests]


def _create(args: argparse.Namespace) -> None:
    from .snp_measure import merge_measurements

    policy = _policy_table(args.policy)
    digests = _snp_digests(args)
    if digests:
        policy = merge_measurements(policy, digests)
        _check_policy(policy, args.policy)
    nb = args.not_before if args.not_before is not None else int(time.time())
    Path(args.out).write_text(release_text(args.name, nb, nb + args.days * 86400, policy))


def _publish(args: argparse.Namespace) -> int:
    from .publish import is_url, publish_release

    if is_url(args.log_dir):
        print(f"veil release: {args.log_dir} is a log's URL; a log is appended to only by its operator, on the "
              f"log's directory: send {args.release} to the operator, who runs: veil log append --dir DIR "
              f"{Path(args.release).name} (the log has no HTTP endpoint for writing, on purpose)", file=sys.stderr)
        return 3
    pub = publish_release(Path(args.release).read_bytes(), [parse_verifier_key(k) for k in args.publisher],
                          Path(args.log_dir), time.time())
    print(f"index {pub.index}")
    print(f"checkpoint size {pub.size}")
    if not pub.appended:
        print(f"release {pub.release.name!r} was already in the log at index {pub.index}: nothing appended",
              file=sys.stderr)
    return 0


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
            _create(args)
        elif args.release_command == "publish":
            return _publish(args)
        elif args.release_command == "sign":
            signer = Signer.parse(Path(args.key).read_text())
            Path(args.out).write_bytes(sign_release(Path(args.statement).read_text(), signer))
        else:
            rel = open_release(Path(args.release).read_bytes(), [parse_verifier_key(k) for k in args.publisher])
            print(json.dumps({"name": rel.name, "not_before": rel.not_before, "not_after": rel.not_after,
                              "publisher": rel.publisher, "leaf_hash": rel.leaf_hash.hex(), "policy": rel.policy},
                             indent=2))
    except (TlogError, OSError, ValueError) as exc:
        # SnpMeasureError is a ValueError; its message names the option to change
        print(f"veil release: {exc}", file=sys.stderr)
        return 2
    return 0
