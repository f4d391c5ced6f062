"""Chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08): round trips, tampering, truncation, limits, an SSE stream."""

from __future__ import annotations

import json

import pytest

import ohttp
from ohttp import (
    MAX_CHUNK_SIZE,
    NEED_DATA,
    AeadId,
    BHTTPDecoder,
    Chunk,
    ChunkedClientRequest,
    ChunkedClientResponse,
    ChunkedGatewayRequest,
    ChunkedGatewayResponse,
    ChunkError,
    ClientRequest,
    Data,
    DecryptError,
    EndOfMessage,
    Gateway,
    GatewayKey,
    KdfId,
    KemId,
    KeyIdError,
    KeyRing,
    LocalProtocolError,
    Mode,
    RemoteProtocolError,
    Request,
    ResponseHead,
    SymmetricSuite,
    decode_request,
    encode_chunk,
    encode_end,
    encode_request,
    encode_response_head,
)
from ohttp._varint import decode_varint, encode_varint
from tests.helpers import all_bit_flips

SUITES = [SymmetricSuite(KdfId.HKDF_SHA256, aead) for aead in AeadId] + [
    SymmetricSuite(KdfId.HKDF_SHA512, AeadId.AES_256_GCM)
]
KEY = GatewayKey.generate(1, KemId.X25519_SHA256, SUITES)
RING = KeyRing([KEY])

REQUEST_PIECES = [b"first piece", b"2", b"third" * 50, b"fourth"]
RESPONSE_PIECES = [b"\x03\x40\xc8\x00", b"alpha", b"b" * 300, b"gamma"]


class Exchange:
    """A client and gateway wired back to back (no I/O), with the bytes each side produced per call."""

    def __init__(self, suite: SymmetricSuite | None = None, key: GatewayKey = KEY) -> None:
        self.client = ChunkedClientRequest(key.config, suite)
        self.gateway = ChunkedGatewayRequest(KeyRing([key]))
        self.request_parts: list[bytes] = []
        self.response_parts: list[bytes] = []

    def send_request(self, pieces: list[bytes], final: bytes = b"") -> bytes:
        for p in pieces:
            self.request_parts.append(self.client.encode_chunk(p))
        self.request_parts.append(self.client.encode_chunk(final, final=True))
        return b"".join(self.request_parts)

    def open_request(self) -> ChunkedGatewayResponse:
        self.gateway.receive_data(self.request_parts[0])
        ev = self.gateway.next_event()  # NEED_DATA when the first output holds only the final chunk
        assert isinstance(ev, Chunk) or ev is NEED_DATA
        assert self.gateway.header_ready
        return self.gateway.response()

    def send_response(self, pieces: list[bytes], final: bytes = b"") -> bytes:
        enc = self.open_request()
        for p in pieces:
            self.response_parts.append(enc.encode_chunk(p))
        self.response_parts.append(enc.encode_chunk(final, final=True))
        return b"".join(self.response_parts)


def drain(
    decoder: ChunkedClientResponse | ChunkedGatewayRequest, pieces: list[bytes], *, eof: bool = True
) -> list[Chunk]:
    out: list[Chunk] = []
    for piece in pieces:
        if not piece:
            continue  # b"" would mean the end of input
        decoder.receive_data(piece)
        while (ev := decoder.next_event()) is not NEED_DATA:
            assert isinstance(ev, Chunk)
            out.append(ev)
    if eof:
        decoder.receive_data(b"")
        while (ev := decoder.next_event()) is not NEED_DATA:
            assert isinstance(ev, Chunk)
            out.append(ev)
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def test_one_need_data_sentinel() -> None:
    """Regression: chunked.py had its own NEED_DATA, so ``ev is ohttp.NEED_DATA`` never matched there."""
    assert ohttp.chunked.NEED_DATA is ohttp.NEED_DATA is ohttp.bhttp.NEED_DATA
    dec = ChunkedGatewayRequest(RING)
    assert dec.next_event() is ohttp.NEED_DATA


