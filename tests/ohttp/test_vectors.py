"""Byte-for-byte reproduction of every published vector in ``shared/data/vectors``.

RFC 9458 Appendix A (both directions and every intermediate value), draft-ietf-ohai-chunked-ohttp-08 Appendix A
(every chunk, whole messages, incremental decoding), the RFC 9292 section 5 examples (decode to the decoded form and
exact re-encode) and the martinthomson/ohttp test vectors (BHTTP, must-fail cases, DeriveKeyPair).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import ohttp
from ohttp import (
    NEED_DATA,
    AeadId,
    BHTTPDecoder,
    Chunk,
    ChunkedClientRequest,
    ChunkedGatewayRequest,
    ClientRequest,
    Data,
    DecodeError,
    EndOfMessage,
    Gateway,
    GatewayKey,
    InformationalResponse,
    KdfId,
    KemId,
    KeyConfig,
    KeyRing,
    LimitError,
    Mode,
    Request,
    RequestHead,
    Response,
    ResponseHead,
    SymmetricSuite,
    Trailers,
    decode,
    decode_list,
    decode_request,
    decode_response,
    encode_list,
    encode_request,
    encode_response,
)
from ohttp._hpke import hkdf_expand, hkdf_extract
from ohttp.chunked import INFO_CHUNKED_REQUEST, LABEL_CHUNKED_RESPONSE, _ResponseCipher
from ohttp.encapsulation import INFO_REQUEST, LABEL_RESPONSE, build_header, build_info, response_keys
from tests.helpers import h, load_vector

RFC9458 = load_vector("rfc9458_appendix_a.json")
CHUNKED = load_vector("chunked_ohttp_draft08_appendix.json")
RFC9292 = load_vector("rfc9292_examples.json")
MT = load_vector("martinthomson_ohttp_tests.json")


def test_vector_fixture_points_at_the_shared_files(vectors_dir: Path) -> None:
    names = {p.name for p in vectors_dir.glob("*.json")}
    assert {
        "rfc9458_appendix_a.json",
        "chunked_ohttp_draft08_appendix.json",
        "rfc9292_examples.json",
        "martinthomson_ohttp_tests.json",
    } <= names


def _suite(v: dict[str, Any]) -> tuple[KemId, SymmetricSuite]:
    s = v["suite"]
    return KemId(s["kem_id"]), SymmetricSuite(KdfId(s["kdf_id"]), AeadId(s["aead_id"]))


# ---------------------------------------------------------------------------------------------------------------
# RFC 9458 Appendix A


class TestRFC9458:
    v = RFC9458

    def gateway_key(self) -> GatewayKey:
        return GatewayKey.from_private_bytes(self.v["key_id"], h(self.v["server_private_key"]))

    def test_lengths_are_those_of_the_hex(self) -> None:
        assert len(h(self.v["encapsulated_request"])) == self.v["actual_lengths"]["encapsulated_request"] == 80
        assert len(h(self.v["encapsulated_response"])) == self.v["actual_lengths"]["encapsulated_response"] == 35

    def test_key_config_from_private_key(self) -> None:
        key = self.gateway_key()
        assert key.config.encode() == h(self.v["key_config"])
        assert len(key.config.encode()) == 45

    def test_key_config_decode_encode(self) -> None:
        config = KeyConfig.decode(h(self.v["key_config"]))
        kem, suite = _suite(self.v)
        assert config.key_id == self.v["key_id"] == 1
        assert config.kem is kem
        assert config.public_key == self.gateway_key().config.public_key
        assert config.suites == (
            SymmetricSuite(KdfId.HKDF_SHA256, AeadId.AES_128_GCM),
            SymmetricSuite(KdfId.HKDF_SHA256, AeadId.CHACHA20_POLY1305),
        )
        assert config.supports(suite)
        assert config.encode() == h(self.v["key_config"])

    def test_ohttp_keys_media(self) -> None:
        config = KeyConfig.decode(h(self.v["key_config"]))
        assert encode_list([config]) == h(self.v["ohttp_keys_media"])
        assert decode_list(h(self.v["ohttp_keys_media"])) == [config]
        client = ClientRequest.from_config_list(h(self.v["ohttp_keys_media"]))
        assert client.config == config

    def test_header_and_info(self) -> None:
        kem, suite = _suite(self.v)
        header = build_header(self.v["key_id"], kem, suite)
        assert header == h("01002000010001")
        assert build_info(INFO_REQUEST, header) == h(self.v["hpke_info"])
        client = ClientRequest(KeyConfig.decode(h(self.v["key_config"])))
        assert client.suite == suite  # AES-128-GCM preferred over ChaCha20
        assert client.header() == header

    def test_client_encapsulates_exactly(self) -> None:
        client = ClientRequest(KeyConfig.decode(h(self.v["key_config"])))
        enc_request, _ = client.encapsulate(
            h(self.v["request_bhttp"]), ephemeral_key=h(self.v["ephemeral_private_key"])
        )
        assert enc_request == h(self.v["encapsulated_request"])
        assert enc_request[7:39] == h(self.v["ephemeral_public_key_enc"])

    def test_gateway_decapsulates_the_vector(self) -> None:
        gateway = Gateway([self.gateway_key()])
        request, response = gateway.decapsulate(h(self.v["encapsulated_request"]))
        assert request == h(self.v["request_bhttp"])
        assert response.enc == h(self.v["ephemeral_public_key_enc"])
        assert response.key_id == 1
        assert decode_request(request) == Request(method="GET", scheme="https", authority="example.com", path="/")

    def test_response_key_schedule(self) -> None:
        gateway = Gateway([self.gateway_key()])
        _, response = gateway.decapsulate(h(self.v["encapsulated_request"]))
        ctx = response._ctx
        assert self.v["export_label"].encode() == LABEL_RESPONSE
        secret = ctx.export(LABEL_RESPONSE, 16)
        assert secret == h(self.v["exported_secret"])
        salt = response.enc + h(self.v["response_nonce"])
        assert salt == h(self.v["salt"])
        prk = hkdf_extract(KdfId.HKDF_SHA256, salt, secret)
        assert prk == h(self.v["prk"])
        assert hkdf_expand(KdfId.HKDF_SHA256, prk, b"key", 16) == h(self.v["aead_key"])
        assert hkdf_expand(KdfId.HKDF_SHA256, prk, b"nonce", 12) == h(self.v["aead_nonce"])
        aead, nonce = response_keys(
            ctx, LABEL_RESPONSE, response.enc, h(self.v["response_nonce"]), KdfId.HKDF_SHA256, AeadId.AES_128_GCM
        )
        assert nonce == h(self.v["aead_nonce"])
        assert aead.seal(nonce, h(self.v["response_bhttp"]), b"") == h(self.v["encapsulated_response"])[16:]

    def test_gateway_encapsulates_response_exactly(self) -> None:
        gateway = Gateway([self.gateway_key()])
        _, response = gateway.decapsulate(h(self.v["encapsulated_request"]))
        out = response.encapsulate(h(self.v["response_bhttp"]), response_nonce=h(self.v["response_nonce"]))
        assert out == h(self.v["encapsulated_response"])

    def test_client_opens_the_vector_response(self) -> None:
        client = ClientRequest(KeyConfig.decode(h(self.v["key_config"])))
        _, ctx = client.encapsulate(h(self.v["request_bhttp"]), ephemeral_key=h(self.v["ephemeral_private_key"]))
        body = ctx.decapsulate(h(self.v["encapsulated_response"]))
        assert body == h(self.v["response_bhttp"])
        assert decode_response(body) == Response(status=200)

    def test_full_round_trip_with_fixed_randomness(self) -> None:
        client = ClientRequest(KeyConfig.decode(h(self.v["key_config"])))
        enc_request, client_ctx = client.encapsulate(
            h(self.v["request_bhttp"]), ephemeral_key=h(self.v["ephemeral_private_key"])
        )
        request, gateway_ctx = Gateway(KeyRing([self.gateway_key()])).decapsulate(enc_request)
        enc_response = gateway_ctx.encapsulate(
            encode_response(Response(status=200), truncate=True), response_nonce=h(self.v["response_nonce"])
        )
        assert enc_response == h(self.v["encapsulated_response"])
        assert client_ctx.decapsulate(enc_response) == h(self.v["response_bhttp"])
        assert encode_request(decode_request(request), truncate=True) == h(self.v["request_bhttp"])


# ---------------------------------------------------------------------------------------------------------------
# Chunked OHTTP draft-08 Appendix A



def _split(data: bytes, parts: list[bytes], how: str) -> list[bytes]:
    """The same bytes fed three ways (h11's reader test): as the vector's parts, whole, or one byte at a time."""
    if how == "parts":
        return parts
    if how == "whole":
        return [data]
    return [data[i : i + 1] for i in range(len(data))]

class TestChunkedDraft08:
    v = CHUNKED

    def gateway_key(self) -> GatewayKey:
        return GatewayKey.from_private_bytes(self.v["key_id"], h(self.v["server_private_key"]))

    def config(self) -> KeyConfig:
        return KeyConfig.decode(h(self.v["key_config"]))

    def client(self) -> ChunkedClientRequest:
        return ChunkedClientRequest(self.config(), ephemeral_key=h(self.v["ephemeral_private_key"]))

    def request_parts(self) -> list[bytes]:
        p = self.v["encapsulated_request_parts"]
        return [
            h(p["header"]) + h(p["enc"]) + h(p["chunk1_with_len"]),
            h(p["chunk2_with_len"]),
            h(p["final_chunk_with_zero_len"]),
        ]

    def response_parts(self) -> list[bytes]:
        p = self.v["encapsulated_response_parts"]
        return [h(p["nonce"]) + h(p["chunk1_with_len"]), h(p["chunk2_with_len"]), h(p["final_chunk_with_zero_len"])]

    def test_parts_make_the_whole(self) -> None:
        assert b"".join(self.request_parts()) == h(self.v["encapsulated_request"])
        assert b"".join(self.response_parts()) == h(self.v["encapsulated_response"])
        assert b"".join(h(c) for c in self.v["request_plaintext_chunks"]) == h(self.v["request_bhttp"])
        assert b"".join(h(c) for c in self.v["response_plaintext_chunks"]) == h(self.v["response_bhttp"])

    def test_key_config(self) -> None:
        assert self.gateway_key().config.encode() == h(self.v["key_config"])
        assert self.config().encode() == h(self.v["key_config"])

    def test_info(self) -> None:
        kem, suite = _suite(self.v)
        header = build_header(self.v["key_id"], kem, suite)
        assert header == h(self.v["encapsulated_request_parts"]["header"])
        assert self.v["hpke_info_label"].encode() == INFO_CHUNKED_REQUEST
        assert build_info(INFO_CHUNKED_REQUEST, header) == h(self.v["hpke_info"])

    def test_client_encodes_every_request_chunk(self) -> None:
        client = self.client()
        chunks = self.v["request_plaintext_chunks"]
        out = [client.encode_chunk(h(c), final=i == len(chunks) - 1) for i, c in enumerate(chunks)]
        assert out == self.request_parts()
        assert b"".join(out) == h(self.v["encapsulated_request"])
        with pytest.raises(ohttp.LocalProtocolError):
            client.encode_chunk(b"more")

    @pytest.mark.parametrize("split", ["parts", "whole", "bytewise"])
    def test_gateway_decodes_request_incrementally(self, split: str) -> None:
        gw = ChunkedGatewayRequest(KeyRing([self.gateway_key()]))
        pieces = _split(h(self.v["encapsulated_request"]), self.request_parts(), split)
        chunks: list[Chunk] = []
        for i, piece in enumerate(pieces):
            gw.receive_data(piece)
            while (ev := gw.next_event()) is not NEED_DATA:
                assert isinstance(ev, Chunk)
                chunks.append(ev)
            assert not any(c.final for c in chunks), "the final chunk can only be opened at the end of input"
            if split == "parts":
                assert len(chunks) == min(i + 1, 2), "each non-final chunk is released as soon as it is complete"
        assert gw.header_ready and gw.key_id == 1 and gw.enc == h(self.v["ephemeral_public_key_enc"])
        gw.receive_data(b"")
        while (ev := gw.next_event()) is not NEED_DATA:
            chunks.append(ev)
        expected = self.v["request_plaintext_chunks"]
        assert [c.data for c in chunks] == [h(c) for c in expected]
        assert [c.final for c in chunks] == [False] * (len(expected) - 1) + [True]

    def test_response_key_schedule_and_nonces(self) -> None:
        gw = ChunkedGatewayRequest(KeyRing([self.gateway_key()]))
        gw.receive_data(h(self.v["encapsulated_request"]))
        assert isinstance(gw.next_event(), Chunk)
        ctx = gw._ctx
        assert self.v["export_label"].encode() == LABEL_CHUNKED_RESPONSE
        assert ctx.export(LABEL_CHUNKED_RESPONSE, 16) == h(self.v["exported_secret"])
        salt = gw.enc + h(self.v["response_nonce"])
        assert salt == h(self.v["salt"])
        assert hkdf_extract(KdfId.HKDF_SHA256, salt, h(self.v["exported_secret"])) == h(self.v["prk"])
        assert hkdf_expand(KdfId.HKDF_SHA256, h(self.v["prk"]), b"key", 16) == h(self.v["aead_key"])
        aead, base = response_keys(
            ctx, LABEL_CHUNKED_RESPONSE, gw.enc, h(self.v["response_nonce"]), KdfId.HKDF_SHA256, AeadId.AES_128_GCM
        )
        assert base == h(self.v["aead_base_nonce"])
        cipher = _ResponseCipher(aead, base)
        assert [cipher._next_nonce() for _ in self.v["chunk_nonces"]] == [h(n) for n in self.v["chunk_nonces"]]

    def test_gateway_encodes_every_response_chunk(self) -> None:
        gw = ChunkedGatewayRequest(KeyRing([self.gateway_key()]))
        gw.receive_data(h(self.v["encapsulated_request"]))
        assert gw.next_event() == Chunk(h(self.v["request_plaintext_chunks"][0]))
        enc = gw.response(response_nonce=h(self.v["response_nonce"]))
        chunks = self.v["response_plaintext_chunks"]
        out = []
        for i, c in enumerate(chunks):
            assert not enc.finished
            out.append(enc.encode_chunk(h(c), final=i == len(chunks) - 1))
        assert enc.finished
        assert out == self.response_parts()
        assert b"".join(out) == h(self.v["encapsulated_response"])

    @pytest.mark.parametrize("split", ["parts", "whole", "bytewise"])
    def test_client_decodes_response_incrementally(self, split: str) -> None:
        client = self.client()
        client.encode_chunk(h(self.v["request_bhttp"]), final=True)
        dec = client.response()
        pieces = _split(h(self.v["encapsulated_response"]), self.response_parts(), split)
        chunks: list[Chunk] = []
        for i, piece in enumerate(pieces):
            dec.receive_data(piece)
            while (ev := dec.next_event()) is not NEED_DATA:
                assert isinstance(ev, Chunk)
                chunks.append(ev)
            if split == "parts":
                assert len(chunks) == min(i + 1, 2), "each non-final chunk is released as soon as it is complete"
        assert not any(c.final for c in chunks)
        dec.receive_data(b"")
        while (ev := dec.next_event()) is not NEED_DATA:
            chunks.append(ev)
        expected = [h(c) for c in self.v["response_plaintext_chunks"]]
        assert [c.data for c in chunks] == expected
        assert [c.final for c in chunks] == [False, False, True]
        assert decode_response(b"".join(c.data for c in chunks)) == Response(status=200)


# ---------------------------------------------------------------------------------------------------------------
# Binary HTTP examples (RFC 9292 s5 and martinthomson/ohttp bhttp tests)


def _fields(pairs: list[list[str]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs)


def assert_matches_decoded(msg: Request | Response, d: dict[str, Any], raw: bytes) -> None:
    """``msg`` (from :func:`decode`) equals the JSON's decoded form; the framing indicator is checked on ``raw``."""
    fi = d["framing_indicator"]
    assert raw[0] == fi
    dec = BHTTPDecoder()
    dec.receive_data(raw)
    dec.receive_data(b"")
    events = []
    while not isinstance(ev := dec.next_event(), EndOfMessage):
        assert ev is not NEED_DATA
        events.append(ev)
    head = next(e for e in events if isinstance(e, (RequestHead, ResponseHead)))
    assert head.mode is (Mode.KNOWN_LENGTH if fi in (0, 1) else Mode.INDETERMINATE_LENGTH)
    assert dec.is_request is (fi in (0, 2))
    if fi in (0, 2):
        assert isinstance(msg, Request)
        assert msg.method == d["method"].encode()
        assert msg.scheme == d["scheme"].encode()
        assert msg.authority == d["authority"].encode()
        assert msg.path == d["path"].encode()
    else:
        assert isinstance(msg, Response)
        assert msg.status == d["status"]
        infos = tuple(InformationalResponse(status=s, headers=_fields(f)) for s, f in d.get("informational", []))
        assert msg.informational == infos
        assert [e for e in events if isinstance(e, InformationalResponse)] == list(infos)
    assert msg.headers == _fields(d["headers"])
    assert msg.content == d["content"].encode("latin-1")
    assert msg.trailers == _fields(d["trailers"])
    assert (Trailers(msg.trailers) in events) is bool(msg.trailers)
    assert b"".join(e.data for e in events if isinstance(e, Data)) == msg.content


def _reencode(msg: Request | Response, mode: Mode, truncate: bool, padding: int) -> bytes:
    if isinstance(msg, Request):
        return encode_request(msg, mode, truncate=truncate, padding=padding)
    return encode_response(msg, mode, truncate=truncate, padding=padding)


#: How each example was framed: (mode, truncate, padding). Every vector must be listed here.
RFC9292_ENCODING = {
    "known_length_request": (Mode.KNOWN_LENGTH, False, 0),  # keeps its trailing 0000 (empty content, trailers)
    "indeterminate_length_request_padded": (Mode.INDETERMINATE_LENGTH, False, 10),
    "indeterminate_length_response_with_informational": (Mode.INDETERMINATE_LENGTH, False, 0),
    "known_length_response_with_trailer": (Mode.KNOWN_LENGTH, False, 0),
}


def test_every_rfc9292_example_has_an_encoding() -> None:
    assert {e["name"] for e in RFC9292["examples"]} == set(RFC9292_ENCODING)


@pytest.mark.parametrize("example", RFC9292["examples"], ids=lambda e: e["name"])
def test_rfc9292_decode(example: dict[str, Any]) -> None:
    raw = h(example["hex"])
    msg = decode(raw)
    assert_matches_decoded(msg, example["decoded"], raw)
    if isinstance(msg, Request):
        assert decode_request(raw) == msg
    else:
        assert decode_response(raw) == msg


@pytest.mark.parametrize("example", RFC9292["examples"], ids=lambda e: e["name"])
def test_rfc9292_reencode(example: dict[str, Any]) -> None:
    raw = h(example["hex"])
    mode, truncate, padding = RFC9292_ENCODING[example["name"]]
    assert padding == example["decoded"]["padding"]
    assert _reencode(decode(raw), mode, truncate, padding) == raw


def test_rfc9292_padding_is_ten_zero_bytes() -> None:
    ex = next(e for e in RFC9292["examples"] if e["name"] == "indeterminate_length_request_padded")
    raw = h(ex["hex"])
    assert raw.endswith(bytes(10) + b"\x00\x00\x00") and raw[-14] != 0
    assert decode(raw) == decode(raw[:-10])


def test_rfc9292_known_and_indeterminate_requests_agree() -> None:
    known, indet = (h(e["hex"]) for e in RFC9292["examples"][:2])
    assert decode(known) == decode(indet)
    assert encode_request(decode(indet), Mode.KNOWN_LENGTH) == known


def test_rfc9292_truncated_known_request_is_the_same_message() -> None:
    known = h(RFC9292["examples"][0]["hex"])
    assert known.endswith(b"\x00\x00")
    assert decode(known[:-2]) == decode(known[:-1]) == decode(known)
    assert encode_request(decode(known), truncate=True) == known[:-2]


MT_ENCODING = {
    "CHUNKED_INDETERMINATE": (Mode.INDETERMINATE_LENGTH, False, 0),
    "CHUNKED_KNOWN (== RFC 9292 known-length response example)": (Mode.KNOWN_LENGTH, False, 0),
    "REQUEST_KNOWN (== RFC 9292 known-length request example)": (Mode.KNOWN_LENGTH, False, 0),
    "tiny_request": (Mode.KNOWN_LENGTH, True, 0),
    "tiny_response": (Mode.KNOWN_LENGTH, True, 0),
}
MT_OK = [v for v in MT["bhttp"] if "expect_error" not in v]
MT_FAIL = [v for v in MT["bhttp"] if "expect_error" in v]


def test_every_martinthomson_vector_is_classified() -> None:
    assert {v["name"] for v in MT_OK} == set(MT_ENCODING)
    assert len(MT_FAIL) == 2


@pytest.mark.parametrize("vector", MT_OK, ids=lambda v: v["name"].split()[0])
def test_martinthomson_bhttp_decode_and_reencode(vector: dict[str, Any]) -> None:
    raw = h(vector["hex"])
    msg = decode(raw)
    if "decoded" in vector:
        assert_matches_decoded(msg, vector["decoded"], raw)
    mode, truncate, padding = MT_ENCODING[vector["name"]]
    assert _reencode(msg, mode, truncate, padding) == raw


def test_martinthomson_request_known_is_the_rfc_example() -> None:
    mt = next(v for v in MT_OK if v["name"].startswith("REQUEST_KNOWN"))
    rfc = RFC9292["examples"][0]
    assert decode(h(mt["hex"])) == decode(h(rfc["hex"]))
    assert_matches_decoded(decode(h(mt["hex"])), rfc["decoded"], h(mt["hex"]))


def test_martinthomson_tiny_messages_are_the_rfc9458_payloads() -> None:
    tiny = {v["name"]: h(v["hex"]) for v in MT_OK}
    assert tiny["tiny_request"] == h(RFC9458["request_bhttp"])
    assert tiny["tiny_response"] == h(RFC9458["response_bhttp"])


@pytest.mark.parametrize("vector", MT_FAIL, ids=lambda v: v["hex"])
def test_martinthomson_must_fail(vector: dict[str, Any]) -> None:
    raw = h(vector["hex"])
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=vector["expect_error"]):
            decode(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoding {vector['hex']} allocated {peak} bytes"


@pytest.mark.parametrize("vector", MT_FAIL, ids=lambda v: v["hex"])
def test_martinthomson_must_fail_streaming(vector: dict[str, Any]) -> None:
    """Before the end of input the length cannot be called truncated, but it must not be waited for either."""
    raw = h(vector["hex"])
    tracemalloc.start()
    try:
        dec = BHTTPDecoder()
        dec.receive_data(raw)
        try:
            assert dec.next_event() is NEED_DATA  # "0001": one byte of method may still come
            dec.receive_data(b"")
            dec.next_event()
        except LimitError:
            assert len(raw) > 2  # a 2^62 method length is refused without waiting for it
        except DecodeError as exc:
            assert "truncated" in str(exc)
        else:
            pytest.fail("the truncated message was accepted")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_derive_key_pair() -> None:
    d = MT["derive_key_pair"]
    key = GatewayKey.derive(1, h(d["ikm"]))
    assert key.config.encode() == h(d["expected_key_config"])
    assert KeyConfig.decode(h(d["expected_key_config"])) == key.config
    # Deterministic: the same seed gives the same key, which then works end to end.
    again = GatewayKey.derive(1, h(d["ikm"]))
    assert again.private_key.private_bytes() == key.private_key.private_bytes()
    enc, ctx = ClientRequest(key.config).encapsulate(b"ping")
    body, resp = Gateway([again]).decapsulate(enc)
    assert body == b"ping"
    assert ctx.decapsulate(resp.encapsulate(b"pong")) == b"pong"
