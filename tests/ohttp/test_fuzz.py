"""Bounded fuzzing against one invariant (after h11's fuzz/afl-server.py): whatever bytes a peer sends, the
decoders either succeed or raise a subclass of :class:`ohttp.RemoteProtocolError`. Any other exception, a
``LocalProtocolError`` included, is a bug.

Inputs are random bytes and mutations (bit flips, interesting bytes, insertions, deletions, truncations,
duplications) of valid messages, fed whole and in random splits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ohttp import (
    NEED_DATA,
    AeadId,
    BHTTPDecoder,
    Chunk,
    ChunkedClientRequest,
    ChunkedClientResponse,
    ChunkedGatewayRequest,
    ClientRequest,
    Data,
    EndOfMessage,
    Gateway,
    GatewayKey,
    InformationalResponse,
    KdfId,
    KemId,
    KeyConfig,
    KeyRing,
    Limits,
    Mode,
    RemoteProtocolError,
    Request,
    Response,
    SymmetricSuite,
    decode,
    decode_list,
    encode_chunk,
    encode_end,
    encode_list,
    encode_request,
    encode_response,
    encode_response_head,
)
from tests.helpers import h, load_vector
from tests.ohttp.strategies import splits

FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))

RFC = load_vector("rfc9458_appendix_a.json")
CHUNKED = load_vector("chunked_ohttp_draft08_appendix.json")
RFC9292 = load_vector("rfc9292_examples.json")
MT = load_vector("martinthomson_ohttp_tests.json")

INTERESTING = [0x00, 0x01, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFE, 0xFF]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with up to four random mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate", "append"]))
        n = len(data)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[draw(st.integers(0, n - 1))] = draw(st.sampled_from(INTERESTING))
        elif op == "insert":
            i = draw(st.integers(0, n))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and n:
            i = draw(st.integers(0, n - 1))
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif op == "duplicate" and n:
            i = draw(st.integers(0, n - 1))
            j = draw(st.integers(i, min(n, i + 32)))
            data[j:j] = data[i:j]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def inputs(seeds: list[bytes], max_random: int = 200) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=max_random), mutated(seeds))


def only_remote_errors(fn: Callable[[], object]) -> object | None:
    """Run ``fn``; a RemoteProtocolError is fine (returns None), anything else propagates and fails the test."""
    try:
        out = fn()
    except RemoteProtocolError as exc:
        event(type(exc).__name__)  # outcome statistics: pytest --hypothesis-show-statistics
        return None
    event("accepted")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Key configurations

_X = GatewayKey.generate(1, KemId.X25519_SHA256).config
_P = GatewayKey.generate(
    2, KemId.P256_SHA256, [SymmetricSuite(k, a) for k, a in itertools.product(KdfId, AeadId)]
).config
_PQ = bytes((3,)) + b"\x00\x30" + bytes(1216) + b"\x00\x04\x00\x01\x00\x01"
LIST_SEEDS = [
    h(RFC["ohttp_keys_media"]),
    encode_list([_X, _P]),
    len(_PQ).to_bytes(2, "big") + _PQ + encode_list([_X]),
]
CONFIG_SEEDS = [h(RFC["key_config"]), _X.encode(), _P.encode(), h(MT["derive_key_pair"]["expected_key_config"])]


@FUZZ
@given(inputs(LIST_SEEDS))
def test_fuzz_decode_list(data: bytes) -> None:
    configs = only_remote_errors(lambda: decode_list(data))
    if configs is not None:
        assert isinstance(configs, list)
        # Whatever decodes re-encodes to a list that decodes to the same configs.
        if configs:
            assert decode_list(encode_list(configs)) == configs


@FUZZ
@given(inputs(CONFIG_SEEDS))
def test_fuzz_key_config_decode(data: bytes) -> None:
    config = only_remote_errors(lambda: KeyConfig.decode(data))
    if config is not None:
        assert isinstance(config, KeyConfig)
        assert KeyConfig.decode(config.encode()) == config


# ---------------------------------------------------------------------------------------------------------------
# Binary HTTP

BHTTP_SEEDS = (
    [h(e["hex"]) for e in RFC9292["examples"]]
    + [h(v["hex"]) for v in MT["bhttp"]]
    + [
        encode_response(
            Response(
                status=200,
                headers=[("content-type", "text/event-stream")],
                content=b"data: x\n\n" * 3,
                trailers=[("t", "v")],
                informational=(InformationalResponse(status=103, headers=[("link", "<a>")]),),
            ),
            Mode.INDETERMINATE_LENGTH,
            padding=3,
        ),
        encode_response_head(200) + encode_chunk(b"ab") + encode_chunk(b"cd") + encode_end([("x", "y")]),
        encode_request(
            Request(method="POST", path="/v1", headers=[("a", "b")], content=b"{}"), Mode.INDETERMINATE_LENGTH
        ),
    ]
)
SMALL_LIMITS = Limits(max_field_section_size=64, max_fields=3, max_content_size=40, max_informational=1)


def _events(pieces: list[bytes], limits: Limits | None) -> list[object]:
    dec = BHTTPDecoder(limits)
    out: list[object] = []
    for p in pieces:
        dec.receive_data(p)
        for _ in range(10_000):
            ev = dec.next_event()
            if ev is NEED_DATA:
                break
            out.append(ev)
    dec.receive_data(b"")
    for _ in range(10_000):
        ev = dec.next_event()
        if ev is NEED_DATA:
            break
        out.append(ev)
    assert out and isinstance(out[-1], EndOfMessage), "end of input must complete the message or raise"
    merged: list[object] = []
    for ev in out:
        if isinstance(ev, Data) and merged and isinstance(merged[-1], Data):
            merged[-1] = Data(merged[-1].data + ev.data)
        else:
            merged.append(ev)
    return merged


@FUZZ
@given(inputs(BHTTP_SEEDS), st.sampled_from([None, SMALL_LIMITS]))
def test_fuzz_bhttp_decode(data: bytes, limits: Limits | None) -> None:
    msg = only_remote_errors(lambda: decode(data, limits))
    if msg is not None:
        assert isinstance(msg, (Request, Response))
        # A message that decoded is valid: it re-encodes in both modes and decodes back to itself.
        for mode in (Mode.KNOWN_LENGTH, Mode.INDETERMINATE_LENGTH):
            wire = encode_request(msg, mode) if isinstance(msg, Request) else encode_response(msg, mode)
            assert decode(wire) == msg


@FUZZ
@given(inputs(BHTTP_SEEDS), st.sampled_from([None, SMALL_LIMITS]), st.data())
def test_fuzz_bhttp_decoder_in_random_splits(data: bytes, limits: Limits | None, draw: st.DataObject) -> None:
    whole = only_remote_errors(lambda: _events([data], limits))
    pieces = draw.draw(splits(data))
    split = only_remote_errors(lambda: _events(pieces, limits))
    bytewise = only_remote_errors(lambda: _events([data[i : i + 1] for i in range(len(data))], limits))
    # The outcome cannot depend on how the bytes arrived (the error class may: a limit can trip before the end of
    # input reveals a truncation).
    assert whole == split == bytewise


# ---------------------------------------------------------------------------------------------------------------
# RFC 9458 encapsulation

_RFC_KEY = GatewayKey.from_private_bytes(1, h(RFC["server_private_key"]))
_P_KEY = GatewayKey.generate(2, KemId.P256_SHA256, [SymmetricSuite(k, a) for k, a in itertools.product(KdfId, AeadId)])
GATEWAY = Gateway(KeyRing([_RFC_KEY, _P_KEY]))
REQUEST_SEEDS = [
    h(RFC["encapsulated_request"]),
    ClientRequest(_P_KEY.config, SymmetricSuite(KdfId.HKDF_SHA384, AeadId.AES_256_GCM)).encapsulate(b"x" * 40)[0],
    ClientRequest(_RFC_KEY.config, SymmetricSuite(KdfId.HKDF_SHA256, AeadId.CHACHA20_POLY1305)).encapsulate(b"")[0],
]


@FUZZ
@given(inputs(REQUEST_SEEDS))
def test_fuzz_gateway_decapsulate(data: bytes) -> None:
    out = only_remote_errors(lambda: GATEWAY.decapsulate(data))
    if out is not None:
        # Only an unmodified request (or one for another valid request) can open.
        assert data in REQUEST_SEEDS


_RFC_CONFIG = KeyConfig.decode(h(RFC["key_config"]))


@FUZZ
@given(inputs([h(RFC["encapsulated_response"])], max_random=80))
def test_fuzz_client_response_decapsulate(data: bytes) -> None:
    _, ctx = ClientRequest(_RFC_CONFIG).encapsulate(
        h(RFC["request_bhttp"]), ephemeral_key=h(RFC["ephemeral_private_key"])
    )
    body = only_remote_errors(lambda: ctx.decapsulate(data))
    if body is not None:
        assert data == h(RFC["encapsulated_response"]) and body == h(RFC["response_bhttp"])


# ---------------------------------------------------------------------------------------------------------------
# Chunked OHTTP

_CHUNKED_KEY = GatewayKey.from_private_bytes(1, h(CHUNKED["server_private_key"]))
CHUNKED_RING = KeyRing([_CHUNKED_KEY, _P_KEY])


def _chunked_request(config: KeyConfig, pieces: list[bytes], final: bytes) -> bytes:
    client = ChunkedClientRequest(config)
    return b"".join(client.encode_chunk(p) for p in pieces) + client.encode_chunk(final, final=True)


CHUNKED_REQUEST_SEEDS = [
    h(CHUNKED["encapsulated_request"]),
    _chunked_request(_CHUNKED_KEY.config, [b"a", b"bb" * 40, b"c"], b"end"),
    _chunked_request(_P_KEY.config, [b"x" * 70], b""),
]

# One client request whose response decoder can be made many times (ChunkedClientRequest.response()).
_CHUNKED_CLIENT = ChunkedClientRequest(
    KeyConfig.decode(h(CHUNKED["key_config"])), ephemeral_key=h(CHUNKED["ephemeral_private_key"])
)
_CHUNKED_CLIENT.encode_chunk(h(CHUNKED["request_bhttp"]), final=True)


def _chunked_response_seed() -> bytes:
    gw = ChunkedGatewayRequest(KeyRing([_CHUNKED_KEY]))
    gw.receive_data(h(CHUNKED["encapsulated_request"]))
    assert isinstance(gw.next_event(), Chunk)
    enc = gw.response()
    return b"".join(enc.encode_chunk(p) for p in [b"\x03\x40\xc8\x00", b"\x05hello", b"\x03abc"]) + enc.encode_chunk(
        b"\x00\x00", final=True
    )


CHUNKED_RESPONSE_SEEDS = [h(CHUNKED["encapsulated_response"]), _chunked_response_seed()]


def _drain_chunks(decoder: ChunkedGatewayRequest | ChunkedClientResponse, pieces: list[bytes]) -> list[Chunk]:
    out: list[Chunk] = []

    def pump() -> None:
        for _ in range(10_000):
            ev = decoder.next_event()
            if ev is NEED_DATA:
                return
            assert isinstance(ev, Chunk)
            assert not (out and out[-1].final), "nothing may follow the final chunk"
            out.append(ev)

    for p in pieces:
        decoder.receive_data(p)
        pump()
    decoder.receive_data(b"")
    pump()
    assert out and out[-1].final, "end of input without a final chunk must raise"
    return out


@FUZZ
@given(inputs(CHUNKED_REQUEST_SEEDS), st.data())
def test_fuzz_chunked_gateway_request(data: bytes, draw: st.DataObject) -> None:
    pieces = draw.draw(splits(data))
    only_remote_errors(lambda: _drain_chunks(ChunkedGatewayRequest(CHUNKED_RING), pieces))


@FUZZ
@given(inputs(CHUNKED_RESPONSE_SEEDS, max_random=120), st.data())
def test_fuzz_chunked_client_response(data: bytes, draw: st.DataObject) -> None:
    pieces = draw.draw(splits(data))
    chunks = only_remote_errors(lambda: _drain_chunks(_CHUNKED_CLIENT.response(), pieces))
    if chunks is not None:
        assert isinstance(chunks, list)
        # Only the authentic plaintext can come out, whatever happened to the unauthenticated framing.
        plain = b"".join(c.data for c in chunks)
        assert plain in (h(CHUNKED["response_bhttp"]), b"\x03\x40\xc8\x00\x05hello\x03abc\x00\x00")