# ---------------------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: f"{s.kdf.name}-{s.aead.name}")
@pytest.mark.parametrize("split", ["whole", "parts", "bytewise"])
def test_roundtrip_both_directions(suite: SymmetricSuite, split: str) -> None:
    ex = Exchange(suite)
    request = ex.send_request(REQUEST_PIECES, final=b"last")
    response = ex.send_response(RESPONSE_PIECES, final=b"\x00\x00")

    def pieces(data: bytes, parts: list[bytes]) -> list[bytes]:
        return {"whole": [data], "parts": parts, "bytewise": bytewise(data)}[split]

    gw = ChunkedGatewayRequest(RING)
    got = drain(gw, pieces(request, ex.request_parts))
    assert got == [Chunk(p) for p in REQUEST_PIECES] + [Chunk(b"last", final=True)]
    assert gw.key_id == 1 and gw.enc == request[7:39]
    dec = ex.client.response()
    got = drain(dec, pieces(response, ex.response_parts))
    assert got == [Chunk(p) for p in RESPONSE_PIECES] + [Chunk(b"\x00\x00", final=True)]
    assert len(response) >= max(16, 32 if suite.aead is not AeadId.AES_128_GCM else 16)


@pytest.mark.parametrize("kem", [KemId.X25519_SHA256, KemId.P256_SHA256], ids=lambda k: k.name)
def test_many_chunks(kem: KemId) -> None:
    key = GatewayKey.generate(7, kem)
    ex = Exchange(key=key)
    req_pieces = [b"r%d" % i for i in range(300)]
    resp_pieces = [b"s%d" % i * (i % 7 + 1) for i in range(300)]
    request = ex.send_request(req_pieces)
    response = ex.send_response(resp_pieces, final=b"end")
    gw = ChunkedGatewayRequest(KeyRing([key]))
    assert [c.data for c in drain(gw, bytewise(request))] == req_pieces + [b""]
    dec = ex.client.response()
    got = drain(dec, bytewise(response))
    assert [c.data for c in got] == resp_pieces + [b"end"]
    assert [c.final for c in got] == [False] * 300 + [True]


def test_chunks_are_released_as_soon_as_complete() -> None:
    ex = Exchange()
    ex.send_request([b"a"])
    ex.send_response([b"x", b"y"], final=b"z")
    dec = ex.client.response()
    first, second, final = ex.response_parts
    dec.receive_data(first[:-1])
    assert dec.next_event() is NEED_DATA
    dec.receive_data(first[-1:])
    assert dec.next_event() == Chunk(b"x")
    dec.receive_data(second)
    assert dec.next_event() == Chunk(b"y")
    dec.receive_data(final)
    assert dec.next_event() is NEED_DATA  # the final chunk runs to the end of the body
    dec.receive_data(b"")
    assert dec.next_event() == Chunk(b"z", final=True)
    assert dec.next_event() is NEED_DATA


def test_gateway_can_answer_before_the_request_ends() -> None:
    """Interactive use: the response encoder exists once the request header is in."""
    client = ChunkedClientRequest(KEY.config)
    gw = ChunkedGatewayRequest(RING)
    assert not gw.header_ready
    with pytest.raises(LocalProtocolError):
        gw.response()
    with pytest.raises(LocalProtocolError):
        _ = gw.key_id
    with pytest.raises(LocalProtocolError):
        _ = gw.enc
    gw.receive_data(client.encode_chunk(b"hello"))
    assert gw.next_event() == Chunk(b"hello")
    assert gw.header_ready
    enc = gw.response()
    dec = client.response()
    dec.receive_data(enc.encode_chunk(b"early"))
    assert dec.next_event() == Chunk(b"early")
    gw.receive_data(client.encode_chunk(b"more", final=True))
    gw.receive_data(b"")
    assert gw.next_event() == Chunk(b"more", final=True)
    dec.receive_data(enc.encode_chunk(b"", final=True))
    dec.receive_data(b"")
    assert dec.next_event() == Chunk(b"", final=True)


