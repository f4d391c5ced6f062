"""The public API of ``ohttp``: built from the submodules' ``__all__`` (h11 style), pinned here name by name.

A change to this list is a change to the package's API: make it on purpose, in the module that defines the name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ohttp
from ohttp import _hpke, bhttp, chunked, encapsulation, errors, keys, stream

PUBLIC = sorted([
    # algorithms and keys
    "KemId", "KdfId", "AeadId", "SymmetricSuite", "DEFAULT_SUITES", "KeyConfig", "GatewayKey", "KeyRing",
    "encode_list", "decode_list", "choose_config",
    # binary HTTP
    "Mode", "Limits", "Request", "Response", "InformationalResponse", "RequestHead", "ResponseHead", "Data",
    "Trailers", "EndOfMessage", "NEED_DATA", "BHTTPDecoder", "decode", "decode_request", "decode_response",
    "encode_request", "encode_response", "encode_request_head", "encode_response_head", "encode_chunk",
    "encode_end", "padded_size",
    # encapsulation
    "ClientRequest", "ClientResponse", "Gateway", "GatewayResponse", "choose_suite",
    # chunked
    "Chunk", "ChunkedClientRequest", "ChunkedClientResponse", "ChunkedGatewayRequest", "ChunkedGatewayResponse",
    "MAX_CHUNK_SIZE", "ChunkedMessageDecoder",
    # media types
    "MEDIA_TYPE_KEYS", "MEDIA_TYPE_BHTTP", "MEDIA_TYPE_REQUEST", "MEDIA_TYPE_RESPONSE",
    "MEDIA_TYPE_CHUNKED_REQUEST", "MEDIA_TYPE_CHUNKED_RESPONSE",
    # errors
    "OHTTPError", "RemoteProtocolError", "DecodeError", "UnsupportedError", "KeyIdError", "DecryptError",
    "ChunkError", "LimitError", "LocalProtocolError",
])

BHTTP_PUBLIC = sorted([
    "MEDIA_TYPE_BHTTP", "Mode", "Limits", "Request", "Response", "InformationalResponse", "RequestHead",
    "ResponseHead", "Data", "Trailers", "EndOfMessage", "NEED_DATA", "BHTTPDecoder", "decode", "decode_request",
    "decode_response", "encode_request", "encode_response", "encode_request_head", "encode_response_head",
    "encode_chunk", "encode_end", "padded_size",
])

SUBMODULES = (_hpke, keys, bhttp, encapsulation, chunked, stream, errors)


def test_public_names_are_pinned() -> None:
    assert sorted(ohttp.__all__) == PUBLIC
    assert len(ohttp.__all__) == len(set(ohttp.__all__)), "a name is exported by two submodules"


def test_public_api_is_the_submodules_all() -> None:
    assert sorted(n for m in SUBMODULES for n in m.__all__) == PUBLIC
    for m in SUBMODULES:
        for name in m.__all__:
            assert getattr(ohttp, name) is getattr(m, name), f"ohttp.{name} is not {m.__name__}.{name}"


def test_bhttp_api_is_its_private_modules_all() -> None:
    from ohttp.bhttp import _decode, _encode, _messages

    assert sorted(bhttp.__all__) == BHTTP_PUBLIC
    assert sorted([*_messages.__all__, *_encode.__all__, *_decode.__all__]) == BHTTP_PUBLIC
    # Type aliases for annotations: importable from ohttp.bhttp, not listed.
    assert bhttp.Field == tuple[bytes, bytes]
    assert "Field" not in ohttp.__all__ and "Event" not in ohttp.__all__


def test_one_need_data_sentinel() -> None:
    assert ohttp.NEED_DATA is bhttp.NEED_DATA is chunked.NEED_DATA


def test_ohttp_stays_sans_io() -> None:
    root = Path(ohttp.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in {"asyncio", "aiohttp", "socket", "enclave", "proxy"}, f"{path.name} imports {name}"
