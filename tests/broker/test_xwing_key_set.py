"""X-Wing in the broker's shared key set and in gateway key files: stored as the 32-byte X-Wing seed, published
first, beside an X25519 key under its own key id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import orjson
import pytest

from enclave.ohttp_key_file import OhttpKeyFileError, load_ohttp_key_file, load_ohttp_keys
from enclave.ohttp_key_set import KeySetError, new_key_set, parse_key_set
from ohttp import GatewayKey, KemId, KeyRing, decode_list
from tests.helpers import h, load_vector

V = load_vector("ohttp_xwing_derived.json")


def test_default_key_set_is_xwing_then_x25519() -> None:
    data = new_key_set(key_id=7)
    entries = orjson.loads(data)
    assert [(e["key_id"], e["kem"]) for e in entries] == [(7, "xwing"), (8, "x25519")]
    assert len(bytes.fromhex(entries[0]["private_key"])) == 32 and "seed" not in entries[0]
    ring_a, ring_b = KeyRing(parse_key_set(data)), KeyRing(parse_key_set(data))
    assert ring_a.encode_published() == ring_b.encode_published()  # every replica publishes the same bytes
    assert [c.kem for c in decode_list(ring_a.encode_published())] == [KemId.XWING, KemId.X25519_SHA256]


def test_single_kem_key_sets() -> None:
    assert [k.config.kem for k in parse_key_set(new_key_set(kem="x25519"))] == [KemId.X25519_SHA256]
    assert [k.config.kem for k in parse_key_set(new_key_set(kem="xwing"))] == [KemId.XWING]
    with pytest.raises(KeySetError):
        new_key_set(kem="kyber")


def test_key_set_xwing_private_key_is_the_seed() -> None:
    entry = {"key_id": 1, "kem": "xwing", "private_key": V["server_private_key"], "suites": ["hkdf-sha256/aes-128-gcm"]}
    (key,) = parse_key_set(orjson.dumps([entry]))
    assert key.config.encode() == h(V["key_config"])


@pytest.mark.parametrize("entry", [
    {"key_id": 1, "kem": "xwing", "private_key": "00" * 31},
    {"key_id": 1, "kem": "xwing", "private_key": "00" * 64},
    {"key_id": 1, "kem": "xwing", "private_key": "zz" * 32},
    {"key_id": 1, "kem": "xwing", "private_key": "00" * 32, "seed": "00" * 32},
    {"key_id": 1, "kem": "xwing"},
], ids=["short", "long", "not-hex", "both", "neither"])
def test_key_set_refuses_bad_xwing_entries(entry: dict[str, object]) -> None:
    with pytest.raises(KeySetError) as err:
        parse_key_set(orjson.dumps([entry]))
    assert "00" * 16 not in str(err.value)


def test_key_file_with_two_keys(tmp_path: Path) -> None:
    seed = os.urandom(32)
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"keys": [{"key_id": 3, "kem": "xwing", "private_key": seed.hex()},
                                         {"key_id": 4, "kem": "x25519", "seed": os.urandom(32).hex()}]}))
    keys = load_ohttp_keys(str(path))
    assert [(k.config.key_id, k.config.kem) for k in keys] == [(3, KemId.XWING), (4, KemId.X25519_SHA256)]
    assert keys[0].private_key.private_bytes() == seed
    assert keys[0].config == GatewayKey.from_private_bytes(3, seed, KemId.XWING).config
    with pytest.raises(OhttpKeyFileError, match="one expected"):
        load_ohttp_key_file(str(path))


def test_key_file_single_xwing_key(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"key_id": 1, "kem": "xwing", "private_key": V["server_private_key"],
                                "suites": ["hkdf-sha256/aes-128-gcm"]}))
    assert load_ohttp_key_file(str(path)).config.encode() == h(V["key_config"])


@pytest.mark.parametrize("body", [
    {"keys": []},
    {"keys": [1]},
    {"keys": [{"key_id": 1, "kem": "xwing", "private_key": "00" * 32},
              {"key_id": 1, "kem": "x25519", "private_key": "00" * 32}]},
    {"key_id": 1, "kem": "xwing", "private_key": "00" * 33},
], ids=["empty", "not-objects", "same-id", "wrong-length"])
def test_key_file_refusals(tmp_path: Path, body: object) -> None:
    path = tmp_path / "k.json"
    path.write_text(json.dumps(body))
    with pytest.raises(OhttpKeyFileError):
        load_ohttp_keys(str(path))