def test_encoder_misuse_is_local() -> None:
    client = ChunkedClientRequest(KEY.config)
    with pytest.raises(LocalProtocolError):
        client.encode_chunk(b"")
    client.encode_chunk(b"x", final=True)
    with pytest.raises(LocalProtocolError):
        client.encode_chunk(b"y")
    with pytest.raises(LocalProtocolError):
        client.encode_chunk(b"", final=True)
    ex = Exchange()
    ex.send_request([])
    enc = ex.open_request()
    with pytest.raises(LocalProtocolError):
        enc.encode_chunk(b"")
    assert not enc.finished
    enc.encode_chunk(b"", final=True)
    assert enc.finished
    with pytest.raises(LocalProtocolError):
        enc.encode_chunk(b"x", final=True)
    with pytest.raises(LocalProtocolError):
        ChunkedClientRequest(KEY.config, SymmetricSuite(KdfId.HKDF_SHA384, AeadId.AES_128_GCM))


def test_first_output_carries_header_and_nonce() -> None:
    ex = Exchange(SymmetricSuite(KdfId.HKDF_SHA256, AeadId.CHACHA20_POLY1305))
    ex.send_request([b"a"])
    assert ex.request_parts[0][:7] == bytes.fromhex("01002000010003")
    assert len(ex.request_parts[0]) == 7 + 32 + 1 + 1 + 16
    ex.send_response([b"b"])
    assert len(ex.response_parts[0]) == 32 + 1 + 1 + 16  # ChaCha20: 32-byte nonce


# ---------------------------------------------------------------------------------------------------------------
# Large data


@pytest.mark.parametrize("size", [MAX_CHUNK_SIZE, MAX_CHUNK_SIZE + 1, 2 * MAX_CHUNK_SIZE, 40000])
@pytest.mark.parametrize("final", [False, True])
def test_large_data_is_split(size: int, final: bool) -> None:
    ex = Exchange()
    data = bytes(i % 251 for i in range(size))
    ex.request_parts.append(ex.client.encode_chunk(data, final=final))
    if not final:
        ex.request_parts.append(ex.client.encode_chunk(b"", final=True))
    wire = b"".join(ex.request_parts)
    chunks = drain(ChunkedGatewayRequest(RING), [wire])
    expected_sizes = [len(data[i : i + MAX_CHUNK_SIZE]) for i in range(0, size, MAX_CHUNK_SIZE)]
    assert [len(c.data) for c in chunks if c.data] == expected_sizes
    assert b"".join(c.data for c in chunks) == data
    assert chunks[-1].final and all(not c.final for c in chunks[:-1])
    # Same on the response side.
    resp = ex.open_request()
    out = resp.encode_chunk(data, final=final) + (b"" if final else resp.encode_chunk(b"", final=True))
    got = drain(ex.client.response(), [out])
    assert [len(c.data) for c in got if c.data] == expected_sizes


def test_a_full_size_chunk_is_accepted_and_one_more_byte_is_not() -> None:
    ex = Exchange()
    ex.send_request([])
    enc = ex.open_request()
    dec = ex.client.response()
    full = enc.encode_chunk(b"x" * MAX_CHUNK_SIZE)
    assert len(full) == 16 + 4 + MAX_CHUNK_SIZE + 16  # 16400 needs a 4-byte varint
    dec.receive_data(full)
    assert dec.next_event() == Chunk(b"x" * MAX_CHUNK_SIZE)
    sealed = enc._cipher.seal(b"x" * (MAX_CHUNK_SIZE + 1), False)  # bypass the encoder's splitting
    assert len(sealed) == MAX_CHUNK_SIZE + 17
    dec.receive_data(encode_varint(len(sealed)))
    with pytest.raises(ChunkError):
        dec.next_event()


