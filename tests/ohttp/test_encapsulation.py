"""RFC 9458 request and response encapsulation: every suite, tampering, truncation, one-shot contexts."""

from __future__ import annotations

import itertools

import pytest

from ohttp import (
    AeadId,
    ClientRequest,
    ClientResponse,
    DecodeError,
    DecryptError,
    Gateway,
    GatewayKey,
    KdfId,
    KemId,
    KeyConfig,
    KeyIdError,
    KeyRing,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
    SymmetricSuite,
    UnsupportedError,
    choose_suite,
    decode_request,
    encode_request,
)
from ohttp.encapsulation import REQUEST_HEADER_LEN, entropy_len
from tests.helpers import all_bit_flips, h, load_vector

KEMS = [KemId.X25519_SHA256, KemId.P256_SHA256]
SUITES = [SymmetricSuite(kdf, aead) for kdf, aead in itertools.product(KdfId, AeadId)]
RFC = load_vector("rfc9458_appendix_a.json")


def _suite_id(s: SymmetricSuite) -> str:
    return f"{s.kdf.name}-{s.aead.name}"


@pytest.fixture(scope="module")
def keys() -> dict[KemId, GatewayKey]:
    """One key per KEM offering all nine suites."""
    return {kem: GatewayKey.generate(i + 1, kem, SUITES) for i, kem in enumerate(KEMS)}


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
@pytest.mark.parametrize("suite", SUITES, ids=_suite_id)
def test_roundtrip_every_suite(keys: dict[KemId, GatewayKey], kem: KemId, suite: SymmetricSuite) -> None:
    key = keys[kem]
    gateway = Gateway(KeyRing(keys.values()))
    request = encode_request(Request(method="POST", path="/v1/chat/completions", content=b"{}" * 100))
    client = ClientRequest(key.config, suite)
    enc_request, client_ctx = client.encapsulate(request)
    assert enc_request[:REQUEST_HEADER_LEN] == bytes((key.config.key_id,)) + int(kem).to_bytes(2, "big") + int(
        suite.kdf
    ).to_bytes(2, "big") + int(suite.aead).to_bytes(2, "big")
    assert len(enc_request) == REQUEST_HEADER_LEN + kem.n_pk + len(request) + 16
    body, gateway_ctx = gateway.decapsulate(enc_request)
    assert body == request
    assert gateway_ctx.enc == enc_request[REQUEST_HEADER_LEN : REQUEST_HEADER_LEN + kem.n_pk]
    assert gateway_ctx.key_id == key.config.key_id
    response = b"\x01\x40\xc8" + b"z" * 500
    enc_response = gateway_ctx.encapsulate(response)
    assert len(enc_response) == entropy_len(suite.aead) + len(response) + 16
    assert client_ctx.decapsulate(enc_response) == response


@pytest.mark.parametrize(
    ("aead", "n"), [(AeadId.AES_128_GCM, 16), (AeadId.AES_256_GCM, 32), (AeadId.CHACHA20_POLY1305, 32)]
)
def test_response_nonce_length(keys: dict[KemId, GatewayKey], aead: AeadId, n: int) -> None:
    assert entropy_len(aead) == n
    key = keys[KemId.X25519_SHA256]
    enc_request, client_ctx = ClientRequest(key.config, SymmetricSuite(KdfId.HKDF_SHA256, aead)).encapsulate(b"q")
    _, gw = Gateway([key]).decapsulate(enc_request)
    enc_response = gw.encapsulate(b"")
    assert len(enc_response) == n + 16
    assert client_ctx.decapsulate(enc_response) == b""


def test_wrong_response_nonce_length_fails(keys: dict[KemId, GatewayKey]) -> None:
    key = keys[KemId.X25519_SHA256]
    enc_request, client_ctx = ClientRequest(key.config).encapsulate(b"q")
    _, gw = Gateway([key]).decapsulate(enc_request)
    out = gw.encapsulate(b"resp", response_nonce=bytes(15))  # test-only parameter misused
    with pytest.raises(DecryptError):
        client_ctx.decapsulate(out)


