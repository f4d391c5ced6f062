"""OHTTP with X-Wing key configurations (KEM 0x647A) through the public API: the derived exchange byte for byte,
round trips plain and chunked with every suite, a gateway offering X-Wing beside X25519 to clients of either kind,
client preference and ``require_post_quantum``, rotation of both keys, tampering and truncation."""

from __future__ import annotations

import pytest

import ohttp
from ohttp import (
    NEED_DATA,
    AeadId,
    Chunk,
    ChunkedClientRequest,
    ChunkedGatewayRequest,
    ClientRequest,
    DecodeError,
    DecryptError,
    Gateway,
    GatewayKey,
    KdfId,
    KemId,
    KeyConfig,
    KeyIdError,
    KeyRing,
    RemoteProtocolError,
    SymmetricSuite,
    UnsupportedError,
    choose_config,
    decode_list,
    encode_list,
)
from tests.helpers import flip_bit, h, load_vector

V = load_vector("ohttp_xwing_derived.json")
SUITES = tuple(SymmetricSuite(kdf, aead) for kdf in KdfId for aead in AeadId)
XWING = GatewayKey.generate(3, KemId.XWING, SUITES)
CLASSIC = GatewayKey.generate(2, KemId.X25519_SHA256)
RING = KeyRing([XWING, CLASSIC])


def _vector_key() -> GatewayKey:
    suites = (SymmetricSuite(KdfId(V["suite"]["kdf_id"]), AeadId(V["suite"]["aead_id"])),)
    return GatewayKey.from_private_bytes(V["key_id"], h(V["server_private_key"]), KemId.XWING, suites)


def test_kem_id_sizes() -> None:
    assert (KemId.XWING, KemId.XWING.n_pk, KemId.XWING.n_enc, KemId.XWING.n_sk) == (0x647A, 1216, 1120, 32)
    assert KemId.XWING.post_quantum and not any(k.post_quantum for k in KemId if k is not KemId.XWING)
    assert KemId.X25519_SHA256.n_enc == KemId.X25519_SHA256.n_pk == 32


# ---------------------------------------------------------------------------------------------------------------
# The derived vector through KeyConfig, ClientRequest, Gateway


def test_vector_key_config() -> None:
    key = _vector_key()
    assert key.config.encode() == h(V["key_config"])
    assert encode_list([key.config]) == h(V["ohttp_keys_media"])
    assert KeyConfig.decode(h(V["key_config"])) == key.config
    assert decode_list(h(V["ohttp_keys_media"])) == [key.config]
    assert key.private_key.private_bytes() == h(V["server_private_key"])


def test_vector_client_side(xwing_derand: None) -> None:
    config = decode_list(h(V["ohttp_keys_media"]))[0]
    enc_request, ctx = ClientRequest(config).encapsulate(h(V["request_bhttp"]), ephemeral_key=h(V["ephemeral_seed"]))
    assert enc_request == h(V["encapsulated_request"])
    assert ctx.decapsulate(h(V["encapsulated_response"])) == h(V["response_bhttp"])


def test_vector_gateway_side() -> None:
    request, ctx = Gateway([_vector_key()]).decapsulate(h(V["encapsulated_request"]))
    assert request == h(V["request_bhttp"])
    assert ctx.enc == h(V["enc"])
    enc_response = ctx.encapsulate(h(V["response_bhttp"]), response_nonce=h(V["response_nonce"]))
    assert enc_response == h(V["encapsulated_response"])


def test_vector_key_from_derive_is_not_the_seed() -> None:
    # DeriveKeyPair (hpke-pq) hashes the ikm; loading the seed does not: key files store the seed.
    derived = GatewayKey.derive(1, h(V["server_private_key"]), KemId.XWING)
    assert derived.config.public_key != h(V["server_public_key"])
    assert GatewayKey.derive(1, h(V["server_private_key"]), KemId.XWING).config == derived.config