@pytest.mark.parametrize("length", [MAX_CHUNK_SIZE + 17, 2**20, 2**62 - 1])
def test_oversized_chunk_length_is_rejected_without_waiting(length: int) -> None:
    ex = Exchange()
    ex.send_request([])
    ex.open_request()
    dec = ex.client.response()
    dec.receive_data(bytes(16) + encode_varint(length))  # nonce, then the length only
    with pytest.raises(ChunkError):
        dec.next_event()
    gw = ChunkedGatewayRequest(RING)
    gw.receive_data(ex.request_parts[0][:39] + encode_varint(length))
    with pytest.raises(ChunkError):
        gw.next_event()


def test_smaller_configured_limit() -> None:
    ex = Exchange()
    ex.send_request([b"x" * 100])
    ex.send_response([b"y" * 101])
    gw = ChunkedGatewayRequest(RING, max_chunk_size=100)
    assert drain(gw, [b"".join(ex.request_parts)])[0] == Chunk(b"x" * 100)
    dec = ex.client.response(max_chunk_size=100)
    with pytest.raises(ChunkError):
        drain(dec, [b"".join(ex.response_parts)])


def test_oversized_final_chunk_is_rejected_and_never_opened() -> None:
    """Regression: the limit was enforced in receive_data without failing the decoder, so at the end of input the
    oversized (but authentic) final chunk was opened and returned after the error."""
    ex = Exchange()
    ex.send_request([])
    enc = ex.open_request()
    big_final = enc._cipher.seal(b"f" * (MAX_CHUNK_SIZE + 1), True)
    wire = enc._prefix + b"\x00" + big_final  # type: ignore[operator]
    dec = ex.client.response()
    dec.receive_data(wire[:100])
    assert dec.next_event() is NEED_DATA
    with pytest.raises(ChunkError, match="final chunk larger"):
        dec.receive_data(wire[100:])
    for _ in range(2):
        with pytest.raises(ChunkError):
            dec.next_event()
        with pytest.raises(ChunkError):
            dec.receive_data(b"")

    client = ChunkedClientRequest(KEY.config)
    head = client.encode_chunk(b"a")
    big = client._ctx.seal(b"g" * (MAX_CHUNK_SIZE + 1), b"final")
    gw = ChunkedGatewayRequest(RING)
    gw.receive_data(head + b"\x00")
    assert gw.next_event() == Chunk(b"a")
    assert gw.next_event() is NEED_DATA  # the final marker is read; the final chunk runs to the end of input
    with pytest.raises(ChunkError, match="final chunk larger"):
        gw.receive_data(big)
    with pytest.raises(ChunkError):
        gw.receive_data(b"")
    with pytest.raises(ChunkError):
        gw.next_event()


# ---------------------------------------------------------------------------------------------------------------
# Tampering


