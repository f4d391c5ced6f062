"""Loading a gateway key from a file: for tests and key-management integrations only.

Without ``--key-file`` the gateway generates its keys in memory at start and never writes them anywhere. A key
file is JSON, one key or ``{"keys": [key, ...]}`` (an X-Wing key and an X25519 key under distinct key ids)::

    {"key_id": 1,
     "kem": "x25519" | "p256" | "xwing",                         (default x25519)
     "suites": ["hkdf-sha256/aes-128-gcm", "hkdf-sha256/chacha20-poly1305"],   (default: these two)
     "seed": "<hex>"            RFC 9180 DeriveKeyPair input, at least 32 bytes
       or "private_key": "<hex>" a serialized private key: 32 bytes for every KEM; for X-Wing it is the 32-byte
                                 X-Wing seed (draft-connolly-cfrg-xwing-kem §5.5.1), the portable form of its key
    }
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import orjson

from ohttp import AeadId, GatewayKey, KdfId, KemId, SymmetricSuite

KEMS: Final = {"x25519": KemId.X25519_SHA256, "p256": KemId.P256_SHA256, "xwing": KemId.XWING}
KDFS: Final = {"hkdf-sha256": KdfId.HKDF_SHA256, "hkdf-sha384": KdfId.HKDF_SHA384, "hkdf-sha512": KdfId.HKDF_SHA512}
AEADS: Final = {
    "aes-128-gcm": AeadId.AES_128_GCM,
    "aes-256-gcm": AeadId.AES_256_GCM,
    "chacha20-poly1305": AeadId.CHACHA20_POLY1305,
}


class OhttpKeyFileError(Exception):
    """The key file cannot be used; the message says why."""


def parse_suite(text: str) -> SymmetricSuite:
    """``"hkdf-sha256/aes-128-gcm"`` -> SymmetricSuite."""
    kdf, _, aead = text.lower().partition("/")
    if kdf not in KDFS or aead not in AEADS:
        raise OhttpKeyFileError(f"unknown suite {text!r}; use KDF/AEAD from {sorted(KDFS)} / {sorted(AEADS)}")
    return SymmetricSuite(KDFS[kdf], AEADS[aead])


def load_ohttp_key_file(path: str) -> GatewayKey:
    """Read and validate a key file of one key."""
    keys = load_ohttp_keys(path)
    if len(keys) != 1:
        raise OhttpKeyFileError(f"key file {path} holds {len(keys)} keys, one expected")
    return keys[0]


def load_ohttp_keys(path: str) -> list[GatewayKey]:
    """Read and validate a key file of one key or of several (``{"keys": [...]}``, distinct key ids)."""
    try:
        obj: Any = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise OhttpKeyFileError(f"cannot read key file {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise OhttpKeyFileError(f"key file {path} must hold a JSON object")
    entries = obj["keys"] if "keys" in obj else [obj]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise OhttpKeyFileError(f"key file {path}: 'keys' must be a non-empty list of objects")
    keys = [_key(path, e) for e in entries]
    if len({k.config.key_id for k in keys}) != len(keys):
        raise OhttpKeyFileError(f"key file {path}: two keys share a key id")
    return keys


def _key(path: str, obj: dict[str, Any]) -> GatewayKey:
    try:
        key_id = int(obj.get("key_id", 1))
        kem = KEMS[str(obj.get("kem", "x25519")).lower()]
        suites = [parse_suite(s) for s in obj.get("suites", ["hkdf-sha256/aes-128-gcm", "hkdf-sha256/chacha20-poly1305"])]
        if "seed" in obj:
            seed = bytes.fromhex(obj["seed"])
            if len(seed) < 32:
                raise OhttpKeyFileError("seed must be at least 32 bytes (64 hex characters)")
            return GatewayKey.derive(key_id, seed, kem, suites)
        if "private_key" in obj:
            return GatewayKey.from_private_bytes(key_id, bytes.fromhex(obj["private_key"]), kem, suites)
    except OhttpKeyFileError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise OhttpKeyFileError(f"invalid key file {path}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:
        raise OhttpKeyFileError(f"invalid key in {path}: {exc}") from None
    raise OhttpKeyFileError(f"key file {path} needs 'seed' or 'private_key'")