# ---------------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s.kdf.name}-{s.aead.name}")
def test_roundtrip_every_suite(suite: SymmetricSuite) -> None:
    enc_request, client_ctx = ClientRequest(XWING.config, suite).encapsulate(b"request bytes")
    assert len(enc_request) == 7 + 1120 + len(b"request bytes") + 16
    request, gateway_ctx = Gateway(RING).decapsulate(enc_request)
    assert request == b"request bytes"
    assert gateway_ctx.key_id == 3 and gateway_ctx.enc == enc_request[7:1127]
    assert client_ctx.decapsulate(gateway_ctx.encapsulate(b"response bytes")) == b"response bytes"


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s.kdf.name}-{s.aead.name}")
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_chunked_roundtrip_every_suite(suite: SymmetricSuite, split: str) -> None:
    client = ChunkedClientRequest(XWING.config, suite)
    request = client.encode_chunk(b"one") + client.encode_chunk(b"two") + client.encode_chunk(b"", final=True)
    pieces = [request] if split == "whole" else [request[i : i + 1] for i in range(len(request))]
    gw = ChunkedGatewayRequest(RING)
    got = _drain(gw, pieces)
    assert got == [Chunk(b"one"), Chunk(b"two"), Chunk(b"", final=True)]
    assert gw.key_id == 3 and gw.enc == request[7:1127]
    enc = gw.response()
    response = enc.encode_chunk(b"tok1") + enc.encode_chunk(b"tok2") + enc.encode_chunk(b"end", final=True)
    assert _drain(client.response(), [response]) == [Chunk(b"tok1"), Chunk(b"tok2"), Chunk(b"end", final=True)]


def _drain(decoder: ohttp.ChunkedClientResponse | ChunkedGatewayRequest, pieces: list[bytes]) -> list[Chunk]:
    out: list[Chunk] = []
    for piece in [*pieces, b""]:
        decoder.receive_data(piece)
        while (ev := decoder.next_event()) is not NEED_DATA:
            assert isinstance(ev, Chunk)
            out.append(ev)
    return out


def test_seed_round_trip_gives_the_same_key() -> None:
    seed = XWING.private_key.private_bytes()
    assert len(seed) == 32
    again = GatewayKey.from_private_bytes(3, seed, KemId.XWING, SUITES)
    assert again.config == XWING.config
    enc_request, _ = ClientRequest(XWING.config).encapsulate(b"x")
    assert Gateway([again]).decapsulate(enc_request)[0] == b"x"


# ---------------------------------------------------------------------------------------------------------------
# Two configurations on one gateway; which one a client uses


def test_published_order_is_xwing_then_x25519() -> None:
    now = 1000.0
    ring = KeyRing(
        [
            GatewayKey.generate(1, KemId.X25519_SHA256, not_before=now),
            GatewayKey.generate(2, KemId.XWING, not_before=now),
        ],
        clock=lambda: now + 1,
    )
    configs = decode_list(ring.encode_published())
    assert [(c.key_id, c.kem) for c in configs] == [(2, KemId.XWING), (1, KemId.X25519_SHA256)]


def test_client_prefers_xwing_whatever_the_order() -> None:
    for configs in ([CLASSIC.config, XWING.config], [XWING.config, CLASSIC.config]):
        assert choose_config(configs) == XWING.config
        assert ClientRequest.from_config_list(encode_list(configs)).config == XWING.config
    assert choose_config([CLASSIC.config]) == CLASSIC.config


def test_require_post_quantum() -> None:
    assert choose_config([CLASSIC.config, XWING.config], require_post_quantum=True) == XWING.config
    with pytest.raises(UnsupportedError, match="post-quantum"):
        choose_config([CLASSIC.config], require_post_quantum=True)
    with pytest.raises(UnsupportedError):
        choose_config([])


