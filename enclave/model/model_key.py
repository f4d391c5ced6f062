"""Model keys: a key file format for the model owner, and the hook a key broker plugs into.

A model key file is JSON, written with mode 0600::

    {"key_id": "smollm2-2025-06", "key": "<64 hex: 32 random bytes>"}

The gateway never needs to know where a key comes from: it asks a :data:`KeySource` for the key id that the
encrypted model's manifest names. ``--model-key-file`` gives :func:`key_file_source`; a key broker that releases
keys only to attested gateways provides another function with the same shape.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from .errors import ModelKeyError

#: AES-256: the only key length model keys have.
KEY_BYTES: Final = 32
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}\Z")

#: key id -> the 32-byte model key. Raises :class:`ModelKeyError` (or any exception, reported as such) when the key
#: cannot be had. The hook for a key broker: ``load_for_gateway(args, key_source=broker.model_key)``.
KeySource = Callable[[str], bytes]


def check_key_id(key_id: str) -> str:
    """``key_id`` if it is a usable key id (letters, digits and ``_.:@/-``, at most 128 characters)."""
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise ModelKeyError(f"key id {key_id!r} must be 1-128 letters, digits or _.:@/- (starting with a letter "
                            "or digit)")
    return key_id


@dataclass(frozen=True, repr=False)
class ModelKey:
    """A model key and its id. ``repr`` never shows the key."""

    key_id: str
    key: bytes

    def __post_init__(self) -> None:
        check_key_id(self.key_id)
        if len(self.key) != KEY_BYTES:
            raise ModelKeyError(f"a model key is {KEY_BYTES} bytes, got {len(self.key)}")

    def __repr__(self) -> str:
        return f"ModelKey(key_id={self.key_id!r}, key=<{KEY_BYTES} bytes>)"

    @classmethod
    def generate(cls, key_id: str) -> ModelKey:
        """A fresh random key (``os.urandom``)."""
        return cls(check_key_id(key_id), os.urandom(KEY_BYTES))


def load_key_file(path: str | os.PathLike[str]) -> ModelKey:
    """Read and validate a model key file."""
    try:
        obj: Any = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ModelKeyError(f"cannot read model key file {path}: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError:
        raise ModelKeyError(f"model key file {path} is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str) or "key_id" not in obj:
        raise ModelKeyError(f'model key file {path} must hold {{"key_id": ..., "key": "<64 hex>"}}')
    try:
        key = bytes.fromhex(obj["key"])
    except ValueError:
        raise ModelKeyError(f"model key file {path}: key is not hex") from None
    try:
        return ModelKey(str(obj["key_id"]), key)
    except ModelKeyError as exc:
        raise ModelKeyError(f"model key file {path}: {exc}") from None


def write_key_file(path: str | os.PathLike[str], key: ModelKey) -> None:
    """Write ``key`` to a new file readable by its owner only; never overwrites."""
    body = orjson.dumps({"key_id": key.key_id, "key": key.key.hex()}, option=orjson.OPT_INDENT_2) + b"\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ModelKeyError(f"model key file {path} exists already; not overwriting it") from None
    except OSError as exc:
        raise ModelKeyError(f"cannot create model key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)


def key_file_source(path: str | os.PathLike[str]) -> KeySource:
    """A :data:`KeySource` backed by one key file: it hands out that key for its own key id only."""
    key = load_key_file(path)

    def source(key_id: str) -> bytes:
        if key_id != key.key_id:
            raise ModelKeyError(f"the model was encrypted under key id {key_id!r}, but model key file {path} "
                                f"holds key id {key.key_id!r}")
        return key.key

    return source
