"""Secrets at rest, the KEK, key sets and broker policies (no processes)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from enclave.attestation import SimulatedProvider
from enclave.attestation.simulated import MEASUREMENT
from enclave.broker.config import BrokerConfigError, load_resources
from enclave.broker.policy import AttestationPolicy, check_evidence
from enclave.broker.sealing import KEK_ENV, SealError, load_kek, seal, unseal
from enclave.keyset import KeySetError, new_key_set, parse_key_set
from ohttp import KeyRing

KEK = bytes(range(32))


def test_seal_roundtrip_and_binding() -> None:
    sealed = seal(KEK, "default/ohttp/keyset", b"secret seed material")
    assert b"secret" not in sealed and unseal(KEK, "default/ohttp/keyset", sealed) == b"secret seed material"
    with pytest.raises(SealError, match="another KEK"):
        unseal(os.urandom(32), "default/ohttp/keyset", sealed)
    with pytest.raises(SealError, match="sealed for resource"):
        unseal(KEK, "default/model/key", sealed)
    # Relabelled to another resource: the AAD binds the path, so it does not open.
    moved = sealed.replace(b"default/ohttp/keyset", b"default/model/key")
    with pytest.raises(SealError, match="does not authenticate"):
        unseal(KEK, "default/model/key", moved)
    obj = orjson.loads(sealed)
    obj["ciphertext"] = ("B" if obj["ciphertext"][0] == "A" else "A") + obj["ciphertext"][1:]
    with pytest.raises(SealError, match="does not authenticate"):
        unseal(KEK, "default/ohttp/keyset", orjson.dumps(obj))
    with pytest.raises(SealError, match="malformed|not a"):
        unseal(KEK, "default/ohttp/keyset", b"plain text")


def test_kek_sources(tmp_path: Path) -> None:
    hex_file, raw_file = tmp_path / "kek.hex", tmp_path / "kek.bin"
    hex_file.write_text(KEK.hex() + "\n")
    raw_file.write_bytes(KEK)
    assert load_kek(str(hex_file), {}) == KEK == load_kek(str(raw_file), {})
    assert load_kek(None, {KEK_ENV: KEK.hex()}) == KEK
    with pytest.raises(SealError, match="no key-encryption key"):
        load_kek(None, {})
    with pytest.raises(SealError, match="not both"):
        load_kek(str(hex_file), {KEK_ENV: KEK.hex()})
    with pytest.raises(SealError, match="32 bytes"):
        load_kek(None, {KEK_ENV: "abcd"})


def test_key_set_derives_identical_configs() -> None:
    data = new_key_set(key_id=3, kem="p256")
    a, b = KeyRing(parse_key_set(data)), KeyRing(parse_key_set(data))
    assert a.encode_published() == b.encode_published() and a.published()[0].config.key_id == 3
    entry = orjson.loads(data)[0]
    for bad, why in [([], "non-empty"), ([{**entry, "seed": "00"}], "at least 32"), ([entry, entry], "twice"),
                     ([{**entry, "extra": 1}], "unknown members"), ([{**entry, "kem": "x448"}], "malformed|unknown"),
                     ([{**entry, "not_before": "soon"}], "unix seconds"), ([{**entry, "key_id": 256}], "0..255")]:
        with pytest.raises(KeySetError, match=why):
            parse_key_set(orjson.dumps(bad))


def test_policy_requires_a_measurement_check(tmp_path: Path) -> None:
    provider = SimulatedProvider()
    bundle = provider.collect(b"bound bytes")
    allow = tmp_path / "allow.toml"
    allow.write_text(f'[simulated]\nmeasurements = ["{MEASUREMENT.hex()}"]\n')
    policy = AttestationPolicy.load(allow)
    assert check_evidence(bundle, b"bound bytes", policy, allow_simulated=True).ok
    assert not check_evidence(bundle, b"other bytes", policy, allow_simulated=True).ok
    refused = check_evidence(bundle, b"bound bytes", policy, allow_simulated=False)
    assert not refused.ok and "platform accepted" in {c.name for c in refused.failures}
    empty = check_evidence(bundle, b"bound bytes", AttestationPolicy(), allow_simulated=True)
    assert not empty.ok and "measurement" in {c.name for c in empty.failures}
    bad = tmp_path / "bad.toml"
    bad.write_text('[simulated]\nmeasurement = ["00"]\n')
    with pytest.raises(Exception, match="unknown keys"):
        AttestationPolicy.load(bad)


def test_resource_table(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("")
    table = tmp_path / "r.toml"
    table.write_text('[resources."default/ohttp/keyset"]\npath = "ks.sealed"\npolicy = "p.toml"\n'
                     'generate = "ohttp-keyset"\n')
    res = load_resources(table, KEK)
    sealed = (tmp_path / "ks.sealed").read_bytes()
    seed = orjson.loads(res["default/ohttp/keyset"].read(KEK))[0]["seed"]
    assert seed.encode() not in sealed and bytes.fromhex(seed) not in sealed
    with pytest.raises(BrokerConfigError, match="another KEK"):
        load_resources(table, os.urandom(32))
    for text, why in [('[resources."a/b"]\npath = "x"\npolicy = "p.toml"\n', "repository/type/tag"),
                      ('[resources."a/b/c"]\npath = "x"\n', "needs 'path'"),
                      ('[resources."a/b/c"]\npath = "missing"\npolicy = "p.toml"\n', "cannot read"),
                      ('[resources."a/b/c"]\npath = "x"\npolicy = "p.toml"\nmode = 1\n', "unknown members"),
                      ("[other]\n", "unknown tables")]:
        table.write_text(text)
        with pytest.raises(BrokerConfigError, match=why):
            load_resources(table, KEK)