def test_x25519_only_client_against_the_same_gateway() -> None:
    # A client that knows no X-Wing skips that config (here: it picks X25519 by itself) and still works.
    configs = decode_list(RING.encode_published())
    classic = [c for c in configs if c.kem is KemId.X25519_SHA256]
    enc_request, ctx = ClientRequest(classic[0]).encapsulate(b"old client")
    request, gctx = Gateway(RING).decapsulate(enc_request)
    assert request == b"old client" and gctx.key_id == 2
    assert ctx.decapsulate(gctx.encapsulate(b"ok")) == b"ok"


def test_a_list_with_an_unknown_kem_keeps_xwing() -> None:
    unknown = bytes((9,)) + b"\x00\x30" + bytes(1216) + b"\x00\x04\x00\x01\x00\x01"  # 0x0030 X25519Kyber768Draft00
    body = len(unknown).to_bytes(2, "big") + unknown + encode_list([XWING.config])
    assert decode_list(body) == [XWING.config]


def test_kem_mismatch_between_header_and_key_is_a_key_id_error() -> None:
    enc_request, _ = ClientRequest(CLASSIC.config).encapsulate(b"x")
    forged = bytes((3,)) + enc_request[1:]  # X25519 request sent to the X-Wing key id
    with pytest.raises(KeyIdError):
        Gateway(RING).decapsulate(forged)


def test_rotation_of_both_keys() -> None:
    now = [1000.0]
    ring = KeyRing([GatewayKey.generate(0, KemId.XWING), GatewayKey.generate(1, KemId.X25519_SHA256)],
                   clock=lambda: now[0])
    old = decode_list(ring.encode_published())
    old_request, _ = ClientRequest(choose_config(old)).encapsulate(b"old")
    new = [GatewayKey.generate(ring.reserve_key_id(), KemId.XWING, not_before=now[0]),
           GatewayKey.generate(ring.reserve_key_id(), KemId.X25519_SHA256, not_before=now[0])]
    ring.rotate(new, grace_seconds=60)
    published = decode_list(ring.encode_published())
    assert [(c.key_id, c.kem) for c in published] == [(2, KemId.XWING), (3, KemId.X25519_SHA256)]
    assert Gateway(ring).decapsulate(old_request)[0] == b"old"  # grace period
    now[0] += 61
    with pytest.raises(KeyIdError):
        Gateway(ring).decapsulate(old_request)


# ---------------------------------------------------------------------------------------------------------------
# Tampering and truncation


def test_bit_flips_of_a_request_fail() -> None:
    enc_request, _ = ClientRequest(XWING.config, SUITES[0]).encapsulate(b"hello")
    gateway = Gateway(RING)
    # Every bit of the header, then a stride through enc (ML-KEM ciphertext and X25519 share) and the ciphertext.
    bits = list(range(7 * 8)) + list(range(7 * 8, len(enc_request) * 8, 37)) + [len(enc_request) * 8 - 1]
    for bit in bits:
        with pytest.raises(RemoteProtocolError):
            gateway.decapsulate(flip_bit(enc_request, bit))


def test_every_truncation_of_a_request_fails() -> None:
    enc_request, _ = ClientRequest(XWING.config).encapsulate(b"hello")
    gateway = Gateway(RING)
    for cut in range(len(enc_request)):
        with pytest.raises((DecodeError, DecryptError)):
            gateway.decapsulate(enc_request[:cut])


def test_every_truncation_of_a_chunked_request_fails() -> None:
    client = ChunkedClientRequest(XWING.config)
    request = client.encode_chunk(b"one") + client.encode_chunk(b"two", final=True)
    for cut in list(range(0, 1140)) + list(range(1140, len(request))):
        gw = ChunkedGatewayRequest(RING)
        gw.receive_data(request[:cut])
        gw.receive_data(b"")
        got = []
        with pytest.raises(RemoteProtocolError):
            while (ev := gw.next_event()) is not NEED_DATA:
                got.append(ev)
        assert not any(isinstance(c, Chunk) and c.final for c in got)