def _layout(parts: list[bytes], prefix_len: int) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each part of a chunked message: prefix, length prefixes, final marker, sealed chunks."""
    out = [(0, prefix_len, "prefix")]
    pos = prefix_len
    framed = [parts[0][prefix_len:]] + parts[1:]
    for i, chunk in enumerate(framed):
        if i == len(framed) - 1:
            assert chunk[0] == 0
            lp = 1
            out.append((pos, pos + 1, "marker"))
        else:
            decoded = decode_varint(chunk, 0)
            assert decoded is not None and decoded[0] == len(chunk) - decoded[1]
            lp = decoded[1]
            out.append((pos, pos + lp, "length"))
        out.append((pos + lp, pos + len(chunk), "sealed"))
        pos += len(chunk)
    return out


def test_every_bit_flip_of_a_response_fails() -> None:
    ex = Exchange()
    ex.send_request([b"q"])
    response = ex.send_response([b"one", b"two" * 30, b"three"], final=b"four")
    expected = [Chunk(b"one"), Chunk(b"two" * 30), Chunk(b"three"), Chunk(b"four", final=True)]
    layout = _layout(ex.response_parts, 16)
    assert layout[-1][1] == len(response)
    kinds: dict[str, set[type]] = {}
    for bit, flipped in all_bit_flips(response):
        dec = ex.client.response()
        got: list[Chunk] = []
        with pytest.raises(RemoteProtocolError) as info:
            got.extend(drain(dec, [flipped]))
        # Whatever came out before the failure is an unmodified, non-final prefix.
        assert not any(c.final for c in got)
        assert got == expected[: len(got)]
        kind = next(k for s, e, k in layout if s <= bit // 8 < e)
        kinds.setdefault(kind, set()).add(type(info.value))
    assert kinds["prefix"] == {DecryptError}  # the response nonce
    assert kinds["sealed"] == {DecryptError}
    assert kinds["length"] <= {ChunkError, DecryptError}
    assert kinds["marker"] <= {ChunkError, DecryptError}


def test_every_bit_flip_of_a_request_fails() -> None:
    ex = Exchange()
    request = ex.send_request([b"one", b"two" * 30], final=b"three")
    expected = [Chunk(b"one"), Chunk(b"two" * 30), Chunk(b"three", final=True)]
    for bit, flipped in all_bit_flips(request):
        gw = ChunkedGatewayRequest(RING)
        got: list[Chunk] = []
        with pytest.raises(RemoteProtocolError) as info:
            got.extend(drain(gw, [flipped]))
        assert not any(c.final for c in got)
        assert got == expected[: len(got)]
        if 7 * 8 <= bit < 39 * 8:
            assert isinstance(info.value, DecryptError)
            assert got == []


def _sealed_parts(parts: list[bytes], prefix_len: int) -> tuple[bytes, list[bytes]]:
    """Split an encoder's outputs into the prefix and the framed chunks (one per output)."""
    return parts[0][:prefix_len], [parts[0][prefix_len:]] + parts[1:]


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda c: [c[1], c[0], c[2], c[3]], id="swap_first_two"),
        pytest.param(lambda c: [c[0], c[2], c[1], c[3]], id="swap_middle"),
        pytest.param(lambda c: [c[1], c[2], c[3]], id="drop_first"),
        pytest.param(lambda c: [c[0], c[2], c[3]], id="drop_middle"),
        pytest.param(lambda c: [c[0], c[1], c[1], c[2], c[3]], id="duplicate"),
        pytest.param(lambda c: [c[0], c[0], c[1], c[2], c[3]], id="duplicate_first"),
    ],
)
def test_dropping_reordering_or_duplicating_chunks_fails(mangle) -> None:  # type: ignore[no-untyped-def]
    ex = Exchange()
    ex.send_request([b"r1", b"r2", b"r3"])
    ex.send_response([b"s1", b"s2", b"s3"], final=b"s4")
    for parts, prefix_len, make in (
        (ex.response_parts, 16, ex.client.response),
        (ex.request_parts, 39, lambda: ChunkedGatewayRequest(RING)),
    ):
        prefix, chunks = _sealed_parts(parts, prefix_len)
        assert len(chunks) == 4
        dec = make()
        with pytest.raises(DecryptError):
            drain(dec, [prefix + b"".join(mangle(chunks))])


def test_final_chunk_sealed_as_non_final_fails() -> None:
    ex = Exchange()
    ex.send_request([])
    enc = ex.open_request()
    sealed = enc._cipher.seal(b"last", False)  # counter 0, wrong AAD for a final chunk
    dec = ex.client.response()
    with pytest.raises(DecryptError):
        drain(dec, [enc._prefix + b"\x00" + sealed])  # type: ignore[operator]