def test_fresh_randomness_per_request_and_response(keys: dict[KemId, GatewayKey]) -> None:
    key = keys[KemId.X25519_SHA256]
    a, _ = ClientRequest(key.config).encapsulate(b"same")
    b, _ = ClientRequest(key.config).encapsulate(b"same")
    assert a[7:39] != b[7:39] and a[39:] != b[39:]
    _, gw1 = Gateway([key]).decapsulate(a)
    _, gw2 = Gateway([key]).decapsulate(a)  # a replay gets a new response nonce
    assert gw1.encapsulate(b"r")[:16] != gw2.encapsulate(b"r")[:16]


def test_choose_suite_prefers_aes128_then_chacha() -> None:
    pk = bytes(32)

    def cfg(*suites: SymmetricSuite) -> KeyConfig:
        return KeyConfig(key_id=1, kem=KemId.X25519_SHA256, public_key=pk, suites=suites)

    aes128 = SymmetricSuite(KdfId.HKDF_SHA256, AeadId.AES_128_GCM)
    aes128_384 = SymmetricSuite(KdfId.HKDF_SHA384, AeadId.AES_128_GCM)
    chacha = SymmetricSuite(KdfId.HKDF_SHA256, AeadId.CHACHA20_POLY1305)
    aes256 = SymmetricSuite(KdfId.HKDF_SHA512, AeadId.AES_256_GCM)
    assert choose_suite(cfg(aes256, chacha, aes128)) == aes128
    assert choose_suite(cfg(aes256, chacha)) == chacha
    assert choose_suite(cfg(aes256)) == aes256
    assert choose_suite(cfg(aes128_384, aes128)) == aes128
    with pytest.raises(LocalProtocolError):
        ClientRequest(cfg(aes128), chacha)


# ---------------------------------------------------------------------------------------------------------------
# Tampering and truncation


def _rfc_gateway() -> Gateway:
    return Gateway([GatewayKey.from_private_bytes(1, h(RFC["server_private_key"]))])


PARTS = [("key_id", 1), ("kem", 3), ("kdf", 5), ("aead", 7), ("enc", 39), ("ct", 80)]


def test_every_bit_flip_of_the_rfc_request_fails() -> None:
    gateway = _rfc_gateway()
    enc_request = h(RFC["encapsulated_request"])
    assert gateway.decapsulate(enc_request)[0] == h(RFC["request_bhttp"])
    kinds: dict[str, set[type]] = {
        "key_id": set(),
        "kem": set(),
        "kdf": set(),
        "aead": set(),
        "enc": set(),
        "ct": set(),
    }
    for bit, flipped in all_bit_flips(enc_request):
        with pytest.raises(RemoteProtocolError) as info:
            gateway.decapsulate(flipped)
        byte = bit // 8
        part = next(name for name, end in PARTS if byte < end)
        kinds[part].add(type(info.value))
    assert kinds["key_id"] == {KeyIdError}
    assert kinds["kem"] == {KeyIdError}
    assert kinds["kdf"] <= {KeyIdError, UnsupportedError} and UnsupportedError in kinds["kdf"]
    # AES-128-GCM (1) flips to ChaCha20 (3), which the key offers: that one fails in decryption instead.
    assert kinds["aead"] <= {KeyIdError, UnsupportedError, DecryptError} and DecryptError in kinds["aead"]
    assert kinds["enc"] == {DecryptError}
    assert kinds["ct"] == {DecryptError}


@pytest.mark.parametrize("kem", KEMS, ids=lambda k: k.name)
def test_every_bit_flip_of_a_request_fails(keys: dict[KemId, GatewayKey], kem: KemId) -> None:
    key = keys[kem]
    gateway = Gateway([key])
    enc_request, _ = ClientRequest(key.config).encapsulate(b"hello")
    for bit, flipped in all_bit_flips(enc_request):
        with pytest.raises(RemoteProtocolError) as info:
            gateway.decapsulate(flipped)
        if bit >= REQUEST_HEADER_LEN * 8:
            assert isinstance(info.value, DecryptError), f"bit {bit}"
            assert info.value.status_hint == 422


