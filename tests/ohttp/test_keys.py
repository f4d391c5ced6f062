"""Key configurations, ``application/ohttp-keys`` lists, gateway keys and the key ring."""

from __future__ import annotations

import itertools
import os

import pytest

from ohttp import (
    DEFAULT_SUITES,
    AeadId,
    ClientRequest,
    DecodeError,
    Gateway,
    GatewayKey,
    KdfId,
    KemId,
    KeyConfig,
    KeyIdError,
    KeyRing,
    LocalProtocolError,
    RemoteProtocolError,
    SymmetricSuite,
    UnsupportedError,
    decode_list,
    encode_list,
)
from tests.helpers import h, load_vector

RFC_CONFIG = h(load_vector("rfc9458_appendix_a.json")["key_config"])

ALL_SUITES = [SymmetricSuite(kdf, aead) for kdf, aead in itertools.product(KdfId, AeadId)]


def _prefixed(config: bytes) -> bytes:
    return len(config).to_bytes(2, "big") + config


def _raw_config(key_id: int, kem: int, public_key: bytes, algs: list[tuple[int, int]]) -> bytes:
    body = b"".join(kdf.to_bytes(2, "big") + aead.to_bytes(2, "big") for kdf, aead in algs)
    return bytes((key_id,)) + kem.to_bytes(2, "big") + public_key + len(body).to_bytes(2, "big") + body


def _pq_config(key_id: int = 2) -> bytes:
    """A plausible X25519Kyber768Draft00 (0x0030) config as Cloudflare serves it: 1216-byte public key."""
    return _raw_config(key_id, 0x0030, os.urandom(1216), [(0x0001, 0x0001)])


# ---------------------------------------------------------------------------------------------------------------
# KeyConfig


@pytest.mark.parametrize("kem", [KemId.X25519_SHA256, KemId.P256_SHA256], ids=lambda k: k.name)
@pytest.mark.parametrize("suite", ALL_SUITES, ids=lambda s: f"{s.kdf.name}-{s.aead.name}")
def test_config_roundtrip_every_suite(kem: KemId, suite: SymmetricSuite) -> None:
    key = GatewayKey.generate(7, kem, [suite])
    config = key.config
    wire = config.encode()
    assert len(wire) == 1 + 2 + kem.n_pk + 2 + 4
    assert wire[0] == 7
    assert wire[1:3] == int(kem).to_bytes(2, "big")
    assert wire[-4:] == int(suite.kdf).to_bytes(2, "big") + int(suite.aead).to_bytes(2, "big")
    decoded = KeyConfig.decode(wire)
    assert decoded == config
    assert decoded.supports(suite)
    assert decode_list(encode_list([config])) == [config]


@pytest.mark.parametrize("kem", [KemId.X25519_SHA256, KemId.P256_SHA256], ids=lambda k: k.name)
def test_config_with_all_nine_suites(kem: KemId) -> None:
    config = GatewayKey.generate(255, kem, ALL_SUITES).config
    wire = config.encode()
    assert int.from_bytes(wire[3 + kem.n_pk : 5 + kem.n_pk], "big") == 36
    assert KeyConfig.decode(wire) == config
    assert KeyConfig.decode(wire).suites == tuple(ALL_SUITES)


def test_public_key_lengths() -> None:
    assert len(GatewayKey.generate(0, KemId.X25519_SHA256).config.public_key) == 32
    p256 = GatewayKey.generate(0, KemId.P256_SHA256).config.public_key
    assert len(p256) == 65 and p256[0] == 0x04


def test_config_decode_rejects_trailing_bytes() -> None:
    with pytest.raises(DecodeError, match="trailing"):
        KeyConfig.decode(RFC_CONFIG + b"\x00")


@pytest.mark.parametrize("cut", range(len(RFC_CONFIG)))
def test_config_decode_rejects_every_truncation(cut: int) -> None:
    with pytest.raises(DecodeError):
        KeyConfig.decode(RFC_CONFIG[:cut])


def test_config_decode_unknown_kem_is_unsupported() -> None:
    with pytest.raises(UnsupportedError):
        KeyConfig.decode(_pq_config())


def test_config_decode_only_unknown_suites_is_unsupported() -> None:
    with pytest.raises(UnsupportedError):
        KeyConfig.decode(_raw_config(1, 0x0020, bytes(32), [(0x0001, 0xFFFF), (0x0004, 0x0001)]))