def test_non_final_chunk_presented_as_final_fails() -> None:
    ex = Exchange()
    ex.send_request([])
    ex.send_response([b"abc"])
    prefix, (chunk, _final) = _sealed_parts(ex.response_parts, 16)
    dec = ex.client.response()
    with pytest.raises(DecryptError):
        drain(dec, [prefix + b"\x00" + chunk[1:]])  # length prefix replaced by the final marker


def test_responses_cannot_be_cross_opened() -> None:
    a, b = Exchange(), Exchange()
    a.send_request([b"a"])
    b.send_request([b"b"])
    resp_b = b.send_response([b"for b"])
    with pytest.raises(DecryptError):
        drain(a.client.response(), [resp_b])


def test_chunked_and_plain_ohttp_are_domain_separated() -> None:
    plain, _ = ClientRequest(KEY.config).encapsulate(b"x")
    gw = ChunkedGatewayRequest(RING)
    gw.receive_data(plain)
    gw.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        gw.next_event()
    # A chunked request whose only chunk is final, as one body: still not a plain request.
    chunked = ChunkedClientRequest(KEY.config).encode_chunk(b"x", final=True)
    with pytest.raises(DecryptError):
        Gateway(RING).decapsulate(chunked[:39] + chunked[40:])


def test_unknown_key_id_is_422() -> None:
    other = GatewayKey.generate(9)
    gw = ChunkedGatewayRequest(RING)
    gw.receive_data(ChunkedClientRequest(other.config).encode_chunk(b"x"))
    with pytest.raises(KeyIdError) as info:
        gw.next_event()
    assert info.value.status_hint == 422
    with pytest.raises(ChunkError):
        gw.next_event()


# ---------------------------------------------------------------------------------------------------------------
# Empty chunks


def test_empty_final_chunk_is_allowed() -> None:
    ex = Exchange()
    request = ex.send_request([b"a"])
    assert drain(ChunkedGatewayRequest(RING), [request])[-1] == Chunk(b"", final=True)


def test_empty_non_final_response_chunk_is_rejected() -> None:
    ex = Exchange()
    ex.send_request([])
    enc = ex.open_request()
    first = enc.encode_chunk(b"ok")
    empty = enc._cipher.seal(b"", False)
    assert len(empty) == 16
    final = enc.encode_chunk(b"end", final=True)
    dec = ex.client.response()
    dec.receive_data(first + encode_varint(16) + empty + final)
    dec.receive_data(b"")
    assert dec.next_event() == Chunk(b"ok")
    with pytest.raises(ChunkError, match="empty"):
        dec.next_event()
    with pytest.raises(ChunkError):
        dec.next_event()


def test_empty_non_final_request_chunk_is_rejected() -> None:
    client = ChunkedClientRequest(KEY.config)
    first = client.encode_chunk(b"ok")
    empty = client._ctx.seal(b"", b"")
    final = client.encode_chunk(b"end", final=True)
    gw = ChunkedGatewayRequest(RING)
    gw.receive_data(first + encode_varint(len(empty)) + empty + final)
    assert gw.next_event() == Chunk(b"ok")
    with pytest.raises(ChunkError, match="empty"):
        gw.next_event()


@pytest.mark.parametrize("length", [1, 15])
def test_chunk_shorter_than_a_tag_is_rejected(length: int) -> None:
    gw = ChunkedGatewayRequest(RING)
    head = ChunkedClientRequest(KEY.config).encode_chunk(b"x")[:39]
    gw.receive_data(head + encode_varint(length) + bytes(length))
    with pytest.raises(ChunkError):
        gw.next_event()


# ---------------------------------------------------------------------------------------------------------------
# Truncation


