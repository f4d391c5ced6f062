"""``veil model``: the model owner's tool. Encrypt a model directory, decrypt it again to check, make a key.

::

    veil model keygen KEYFILE --key-id ID
    veil model encrypt DIR OUT --key-file KEYFILE [--key-id ID]     (creates KEYFILE when it does not exist)
    veil model decrypt IN OUT --key-file KEYFILE

Exit status 0 on success, 1 with the reason on any error (a wrong key, a tampered chunk, a truncated file ...).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from .container import DEFAULT_CHUNK_SIZE, decrypt_model, encrypt_model
from .errors import ModelError
from .model_key import ModelKey, key_file_source, load_key_file, write_key_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil model`` actions."""
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    k = sub.add_parser("keygen", help="write a new random model key (32 bytes) to a key file (mode 0600)")
    k.add_argument("key_file", metavar="KEYFILE")
    k.add_argument("--key-id", required=True, help="name of the key (the manifest names it; a key broker finds it)")
    e = sub.add_parser("encrypt", help="encrypt every file of a model directory (AES-256-GCM, chunked)")
    e.add_argument("src", metavar="DIR", help="the model directory (Hugging Face layout: safetensors, config, ...)")
    e.add_argument("out", metavar="OUT", help="new directory for the encrypted model")
    e.add_argument("--key-file", required=True, help="model key file; created with a new key when it does not exist")
    e.add_argument("--key-id", help="key id (required when the key file is created; must match it otherwise)")
    e.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per authenticated chunk "
                   f"(default {DEFAULT_CHUNK_SIZE})")
    e.add_argument("--threads", type=int, default=0, help="threads (default: one per CPU)")
    d = sub.add_parser("decrypt", help="verify and decrypt an encrypted model (the owner's check)")
    d.add_argument("src", metavar="IN", help="the encrypted model directory")
    d.add_argument("out", metavar="OUT", help="new (or empty) directory for the plaintext model")
    d.add_argument("--key-file", required=True, help="model key file")
    d.add_argument("--threads", type=int, default=0, help="threads (default: one per CPU)")


def _key_for_encrypt(path: str, key_id: str | None) -> ModelKey:
    if not os.path.exists(path):
        if not key_id:
            raise ModelError(f"model key file {path} does not exist; give --key-id to create it")
        key = ModelKey.generate(key_id)
        write_key_file(path, key)
        print(f"created model key file {path} (key id {key_id}); keep it secret, it decrypts the model")
        return key
    key = load_key_file(path)
    if key_id and key_id != key.key_id:
        raise ModelError(f"--key-id {key_id!r} but model key file {path} holds key id {key.key_id!r}")
    return key


def run(args: argparse.Namespace) -> int:
    """Run one ``veil model`` action."""
    try:
        if args.model_command == "keygen":
            write_key_file(args.key_file, ModelKey.generate(args.key_id))
            print(f"wrote model key {args.key_id} to {args.key_file}")
        elif args.model_command == "encrypt":
            key = _key_for_encrypt(args.key_file, args.key_id)
            t0 = time.perf_counter()
            m = encrypt_model(args.src, args.out, key, chunk_size=args.chunk_size, threads=args.threads or None)
            dt = time.perf_counter() - t0
            print(f"encrypted {len(m.files)} files ({m.total_bytes / 1e6:.1f} MB) from {args.src} into {args.out} "
                  f"in {dt:.2f} s; key id {m.key_id}, manifest id {m.manifest_id.hex()}")
            print(f"manifest sha256 {m.sha256} (a gateway serving it binds this as model_manifest_sha256)")
        else:
            stats = decrypt_model(args.src, args.out, key_file_source(args.key_file), threads=args.threads or None)
            m = stats.manifest
            for f in m.files:
                print(f"  {f.sha256}  {f.size:>14}  {f.name}")
            print(f"verified and decrypted {len(m.files)} files ({m.total_bytes / 1e6:.1f} MB) into "
                  f"{Path(args.out)} in {stats.seconds:.2f} s ({stats.gb_per_s:.2f} GB/s, {stats.threads} threads); "
                  f"key id {m.key_id}")
            print(f"manifest sha256 {m.sha256}")
    except ModelError as exc:
        raise SystemExit(f"veil model {args.model_command}: {exc}") from None
    return 0