@pytest.mark.parametrize("algs_len", [0, 1, 2, 3, 5, 6, 7, 9])
def test_config_decode_bad_algorithms_length(algs_len: int) -> None:
    wire = bytes((1,)) + b"\x00\x20" + bytes(32) + algs_len.to_bytes(2, "big") + bytes(algs_len)
    with pytest.raises(DecodeError):
        KeyConfig.decode(wire)


def test_config_decode_drops_unknown_and_duplicate_suites() -> None:
    wire = _raw_config(3, 0x0020, bytes(range(32)), [(1, 1), (1, 0xFFFF), (9, 1), (1, 1), (2, 3)])
    config = KeyConfig.decode(wire)
    assert config.suites == (
        SymmetricSuite(KdfId.HKDF_SHA256, AeadId.AES_128_GCM),
        SymmetricSuite(KdfId.HKDF_SHA384, AeadId.CHACHA20_POLY1305),
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_id": 256},
        {"key_id": -1},
        {"public_key": bytes(31)},
        {"suites": ()},
        {"suites": (SymmetricSuite(KdfId.HKDF_SHA256, AeadId.AES_128_GCM),) * 16384},
    ],
)
def test_invalid_config_cannot_be_constructed(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "key_id": 1,
        "kem": KemId.X25519_SHA256,
        "public_key": bytes(32),
        "suites": DEFAULT_SUITES,
    }
    base.update(kwargs)
    with pytest.raises(LocalProtocolError):
        KeyConfig(**base)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------------
# application/ohttp-keys lists


def test_list_skips_unknown_kem_and_keeps_x25519() -> None:
    pq = _pq_config(2)
    assert len(pq) == 1 + 2 + 1216 + 2 + 4
    body = _prefixed(pq) + _prefixed(RFC_CONFIG)
    configs = decode_list(body)
    assert configs == [KeyConfig.decode(RFC_CONFIG)]
    assert ClientRequest.from_config_list(body).config.key_id == 1
    # Order does not matter.
    assert decode_list(_prefixed(RFC_CONFIG) + _prefixed(pq)) == configs


def test_list_keeps_config_but_drops_unknown_suites() -> None:
    wire = _raw_config(4, 0x0020, bytes(range(32)), [(0x0001, 0xFFFF), (0x0001, 0x0003), (0x0007, 0x0001)])
    (config,) = decode_list(_prefixed(wire))
    assert config.key_id == 4
    assert config.suites == (SymmetricSuite(KdfId.HKDF_SHA256, AeadId.CHACHA20_POLY1305),)
    assert ClientRequest(config).suite.aead is AeadId.CHACHA20_POLY1305


def test_list_skips_config_whose_only_suite_is_unknown() -> None:
    only_unknown = _raw_config(5, 0x0020, bytes(32), [(0x0001, 0xFFFF)])
    assert decode_list(_prefixed(only_unknown)) == []
    assert decode_list(_prefixed(only_unknown) + _prefixed(RFC_CONFIG)) == [KeyConfig.decode(RFC_CONFIG)]
    with pytest.raises(UnsupportedError):
        ClientRequest.from_config_list(_prefixed(only_unknown))


def test_list_of_several_configs_roundtrips_in_order() -> None:
    configs = [
        GatewayKey.generate(i, kem).config
        for i, kem in enumerate([KemId.X25519_SHA256, KemId.P256_SHA256, KemId.X25519_SHA256])
    ]
    assert decode_list(encode_list(configs)) == configs


MALFORMED_LISTS = {
    "empty": b"",
    "one_byte_prefix": b"\x00",
    "truncated_prefix_after_config": _prefixed(RFC_CONFIG) + b"\x00",
    "overrun": b"\x00\x2e" + RFC_CONFIG,
    "overrun_second": _prefixed(RFC_CONFIG) + b"\x00\x2d" + RFC_CONFIG[:-1],
    "algs_len_not_multiple_of_4": _prefixed(
        bytes((1,)) + b"\x00\x20" + bytes(32) + b"\x00\x06" + b"\x00\x01\x00\x01\x00\x03"
    ),
    "algs_len_zero": _prefixed(bytes((1,)) + b"\x00\x20" + bytes(32) + b"\x00\x00"),
    "trailing_byte_inside_config": _prefixed(RFC_CONFIG + b"\x00"),
    "trailing_byte_after_a_skipped_pq_config": _prefixed(_pq_config()) + _prefixed(RFC_CONFIG + b"\x01"),
    "config_too_short_for_its_kem": _prefixed(RFC_CONFIG[:20]),
    "header_too_short": _prefixed(b"\x01\x00"),
    "zero_length_config": b"\x00\x00" + _prefixed(RFC_CONFIG),
}