def test_every_truncation_of_a_response_fails_and_never_yields_final() -> None:
    ex = Exchange()
    ex.send_request([b"q"])
    response = ex.send_response([b"one", b"two", b"three" * 20], final=b"four")
    expected = [Chunk(b"one"), Chunk(b"two"), Chunk(b"three" * 20)]
    counts = set()
    for cut in range(len(response)):
        for pieces in ([response[:cut]], bytewise(response[:cut])):
            dec = ex.client.response()
            got = drain(dec, pieces, eof=False)
            assert got == expected[: len(got)]
            counts.add(len(got))
            dec.receive_data(b"")
            with pytest.raises((ChunkError, DecryptError)):
                while (ev := dec.next_event()) is not NEED_DATA:
                    assert isinstance(ev, Chunk) and not ev.final
                    got.append(ev)
            assert not any(c.final for c in got)
    assert counts == {0, 1, 2, 3}
    assert drain(ex.client.response(), [response])[-1] == Chunk(b"four", final=True)


def test_every_truncation_of_a_request_fails_and_never_yields_final() -> None:
    ex = Exchange()
    request = ex.send_request([b"one", b"two"], final=b"three")
    for cut in range(len(request)):
        gw = ChunkedGatewayRequest(RING)
        got = drain(gw, [request[:cut]], eof=False)
        gw.receive_data(b"")
        with pytest.raises(RemoteProtocolError):
            while (ev := gw.next_event()) is not NEED_DATA:
                got.append(ev)
        assert not any(c.final for c in got)


def test_stream_without_final_chunk_raises_chunk_error() -> None:
    ex = Exchange()
    ex.send_request([b"a", b"b"])
    ex.send_response([b"x", b"y"])
    request = b"".join(ex.request_parts[:-1])
    response = b"".join(ex.response_parts[:-1])
    gw = ChunkedGatewayRequest(RING)
    assert drain(gw, [request], eof=False) == [Chunk(b"a"), Chunk(b"b")]
    gw.receive_data(b"")
    with pytest.raises(ChunkError, match="final"):
        gw.next_event()
    dec = ex.client.response()
    assert drain(dec, [response], eof=False) == [Chunk(b"x"), Chunk(b"y")]
    dec.receive_data(b"")
    with pytest.raises(ChunkError, match="final"):
        dec.next_event()


def test_empty_streams() -> None:
    gw = ChunkedGatewayRequest(RING)
    gw.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        gw.next_event()
    ex = Exchange()
    ex.send_request([])
    dec = ex.client.response()
    dec.receive_data(b"")
    with pytest.raises(ChunkError):
        dec.next_event()


def test_decoders_stay_failed() -> None:
    ex = Exchange()
    request = ex.send_request([b"a"])
    bad = request[:-1] + bytes([request[-1] ^ 1])
    gw = ChunkedGatewayRequest(RING)
    with pytest.raises(DecryptError):
        drain(gw, [bad])
    for _ in range(2):
        with pytest.raises(ChunkError):
            gw.next_event()
        with pytest.raises(ChunkError):
            gw.receive_data(b"x")


# ---------------------------------------------------------------------------------------------------------------
# An LLM stream: indeterminate-length BHTTP inside chunked OHTTP, one SSE event per chunk


