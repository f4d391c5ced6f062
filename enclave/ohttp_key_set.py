"""The shared OHTTP key set a key broker releases to every gateway replica, so all publish one key configuration.

JSON, a list of keys::

    [{"key_id": 1, "kem": "xwing" | "x25519" | "p256",
      "seed": "<hex, >= 32 bytes>"  or  "private_key": "<hex, 32 bytes>",
      "not_before": <unix seconds> | null, "not_after": <unix seconds> | null,
      "suites": ["hkdf-sha256/aes-128-gcm", ...]}]            (suites optional: the key-file defaults)

A ``seed`` key is RFC 9180 DeriveKeyPair(seed); a ``private_key`` is the serialized key itself, which for X-Wing is
the 32-byte X-Wing seed (its portable form: libraries disagree on DeriveKeyPair). Either way every replica gets the
same keys and publishes byte-identical ``application/ohttp-keys``. Keys with future ``not_before`` are published when their time comes, which rotates
the whole fleet at once without a new fetch.
"""

from __future__ import annotations

import os
from typing import Any, Final

import orjson

from ohttp import GatewayKey, OHTTPError

from .ohttp_key_file import KEMS, OhttpKeyFileError, parse_suite

DEFAULT_SUITES: Final = ("hkdf-sha256/aes-128-gcm", "hkdf-sha256/chacha20-poly1305")
_KEYS: Final = {"key_id", "kem", "seed", "private_key", "not_before", "not_after", "suites"}


class KeySetError(Exception):
    """A key set that cannot be used; the message never contains key material."""


def _time(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise KeySetError(f"{what} must be unix seconds or null")
    return float(value)


def parse_key_set(data: bytes) -> list[GatewayKey]:
    """The gateway keys of a key set.

    Raises:
        KeySetError: not a non-empty list, unknown members, duplicate key ids, short seeds, unknown KEM or suite.
    """
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise KeySetError("the key set is not JSON") from None
    if not isinstance(obj, list) or not obj:
        raise KeySetError("the key set must be a non-empty JSON list")
    keys: list[GatewayKey] = []
    seen: set[int] = set()
    for i, entry in enumerate(obj):
        if not isinstance(entry, dict):
            raise KeySetError(f"key set entry {i} is not an object")
        if extra := set(entry) - _KEYS:
            raise KeySetError(f"key set entry {i} has unknown members {sorted(extra)}")
        try:
            key_id = entry["key_id"]
            if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 <= key_id <= 255:
                raise KeySetError(f"key set entry {i}: key_id must be 0..255")
            if key_id in seen:
                raise KeySetError(f"key set entry {i}: key_id {key_id} appears twice")
            seen.add(key_id)
            kem = KEMS[str(entry.get("kem", "x25519")).lower()]
            suites = [parse_suite(s) for s in entry.get("suites", DEFAULT_SUITES)]
            times = {"not_before": _time(entry.get("not_before"), f"entry {i} not_before"),
                     "not_after": _time(entry.get("not_after"), f"entry {i} not_after")}
            if ("seed" in entry) == ("private_key" in entry):
                raise KeySetError(f"key set entry {i}: give 'seed' or 'private_key'")
            if "private_key" in entry:
                private = bytes.fromhex(entry["private_key"])
                if len(private) != kem.n_sk:
                    raise KeySetError(f"key set entry {i}: private_key must be {kem.n_sk} bytes")
                keys.append(GatewayKey.from_private_bytes(key_id, private, kem, suites, **times))
                continue
            seed = bytes.fromhex(entry["seed"])
            if len(seed) < 32:
                raise KeySetError(f"key set entry {i}: seed must be at least 32 bytes")
            keys.append(GatewayKey.derive(key_id, seed, kem, suites, **times))
        except KeySetError:
            raise
        except OhttpKeyFileError as exc:
            raise KeySetError(f"key set entry {i}: {exc}") from None
        except KeyError as exc:
            raise KeySetError(f"key set entry {i}: missing or unknown {exc}") from None
        except (TypeError, ValueError, OHTTPError):
            raise KeySetError(f"key set entry {i}: malformed key_id, kem, seed or private_key") from None
    return keys


#: The default key set: an X-Wing key (published first) and an X25519 key for clients without X-Wing.
DEFAULT_KEMS: Final = "xwing+x25519"


def new_key_set(key_id: int = 1, kem: str = DEFAULT_KEMS, *, not_before: float | None = None) -> bytes:
    """A fresh key set (for the broker to generate inside its TEE, or for tests): one key per KEM of ``kem``
    (``"xwing+x25519"``, or one KEM name) under consecutive key ids from ``key_id``."""
    kems = kem.split("+")
    if not kems or any(k not in KEMS for k in kems):
        raise KeySetError(f"unknown kem {kem!r}")
    # not_before null: active at once (a replica whose clock runs behind must not publish an empty list).
    entries = []
    for i, name in enumerate(kems):
        # X-Wing's key is its 32-byte seed (stored as is); the classical KEMs keep RFC 9180 DeriveKeyPair seeds.
        secret = {"private_key": os.urandom(32).hex()} if name == "xwing" else {"seed": os.urandom(32).hex()}
        entries.append({"key_id": (key_id + i) % 256, "kem": name, **secret, "not_before": not_before,
                        "not_after": None})
    return orjson.dumps(entries)