def test_every_bit_flip_of_the_rfc_response_fails() -> None:
    enc_response = h(RFC["encapsulated_response"])
    config = KeyConfig.decode(h(RFC["key_config"]))
    for _, flipped in all_bit_flips(enc_response):
        _, ctx = ClientRequest(config).encapsulate(
            h(RFC["request_bhttp"]), ephemeral_key=h(RFC["ephemeral_private_key"])
        )
        with pytest.raises(DecryptError):
            ctx.decapsulate(flipped)
    _, ctx = ClientRequest(config).encapsulate(h(RFC["request_bhttp"]), ephemeral_key=h(RFC["ephemeral_private_key"]))
    assert ctx.decapsulate(enc_response) == h(RFC["response_bhttp"])


@pytest.mark.parametrize("aead", list(AeadId), ids=lambda a: a.name)
def test_every_bit_flip_of_a_response_fails(keys: dict[KemId, GatewayKey], aead: AeadId) -> None:
    key = keys[KemId.X25519_SHA256]
    suite = SymmetricSuite(KdfId.HKDF_SHA256, aead)
    enc_request, first = ClientRequest(key.config, suite).encapsulate(b"q")
    _, gw = Gateway([key]).decapsulate(enc_request)
    enc_response = gw.encapsulate(b"\x01\x40\xc8")
    assert len(enc_response) == entropy_len(aead) + 3 + 16
    # ClientResponse is one-shot, so each flip gets its own over the same HPKE sender context.
    for _, flipped in all_bit_flips(enc_response):
        ctx = ClientResponse(first._ctx, first._enc, suite.kdf, suite.aead)
        with pytest.raises(DecryptError):
            ctx.decapsulate(flipped)
    assert first.decapsulate(enc_response) == b"\x01\x40\xc8"


def test_every_truncation_of_a_request_fails() -> None:
    gateway = _rfc_gateway()
    enc_request = h(RFC["encapsulated_request"])
    for cut in range(len(enc_request)):
        with pytest.raises(RemoteProtocolError) as info:
            gateway.decapsulate(enc_request[:cut])
        if cut < REQUEST_HEADER_LEN + 32 + 16:
            assert isinstance(info.value, DecodeError), cut
            assert info.value.status_hint == 400
        else:
            assert isinstance(info.value, DecryptError), cut
    with pytest.raises(DecryptError):
        gateway.decapsulate(enc_request + b"\x00")


def test_every_truncation_of_a_response_fails() -> None:
    config = KeyConfig.decode(h(RFC["key_config"]))
    enc_response = h(RFC["encapsulated_response"])
    for cut in range(len(enc_response) + 1):
        data = enc_response[:cut] if cut < len(enc_response) else enc_response + b"\x00"
        _, ctx = ClientRequest(config).encapsulate(b"", ephemeral_key=h(RFC["ephemeral_private_key"]))
        with pytest.raises(RemoteProtocolError) as info:
            ctx.decapsulate(data)
        assert isinstance(info.value, DecodeError if cut < 32 else DecryptError), cut


def test_empty_plaintexts() -> None:
    key = GatewayKey.generate(1)
    enc_request, ctx = ClientRequest(key.config).encapsulate(b"")
    body, gw = Gateway([key]).decapsulate(enc_request)
    assert body == b""
    assert ctx.decapsulate(gw.encapsulate(b"")) == b""


# ---------------------------------------------------------------------------------------------------------------
# Contexts, keys


def test_response_contexts_are_one_shot() -> None:
    key = GatewayKey.generate(1)
    enc_request, client_ctx = ClientRequest(key.config).encapsulate(b"q")
    _, gw = Gateway([key]).decapsulate(enc_request)
    enc_response = gw.encapsulate(b"a")
    with pytest.raises(LocalProtocolError):
        gw.encapsulate(b"b")
    assert client_ctx.decapsulate(enc_response) == b"a"
    with pytest.raises(LocalProtocolError):
        client_ctx.decapsulate(enc_response)


