"""The gateway's model loading step: decrypt and verify an encrypted model into TEE memory before anything serves.

``veil gateway --encrypted-model DIR --model-key-file F`` (any engine) runs :func:`load_for_gateway` before it
listens: the key comes from a :data:`~enclave.model.model_key.KeySource` (the key file today; a key broker that releases
keys to attested gateways plugs in the same way), the model is decrypted into a fresh directory on a tmpfs mount,
every chunk and every file's SHA-256 are verified, and only then is the engine started on that directory. Any
failure ends the process with a non-zero status and the reason; the directory is removed when the gateway exits.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .container import DecryptStats, decrypt_model
from .errors import ModelError
from .model_key import KeySource, key_file_source
from .tmpfs import filesystem_of, is_memory_backed

log = logging.getLogger("veil.model")

DEFAULT_TMPFS = "/dev/shm"


@dataclass
class DecryptedModel:
    """A verified, decrypted model in memory; :meth:`remove` wipes it."""

    path: Path
    stats: DecryptStats

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def decrypt_to_memory(
    enc_dir: str,
    key_source: KeySource,
    *,
    tmpfs: str = DEFAULT_TMPFS,
    allow_disk: bool = False,
    threads: int | None = None,
) -> DecryptedModel:
    """Decrypt and verify ``enc_dir`` into a new private directory under ``tmpfs`` (which must be a tmpfs mount
    unless ``allow_disk``). Raises :class:`ModelError` with the reason; nothing is left behind then."""
    root = Path(tmpfs)
    if not root.is_dir():
        raise ModelError(f"model tmpfs {root} is not a directory")
    try:
        mount, fstype = filesystem_of(root)
    except OSError as exc:
        raise ModelError(f"cannot tell which filesystem holds {root}: {exc}") from None
    if not is_memory_backed(root):
        if not allow_disk:
            raise ModelError(
                f"refusing to decrypt the model to {root}: it is on {fstype or 'an unknown filesystem'} (mount "
                f"{mount or '?'}), storage outside the TEE's memory where plaintext weights would persist. Give "
                "--model-tmpfs a tmpfs mount (/dev/shm, or a Kubernetes emptyDir with medium: Memory); "
                "--insecure-allow-disk-model is for tests only")
        log.warning("decrypting the model to %s on %s: NOT in memory (--insecure-allow-disk-model; tests only)",
                    root, fstype)
    out = Path(tempfile.mkdtemp(prefix="veil-model-", dir=root))
    try:
        stats = decrypt_model(enc_dir, out, key_source, threads=threads)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return DecryptedModel(out, stats)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit (so ``finally`` blocks run) instead of ending the process on the spot."""

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(f"veil gateway: stopped by signal {signum} while loading the model")

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_for_gateway(args: argparse.Namespace, key_source: KeySource | None = None) -> DecryptedModel | None:
    """``--encrypted-model``: decrypt and verify it into memory, or exit with the reason. ``None`` without it.

    ``key_source`` is the key broker hook: without it the key comes from ``--model-key-file``.
    """
    enc_dir: str | None = getattr(args, "encrypted_model", None)
    if not enc_dir:
        return None
    if key_source is None:
        if not args.model_key_file:
            raise SystemExit("veil gateway: --encrypted-model needs --model-key-file (the model key)")
        try:
            key_source = key_file_source(args.model_key_file)
        except ModelError as exc:
            raise SystemExit(f"veil gateway: {exc}") from None
    log.info("loading the encrypted model %s into %s", enc_dir, args.model_tmpfs)
    with _exit_on_sigterm():  # a stop during decryption still wipes the partial plaintext
        try:
            model = decrypt_to_memory(enc_dir, key_source, tmpfs=args.model_tmpfs,
                                      allow_disk=bool(args.insecure_allow_disk_model),
                                      threads=args.model_decrypt_threads or None)
        except ModelError as exc:
            raise SystemExit(f"veil gateway: cannot load the encrypted model {enc_dir}: {exc}") from None
    atexit.register(model.remove)
    s = model.stats
    log.info("model verified and decrypted (key id %s, %d files, %.1f MB) in %.2f s (%.2f GB/s, %d threads)",
             s.manifest.key_id, len(s.manifest.files), s.manifest.total_bytes / 1e6, s.seconds, s.gb_per_s, s.threads)
    return model