def test_sse_stream_of_500_events_decodes_event_by_event() -> None:
    client = ChunkedClientRequest(KEY.config)
    chat = Request(
        method="POST",
        scheme="https",
        authority="veil.example",
        path="/v1/chat/completions",
        headers=[("content-type", "application/json"), ("accept", "text/event-stream")],
        content=json.dumps({"model": "m", "stream": True}).encode(),
    )
    wire_request = client.encode_chunk(encode_request(chat, Mode.KNOWN_LENGTH)) + client.encode_chunk(b"", final=True)

    gw = ChunkedGatewayRequest(RING)
    body = b"".join(c.data for c in drain(gw, [wire_request]))
    assert decode_request(body) == chat
    enc = gw.response()

    dec = client.response()
    bhttp = BHTTPDecoder(expect="response")

    def deliver(wire: bytes) -> list[object]:
        dec.receive_data(wire)
        events: list[object] = []
        while (chunk := dec.next_event()) is not NEED_DATA:
            assert isinstance(chunk, Chunk)
            bhttp.receive_data(chunk.data)
            while (ev := bhttp.next_event()) is not NEED_DATA:
                events.append(ev)
        return events

    head = deliver(enc.encode_chunk(encode_response_head(200, [("content-type", "text/event-stream")])))
    assert head == [ResponseHead(200, ((b"content-type", b"text/event-stream"),), Mode.INDETERMINATE_LENGTH)]
    for i in range(500):
        event = b"data: " + json.dumps({"i": i, "choices": [{"delta": {"content": f"tok{i}"}}]}).encode() + b"\n\n"
        assert deliver(enc.encode_chunk(encode_chunk(event))) == [Data(event)], f"event {i}"
    assert deliver(enc.encode_chunk(encode_chunk(b"data: [DONE]\n\n"))) == [Data(b"data: [DONE]\n\n")]
    assert deliver(enc.encode_chunk(encode_end(), final=True)) == []  # the final chunk waits for the end of body
    dec.receive_data(b"")
    final = dec.next_event()
    assert final == Chunk(b"\x00\x00", final=True)
    bhttp.receive_data(final.data)
    bhttp.receive_data(b"")
    assert bhttp.next_event() == EndOfMessage()
    assert bhttp.next_event() is NEED_DATA


def test_sse_stream_bytewise_transport() -> None:
    """Transport boundaries need not match OHTTP or BHTTP chunk boundaries."""
    ex = Exchange()
    ex.send_request([b"req"])
    enc = ex.open_request()
    events = [b"data: %d\n\n" % i for i in range(30)]
    wire = enc.encode_chunk(encode_response_head(200))
    for e in events:
        wire += enc.encode_chunk(encode_chunk(e))
    wire += enc.encode_chunk(encode_end(), final=True)
    dec = ex.client.response()
    bhttp = BHTTPDecoder()
    seen: list[bytes] = []
    for piece in bytewise(wire) + [b""]:
        dec.receive_data(piece)
        while (chunk := dec.next_event()) is not NEED_DATA:
            bhttp.receive_data(chunk.data)
            while (ev := bhttp.next_event()) is not NEED_DATA:
                if isinstance(ev, Data):
                    seen.append(ev.data)
    assert seen == events
    bhttp.receive_data(b"")
    assert bhttp.next_event() is NEED_DATA


def test_nonce_counter_is_never_reused_across_a_split() -> None:
    """Splitting large data advances the counter once per piece, so every piece opens in order."""
    ex = Exchange()
    ex.send_request([])
    enc = ex.open_request()
    data = b"".join(bytes([i]) * MAX_CHUNK_SIZE for i in range(3))
    wire = enc.encode_chunk(data) + enc.encode_chunk(b"tail", final=True)
    chunks = drain(ex.client.response(), [wire])
    assert [c.data[:1] for c in chunks] == [b"\x00", b"\x01", b"\x02", b"t"]


def test_request_chunk_count_limit_stops_a_stream_of_tiny_chunks() -> None:
    """Issue 15 item 5: every chunk costs an AEAD open however small; past ``max_chunks`` the decoder refuses
    (LimitError, 413) instead of opening 200,000 one-byte chunks on the gateway's event loop."""
    client = ChunkedClientRequest(KEY.config)
    wire = b"".join([client.encode_chunk(b"x") for _ in range(50)] + [client.encode_chunk(b"", final=True)])
    ok = ChunkedGatewayRequest(RING, max_chunks=51)
    assert len(drain(ok, [wire])) == 51
    gw = ChunkedGatewayRequest(RING, max_chunks=10)
    with pytest.raises(ohttp.LimitError, match="more than 10 request chunks") as err:
        drain(gw, [wire])
    assert err.value.status_hint == 413
    with pytest.raises(ChunkError):  # and it stays failed
        gw.next_event()