def test_failed_open_still_consumes_the_client_context() -> None:
    key = GatewayKey.generate(1)
    enc_request, client_ctx = ClientRequest(key.config).encapsulate(b"q")
    _, gw = Gateway([key]).decapsulate(enc_request)
    enc_response = gw.encapsulate(b"a")
    with pytest.raises(DecryptError):
        client_ctx.decapsulate(enc_response[:-1] + bytes([enc_response[-1] ^ 1]))
    with pytest.raises(LocalProtocolError):
        client_ctx.decapsulate(enc_response)


def test_responses_cannot_be_cross_opened() -> None:
    key = GatewayKey.generate(1)
    gateway = Gateway([key])
    req_a, ctx_a = ClientRequest(key.config).encapsulate(b"a")
    req_b, ctx_b = ClientRequest(key.config).encapsulate(b"b")
    _, gw_a = gateway.decapsulate(req_a)
    _, gw_b = gateway.decapsulate(req_b)
    resp_a = gw_a.encapsulate(b"for a")
    resp_b = gw_b.encapsulate(b"for b")
    with pytest.raises(DecryptError):
        ctx_a.decapsulate(resp_b)
    with pytest.raises(DecryptError):
        ctx_b.decapsulate(resp_a)


def test_request_for_another_key_with_same_id_fails_decryption() -> None:
    a, b = GatewayKey.generate(1), GatewayKey.generate(1)
    enc_request, _ = ClientRequest(a.config).encapsulate(b"x")
    with pytest.raises(DecryptError) as info:
        Gateway([b]).decapsulate(enc_request)
    assert info.value.status_hint == 422


def test_unknown_key_id_is_422() -> None:
    key = GatewayKey.generate(1)
    other = GatewayKey.generate(2)
    enc_request, _ = ClientRequest(other.config).encapsulate(b"x")
    with pytest.raises(KeyIdError) as info:
        Gateway([key]).decapsulate(enc_request)
    assert info.value.status_hint == 422


def test_suite_not_offered_by_the_key_is_a_key_id_error() -> None:
    key = GatewayKey.generate(1, suites=[SymmetricSuite(KdfId.HKDF_SHA256, AeadId.AES_128_GCM)])
    wide = KeyConfig(
        key_id=1,
        kem=KemId.X25519_SHA256,
        public_key=key.config.public_key,
        suites=(SymmetricSuite(KdfId.HKDF_SHA384, AeadId.AES_256_GCM),),
    )
    enc_request, _ = ClientRequest(wide).encapsulate(b"x")
    with pytest.raises(KeyIdError):
        Gateway([key]).decapsulate(enc_request)


def test_unknown_algorithm_ids_are_unsupported() -> None:
    gateway = _rfc_gateway()
    enc_request = bytearray(h(RFC["encapsulated_request"]))
    for pos, value in ((3, b"\x00\x09"), (5, b"\xff\xff"), (5, b"\x00\x00")):
        bad = bytearray(enc_request)
        bad[pos : pos + 2] = value
        with pytest.raises(UnsupportedError) as info:
            gateway.decapsulate(bytes(bad))
        assert info.value.status_hint == 400


def test_gateway_accepts_a_key_ring_or_keys() -> None:
    key = GatewayKey.generate(3)
    ring = KeyRing([key])
    assert Gateway(ring).keys is ring
    assert Gateway([key]).keys.get(3) is key


def test_inner_request_is_bhttp_end_to_end() -> None:
    key = GatewayKey.generate(1)
    req = Request(
        method="POST",
        scheme="https",
        authority="veil.example",
        path="/v1/chat/completions",
        headers=[("content-type", "application/json"), ("date", "Mon, 27 Jul 2009 12:28:53 GMT")],
        content=b'{"model":"m","messages":[]}',
    )
    enc_request, _ = ClientRequest.from_config_list(
        len(key.config.encode()).to_bytes(2, "big") + key.config.encode()
    ).encapsulate(encode_request(req))
    body, _ = Gateway([key]).decapsulate(enc_request)
    assert decode_request(body) == req