@pytest.mark.parametrize("body", MALFORMED_LISTS.values(), ids=MALFORMED_LISTS.keys())
def test_malformed_list_is_rejected_whole(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_list(body)
    with pytest.raises(DecodeError):
        ClientRequest.from_config_list(body)


def test_valid_config_before_a_malformed_one_is_not_salvaged() -> None:
    body = _prefixed(RFC_CONFIG) + _prefixed(RFC_CONFIG[:-2] + b"\x00")  # algs length 8 but only 6 bytes left
    with pytest.raises(DecodeError):
        decode_list(body)


@pytest.mark.parametrize("cut", range(1, 2 + len(RFC_CONFIG)))
def test_every_truncation_of_a_list_is_rejected(cut: int) -> None:
    body = _prefixed(RFC_CONFIG)
    if cut == len(body):
        assert decode_list(body) == [KeyConfig.decode(RFC_CONFIG)]
    else:
        with pytest.raises(DecodeError):
            decode_list(body[:cut])


# ---------------------------------------------------------------------------------------------------------------
# GatewayKey


def test_generate_gives_distinct_keys() -> None:
    a, b = GatewayKey.generate(1), GatewayKey.generate(1)
    assert a.config.public_key != b.config.public_key
    assert a.config.suites == DEFAULT_SUITES


@pytest.mark.parametrize("kem", list(KemId), ids=lambda k: k.name)
def test_private_bytes_roundtrip(kem: KemId) -> None:
    """Regression: pyhpke serialized P-256 scalars on 256 bytes, which from_private_bytes then refused."""
    key = GatewayKey.generate(9, kem)
    raw = key.private_key.private_bytes()
    assert len(raw) == kem.n_sk
    again = GatewayKey.from_private_bytes(9, raw, kem)
    assert again.config == key.config
    assert again.private_key.private_bytes() == raw
    enc, ctx = ClientRequest(key.config).encapsulate(b"q")
    body, resp = Gateway([again]).decapsulate(enc)
    assert body == b"q" and ctx.decapsulate(resp.encapsulate(b"a")) == b"a"


@pytest.mark.parametrize("kem", [KemId.X25519_SHA256, KemId.P256_SHA256], ids=lambda k: k.name)
def test_derive_is_deterministic(kem: KemId) -> None:
    ikm = bytes(range(32))
    a, b = GatewayKey.derive(1, ikm, kem), GatewayKey.derive(1, ikm, kem)
    assert a.config == b.config
    assert GatewayKey.derive(1, bytes(range(1, 33)), kem).config.public_key != a.config.public_key


def test_derive_rejects_short_seed() -> None:
    with pytest.raises(LocalProtocolError):
        GatewayKey.derive(1, bytes(15))


def test_from_private_bytes_wrong_length() -> None:
    with pytest.raises(LocalProtocolError):
        GatewayKey.from_private_bytes(1, bytes(31))


def test_private_key_not_in_repr() -> None:
    key = GatewayKey.from_private_bytes(1, bytes(range(1, 33)))
    assert bytes(range(1, 33)).hex() not in repr(key)
    assert "private_key" not in repr(key)


def test_accepts_at() -> None:
    key = GatewayKey.generate(1, not_before=100.0, not_after=200.0)
    assert not key.accepts_at(99.9)
    assert key.accepts_at(100.0)
    assert key.accepts_at(199.9)
    assert not key.accepts_at(200.0)
    assert GatewayKey.generate(1).accepts_at(0.0)


# ---------------------------------------------------------------------------------------------------------------
# KeyRing


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_unknown_key_id_is_422() -> None:
    ring = KeyRing([GatewayKey.generate(1)], clock=Clock())
    with pytest.raises(KeyIdError) as info:
        ring.get(2)
    assert info.value.status_hint == 422
    assert isinstance(info.value, RemoteProtocolError)


def test_duplicate_key_id_is_refused() -> None:
    ring = KeyRing([GatewayKey.generate(1)])
    with pytest.raises(LocalProtocolError):
        ring.add(GatewayKey.generate(1))


def test_activation_and_expiry() -> None:
    clock = Clock(1000.0)
    key = GatewayKey.generate(1, not_before=1100.0, not_after=1200.0)
    ring = KeyRing([key], clock=clock)
    with pytest.raises(KeyIdError):
        ring.get(1)
    assert ring.published() == []
    assert ring.next_change() == 1100.0
    clock.now = 1100.0
    assert ring.get(1) is key
    assert ring.published() == [key]
    assert ring.encode_published() == encode_list([key.config])
    assert ring.next_change() == 1200.0
    clock.now = 1199.0
    assert ring.get(1) is key
    clock.now = 1200.0
    with pytest.raises(KeyIdError):
        ring.get(1)
    assert ring.published() == []
    assert ring.next_change() is None
    assert len(ring) == 1
    ring.purge()
    assert len(ring) == 0


def test_rotation_with_grace() -> None:
    clock = Clock(1000.0)
    old = GatewayKey.generate(1)
    ring = KeyRing([old], clock=clock)
    gateway = Gateway(ring)
    request_to_old, old_ctx = ClientRequest(old.config).encapsulate(b"old")
    new = GatewayKey.generate(ring.next_key_id())
    assert new.config.key_id == 0
    ring.rotate(new, grace_seconds=60.0)

    # During the grace period: old accepted, not published; new published.
    clock.now = 1059.0
    assert [k.config for k in ring.published()] == [new.config]
    assert decode_list(ring.encode_published()) == [new.config]
    body, resp = gateway.decapsulate(request_to_old)
    assert body == b"old"
    assert old_ctx.decapsulate(resp.encapsulate(b"ok")) == b"ok"
    assert ring.get(1).config == old.config
    assert ring.next_change() == 1060.0
    request_to_new, _ = ClientRequest(new.config).encapsulate(b"new")
    assert gateway.decapsulate(request_to_new)[0] == b"new"

    # After it: retired.
    clock.now = 1060.0
    with pytest.raises(KeyIdError) as info:
        gateway.decapsulate(request_to_old)
    assert info.value.status_hint == 422
    assert gateway.decapsulate(request_to_new)[0] == b"new"
    assert ring.next_key_id() == 1  # freed after purge
    assert len(ring) == 1


def test_rotation_never_extends_an_earlier_expiry() -> None:
    clock = Clock(1000.0)
    old = GatewayKey.generate(1, not_after=1010.0)
    ring = KeyRing([old], clock=clock)
    ring.rotate(GatewayKey.generate(2), grace_seconds=3600.0)
    clock.now = 1010.0
    with pytest.raises(KeyIdError):
        ring.get(1)


def test_rotation_replaces_a_key_with_the_same_id() -> None:
    clock = Clock()
    ring = KeyRing([GatewayKey.generate(1)], clock=clock)
    new = GatewayKey.generate(1)
    ring.rotate(new, grace_seconds=10.0)
    assert ring.get(1) is new
    assert ring.published() == [new]


def test_published_newest_first() -> None:
    clock = Clock(1000.0)
    a = GatewayKey.generate(1, not_before=900.0)
    b = GatewayKey.generate(2, not_before=950.0)
    c = GatewayKey.generate(3)
    ring = KeyRing([a, b, c], clock=clock)
    assert [k.config.key_id for k in ring.published()] == [2, 1, 3]


def test_next_key_id() -> None:
    ring = KeyRing([GatewayKey.generate(i) for i in (0, 1, 3)])
    assert ring.next_key_id() == 2
    full = KeyRing([GatewayKey.generate(i) for i in range(256)])
    with pytest.raises(LocalProtocolError):
        full.next_key_id()


def test_header_kem_mismatch_is_a_key_id_error() -> None:
    x = GatewayKey.generate(1, KemId.X25519_SHA256)
    p = GatewayKey.generate(1, KemId.P256_SHA256)
    enc, _ = ClientRequest(p.config).encapsulate(b"x")
    with pytest.raises(KeyIdError):
        Gateway([x]).decapsulate(enc)


def test_reserved_key_ids_are_distinct_until_used_or_released() -> None:
    """Two rotations that each choose an id before either key joins the ring (evidence is collected in between)
    must not choose the same one: the second key would silently replace the first under its id."""
    ring = KeyRing([GatewayKey.generate(0)])
    a, b = ring.reserve_key_id(), ring.reserve_key_id()
    assert (a, b) == (1, 2) and ring.next_key_id() == 3
    first, second = GatewayKey.generate(b), GatewayKey.generate(a)
    ring.rotate(first, grace_seconds=10.0)
    ring.rotate(second, grace_seconds=10.0)
    assert ring.get(b).config == first.config and ring.get(a).config == second.config and len(ring) == 3
    c = ring.reserve_key_id()
    assert c == 3
    ring.release_key_id(c)  # that rotation gave up: the id is free again
    assert ring.reserve_key_id() == 3
