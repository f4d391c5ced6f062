"""QUIC variable-length integers (RFC 9000 s16) as BHTTP and chunked OHTTP use them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ohttp import DecodeError, LocalProtocolError
from ohttp._varint import MAX_VARINT, decode_varint, encode_varint, read_varint, varint_size

BOUNDARIES = [
    (0, "00"),
    (37, "25"),
    (63, "3f"),
    (64, "4040"),
    (200, "40c8"),
    (16383, "7fff"),
    (16384, "80004000"),
    (2**30 - 1, "bfffffff"),
    (2**30, "c000000040000000"),
    (2**62 - 1, "ffffffffffffffff"),
]


@pytest.mark.parametrize(("value", "wire"), BOUNDARIES)
def test_boundaries_encode_minimally(value: int, wire: str) -> None:
    assert encode_varint(value) == bytes.fromhex(wire)
    assert varint_size(bytes.fromhex(wire)[0]) == len(wire) // 2


@pytest.mark.parametrize(("value", "wire"), BOUNDARIES)
def test_boundaries_decode(value: int, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert decode_varint(data, 0) == (value, len(data))
    # At an offset and followed by other bytes.
    assert decode_varint(b"\xaa\xbb" + data + b"\xcc", 2) == (value, 2 + len(data))
    assert read_varint(data, 0, "x") == (value, len(data))


def test_rfc9000_examples() -> None:
    assert decode_varint(bytes.fromhex("c2197c5eff14e88c"), 0) == (151288809941952652, 8)
    assert decode_varint(bytes.fromhex("9d7f3e7d"), 0) == (494878333, 4)
    assert decode_varint(bytes.fromhex("7bbd"), 0) == (15293, 2)
    assert decode_varint(bytes.fromhex("25"), 0) == (37, 1)
    assert decode_varint(bytes.fromhex("4025"), 0) == (37, 2)  # non-minimal, accepted


NON_MINIMAL = [
    (0, "4000"),
    (0, "80000000"),
    (0, "c000000000000000"),
    (5, "c000000000000005"),
    (63, "403f"),
    (16383, "80003fff"),
    (2**30 - 1, "c00000003fffffff"),
]


@pytest.mark.parametrize(("value", "wire"), NON_MINIMAL)
def test_non_minimal_encodings_are_accepted(value: int, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert decode_varint(data, 0) == (value, len(data))
    assert len(encode_varint(value)) < len(data)  # but never produced


@pytest.mark.parametrize(("value", "wire"), BOUNDARIES)
def test_truncated_returns_none(value: int, wire: str) -> None:
    data = bytes.fromhex(wire)
    for cut in range(len(data)):
        assert decode_varint(data[:cut], 0) is None
        assert decode_varint(b"\x01" + data[:cut], 1) is None
        with pytest.raises(DecodeError, match="truncated"):
            read_varint(data[:cut], 0, "thing")


def test_decode_past_the_end_is_none() -> None:
    assert decode_varint(b"\x05", 1) is None
    assert decode_varint(b"", 0) is None


def test_decodes_from_bytearray_and_memoryview() -> None:
    assert decode_varint(bytearray(b"\x40\xc8"), 0) == (200, 2)
    assert decode_varint(memoryview(b"\x40\xc8"), 0) == (200, 2)


@pytest.mark.parametrize("value", [-1, -(2**62), 2**62, 2**64])
def test_out_of_range_is_a_local_error(value: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode_varint(value)


def test_max_varint() -> None:
    assert MAX_VARINT == 2**62 - 1


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_VARINT))
def test_roundtrip(value: int) -> None:
    data = encode_varint(value)
    assert decode_varint(data, 0) == (value, len(data))
    expected_len = 1 if value < 2**6 else 2 if value < 2**14 else 4 if value < 2**30 else 8
    assert len(data) == expected_len
    assert varint_size(data[0]) == expected_len


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([1, 2, 4, 8]).flatmap(
        lambda size: st.tuples(st.just(size), st.integers(min_value=0, max_value=(1 << (8 * size - 2)) - 1))
    )
)
def test_any_encoding_length_that_fits_decodes(case: tuple[int, int]) -> None:
    size, value = case
    prefix = {1: 0x00, 2: 0x40, 4: 0x80, 8: 0xC0}[size]
    data = bytearray(value.to_bytes(size, "big"))
    data[0] |= prefix
    assert decode_varint(bytes(data), 0) == (value, size)
