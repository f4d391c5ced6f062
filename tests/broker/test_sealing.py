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
from enclave.ohttp_key_set import KeySetError, new_key_set, parse_key_set
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
    for entry in orjson.loads(res["default/ohttp/keyset"].read(KEK)):  # X-Wing's seed is its private_key
        secret = entry["seed"] if "seed" in entry else entry["private_key"]
        assert secret.encode() not in sealed and bytes.fromhex(secret) not in sealed
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


# -- sealing keys that never leave the TEE --------------------------------------------------------------------------


def test_snp_derived_key_ioctl_matches_the_kernel_header() -> None:
    # include/uapi/linux/sev-guest.h: SNP_GET_DERIVED_KEY _IOWR('S', 0x1, struct snp_guest_request_ioctl);
    # _IOWR = (3 << 30) | (size << 16) | (type << 8) | nr.
    import ctypes

    from enclave.broker import snp_key

    assert snp_key.SNP_GET_DERIVED_KEY == 0xC0205301
    req, resp, ioc = snp_key._DerivedKeyReq, snp_key._DerivedKeyResp, snp_key._GuestRequestIoctl
    assert (ctypes.sizeof(req), ctypes.sizeof(resp), ctypes.sizeof(ioc)) == (32, 64, 32)
    assert [getattr(req, f).offset for f in ("root_key_select", "rsvd", "guest_field_select", "vmpl", "guest_svn",
                                              "tcb_version")] == [0, 4, 8, 16, 20, 24]
    assert [getattr(ioc, f).offset for f in ("msg_version", "req_data", "resp_data", "exitinfo2")] == [0, 8, 16, 24]
    assert snp_key.SEALING_FIELDS == 0b1001  # MEASUREMENT (bit 3) and GUEST_POLICY (bit 0); not TCB_VERSION


class EmulatedSevGuest:
    """The ioctl as drivers/virt/coco/sev-guest does it: read the request at req_data, copy the firmware's 64-byte
    MSG_KEY_RSP to resp_data. The "firmware" derives from a chip secret and the selected guest fields."""

    def __init__(self, measurement: bytes, status: int = 0) -> None:
        self.measurement, self.status = measurement, status
        self.requests: list[tuple[int, int, int, int, int]] = []

    def ioctl(self, fd: int, request: int, arg: object, mutate: bool) -> int:
        import ctypes
        import hashlib

        from enclave.broker import snp_key

        assert request == snp_key.SNP_GET_DERIVED_KEY and mutate and isinstance(arg, snp_key._GuestRequestIoctl)
        req = snp_key._DerivedKeyReq.from_address(arg.req_data)
        self.requests.append((arg.msg_version, req.root_key_select, req.guest_field_select, req.vmpl, req.tcb_version))
        key = hashlib.sha256(b"chip secret" + req.guest_field_select.to_bytes(8, "little") + self.measurement).digest()
        data = self.status.to_bytes(4, "little") + bytes(28) + key
        ctypes.memmove(arg.resp_data, data, 64)
        return 0


def test_sev_snp_broker_seals_with_the_firmware_derived_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from enclave.broker.sealing import KEK_SNP, broker_sealing_key
    from enclave.broker.snp_key import SevGuestDerivedKey

    dev = tmp_path / "sev-guest"
    dev.write_bytes(b"")
    image = EmulatedSevGuest(b"M" * 48)
    monkeypatch.setattr(fcntl, "ioctl", image.ioctl)
    kek, how = broker_sealing_key("sev-snp", None, {}, SevGuestDerivedKey(str(dev)))
    again, _ = broker_sealing_key("sev-snp", None, {}, SevGuestDerivedKey(str(dev)))
    assert how == KEK_SNP and len(kek) == 32 and kek == again  # a restart of the same image unseals
    assert image.requests == [(1, 0, 0b1001, 0, 0)] * 2
    sealed = seal(kek, "default/ohttp/keyset", b"seed")
    other_image = EmulatedSevGuest(b"N" * 48)
    monkeypatch.setattr(fcntl, "ioctl", other_image.ioctl)
    other, _ = broker_sealing_key("sev-snp", None, {}, SevGuestDerivedKey(str(dev)))
    with pytest.raises(SealError, match="another KEK"):
        unseal(other, "default/ohttp/keyset", sealed)
    monkeypatch.setattr(fcntl, "ioctl", EmulatedSevGuest(b"M" * 48, status=0x16).ioctl)
    with pytest.raises(SealError, match="refused the key request"):
        broker_sealing_key("sev-snp", None, {}, SevGuestDerivedKey(str(dev)))
    with pytest.raises(SealError, match="cannot open"):
        broker_sealing_key("sev-snp", None, {}, SevGuestDerivedKey(str(tmp_path / "missing")))


def test_an_operator_kek_only_with_simulated_attestation(tmp_path: Path) -> None:
    from enclave.broker.sealing import KEK_EPHEMERAL, KEK_OPERATOR, broker_sealing_key

    kf = tmp_path / "kek.hex"
    kf.write_text(KEK.hex())
    assert broker_sealing_key("simulated", str(kf), {}) == (KEK, KEK_OPERATOR)
    assert broker_sealing_key("simulated", None, {KEK_ENV: KEK.hex()}) == (KEK, KEK_OPERATOR)
    a, how = broker_sealing_key("simulated", None, {})
    assert how == KEK_EPHEMERAL and a != broker_sealing_key("simulated", None, {})[0]
    for platform in ("sev-snp", "tdx", "az-snp-vtpm", "aws-nitro"):
        for path, env in ((str(kf), {}), (None, {KEK_ENV: KEK.hex()})):
            with pytest.raises(SealError, match=f"refused with {platform} attestation"):
                broker_sealing_key(platform, path, env)
    tdx, how = broker_sealing_key("tdx", None, {})  # no sealing key on TDX: per process
    assert how == KEK_EPHEMERAL and len(tdx) == 32


def test_an_ephemeral_kek_makes_the_generated_key_set_again_and_names_what_it_cannot_hold(tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text("")
    table = tmp_path / "r.toml"
    table.write_text('[resources."default/ohttp/keyset"]\npath = "ks.sealed"\npolicy = "p.toml"\n'
                     'generate = "ohttp-keyset"\n')
    first = os.urandom(32)
    load_resources(table, first, ephemeral=True)
    second = os.urandom(32)  # the next start: a new per-process key
    res = load_resources(table, second, ephemeral=True)
    parse_key_set(res["default/ohttp/keyset"].read(second))
    with pytest.raises(SealError):
        res["default/ohttp/keyset"].read(first)
    (tmp_path / "mk.sealed").write_bytes(seal(KEK, "default/model-key/m1", b"model key"))
    table.write_text('[resources."default/model-key/m1"]\npath = "mk.sealed"\npolicy = "p.toml"\n')
    with pytest.raises(BrokerConfigError, match="only secrets it generates itself"):
        load_resources(table, second, ephemeral=True)
