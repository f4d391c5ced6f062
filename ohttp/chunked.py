"""Chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08), sans-I/O, for both directions and both roles.

Wire format (§4, §5)::

    Chunked Encapsulated Request  = hdr(7) || enc(Nenc) || NonFinalChunk* || 0x00 || FinalSealedChunk
    Chunked Encapsulated Response = response_nonce(max(Nn, Nk)) || NonFinalChunk* || 0x00 || FinalSealedChunk
    NonFinalChunk                 = varint(len(sealed)) (>= 1) || sealed

The final chunk is sealed with AAD ``"final"`` and runs to the end of the body, so a decoder can only open it
at end of input (``receive_data(b"")``). A stream that ends without it raises :class:`ChunkError`: truncation is
never a silent success. An empty non-final chunk is a decryption error (draft-07 on). Encoders split data larger
than ``MAX_CHUNK_SIZE`` into several chunks, the size every peer must accept.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final

from ._hpke import Aead, AeadId, HpkeContext, KdfId, setup_sender
from ._varint import decode_varint, encode_varint
from .bhttp._messages import NEED_DATA, _NeedData
from .encapsulation import (
    ParsedHeader,
    build_header,
    build_info,
    choose_suite,
    entropy_len,
    parse_request_header,
    response_keys,
)
from .errors import ChunkError, DecodeError, DecryptError, LimitError, LocalProtocolError, OHTTPError
from .keys import KeyConfig, KeyRing, SymmetricSuite

__all__ = [
    "Chunk",
    "ChunkedClientRequest",
    "ChunkedClientResponse",
    "ChunkedGatewayRequest",
    "ChunkedGatewayResponse",
    "MAX_CHUNK_SIZE",
    "MEDIA_TYPE_CHUNKED_REQUEST",
    "MEDIA_TYPE_CHUNKED_RESPONSE",
]

MEDIA_TYPE_CHUNKED_REQUEST: Final = "message/ohttp-chunked-req"
MEDIA_TYPE_CHUNKED_RESPONSE: Final = "message/ohttp-chunked-res"
INFO_CHUNKED_REQUEST: Final = b"message/bhttp chunked request"
LABEL_CHUNKED_RESPONSE: Final = b"message/bhttp chunked response"
AAD_FINAL: Final = b"final"
#: Plaintext bytes per chunk that every receiver must accept (§3, 2^14).
MAX_CHUNK_SIZE: Final = 16384
_TAG: Final = 16


@dataclass(frozen=True, slots=True)
class Chunk:
    """One decrypted chunk; ``final`` is set on the last one (which may be empty)."""

    data: bytes
    final: bool = False


# ``NEED_DATA`` is the package's one sentinel (``ohttp.NEED_DATA``), shared with the BHTTP decoder.


class _ChunkReader:
    """Splits ``NonFinalChunk* || 0x00 || Final`` into sealed chunks; the caller opens them in order."""

    def __init__(self, prefix_len: int, max_chunk_size: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.eof = False
        self._prefix_len = prefix_len
        self._max_sealed = max_chunk_size + _TAG
        self._final_seen = False
        self.prefix: bytes | None = None
        self.failed = False
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.eof:
            if data:
                raise ChunkError("data after the end of the stream")
            return
        if not data:
            self.eof = True
        else:
            self._buf += data
            if self._final_seen and len(self._buf) - self._pos > self._max_sealed:
                self.failed = True  # once failed, stay failed: never open this final chunk at EOF
                raise ChunkError(f"final chunk larger than {self._max_sealed} bytes")

    def buffered(self) -> bytearray:
        return self._buf

    def take_prefix(self, n: int) -> None:
        self.prefix = bytes(self._buf[:n])
        self._pos = n

    def next_sealed(self) -> tuple[bytes, bool] | None:
        """``(sealed, is_final)`` or ``None`` when more data is needed."""
        if self.done:
            return None
        if self._final_seen:
            if not self.eof:
                return None
            sealed = bytes(self._buf[self._pos :])
            self._pos = len(self._buf)
            self.done = True
            return sealed, True
        if self._pos >= len(self._buf) and not self.eof:
            return None  # nothing buffered (after every chunk): no varint to try
        out = decode_varint(self._buf, self._pos)
        if out is None:
            if self.eof:
                raise ChunkError("stream truncated: ended before its final chunk")
            return None
        length, start = out
        if length == 0:
            self._final_seen = True
            self._pos = start
            self._compact()
            if len(self._buf) - self._pos > self._max_sealed:
                raise ChunkError(f"final chunk larger than {self._max_sealed} bytes")
            return self.next_sealed()
        if length > self._max_sealed:
            raise ChunkError(f"chunk of {length} bytes exceeds the limit of {self._max_sealed}")
        if length < _TAG:
            raise ChunkError(f"chunk of {length} bytes is shorter than its tag")
        end = start + length
        if end > len(self._buf):
            if self.eof:
                raise ChunkError("stream truncated inside a chunk")
            return None
        sealed = bytes(self._buf[start:end])
        self._pos = end
        self._compact()
        return sealed, False

    def _compact(self) -> None:
        if self._pos > 65536 or self._pos == len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0


def _chunk(plaintext: bytes, final: bool) -> Chunk:
    if not plaintext and not final:
        raise ChunkError("empty non-final chunk")
    return Chunk(plaintext, final)


def _frame(sealed: bytes, final: bool) -> bytes:
    return b"\x00" + sealed if final else encode_varint(len(sealed)) + sealed


def _split(data: bytes, final: bool) -> list[tuple[bytes, bool]]:
    if len(data) <= MAX_CHUNK_SIZE:
        return [(data, final)]
    pieces = [data[i : i + MAX_CHUNK_SIZE] for i in range(0, len(data), MAX_CHUNK_SIZE)]
    return [(p, final and i == len(pieces) - 1) for i, p in enumerate(pieces)]


class _ResponseCipher:
    """The chunk nonces of §6.2: ``aead_nonce XOR encode(Nn, counter)``, the counter counting every chunk."""

    __slots__ = ("_aead", "_nonce", "_counter", "_limit")

    def __init__(self, aead: Aead, base_nonce: bytes) -> None:
        self._aead = aead
        self._nonce = int.from_bytes(base_nonce, "big")
        self._counter = 0
        self._limit = 1 << (8 * len(base_nonce))

    def _next_nonce(self) -> bytes:
        counter = self._counter
        if counter >= self._limit:
            raise ChunkError("too many chunks: the nonce would wrap")
        self._counter = counter + 1
        return (self._nonce ^ counter).to_bytes(12, "big")

    def seal(self, pt: bytes, final: bool) -> bytes:
        return self._aead.seal(self._next_nonce(), pt, AAD_FINAL if final else b"")

    def open(self, ct: bytes, final: bool) -> bytes:
        return self._aead.open(self._next_nonce(), ct, AAD_FINAL if final else b"")


class _ChunkDecoder(ABC):
    """What both chunk decoders share: the reader, feeding it, and staying failed after any error."""

    _reader: _ChunkReader

    def receive_data(self, data: bytes) -> None:
        """Feed bytes as they arrive; ``b""`` ends input."""
        if self._reader.failed:
            raise ChunkError("decoder already failed")
        self._reader.feed(data)

    def next_event(self) -> Chunk | _NeedData:
        """The next decrypted chunk, or ``NEED_DATA``."""
        r = self._reader
        if r.failed:
            raise ChunkError("decoder already failed")
        try:
            return self._next(r)
        except OHTTPError:
            r.failed = True
            raise

    @abstractmethod
    def _next(self, r: _ChunkReader) -> Chunk | _NeedData:
        """Decode the next chunk from ``r`` (each direction knows its header and its framing)."""


# ---------------------------------------------------------------------------------------------------------------
# Client side


class ChunkedClientRequest:
    """Encodes a chunked encapsulated request; the first chunk carries ``hdr || enc``."""

    def __init__(
        self, config: KeyConfig, suite: SymmetricSuite | None = None, *, ephemeral_key: bytes | None = None
    ) -> None:
        self.suite = suite or choose_suite(config)
        if not config.supports(self.suite):
            raise LocalProtocolError("the key config does not offer that suite")
        hdr = build_header(config.key_id, config.kem, self.suite)
        enc, self._ctx = setup_sender(
            config.kem,
            self.suite.kdf,
            self.suite.aead,
            config.public_key,
            build_info(INFO_CHUNKED_REQUEST, hdr),
            ephemeral_key,
        )
        self._enc = enc
        self._prefix: bytes | None = hdr + enc
        self._finished = False

    def encode_chunk(self, data: bytes, *, final: bool = False) -> bytes:
        """Seal ``data`` as the next chunk (split if larger than ``MAX_CHUNK_SIZE``); ``final`` ends the request."""
        if self._finished:
            raise LocalProtocolError("chunk encoded after the final chunk")
        if not data and not final:
            raise LocalProtocolError("a non-final chunk cannot be empty")
        if len(data) <= MAX_CHUNK_SIZE:  # one chunk (the usual case): no list, no intermediate buffer
            out = _frame(self._ctx.seal(data, AAD_FINAL if final else b""), final)
        else:
            out = b"".join(_frame(self._ctx.seal(piece, AAD_FINAL if fin else b""), fin)
                           for piece, fin in _split(data, final))
        if self._prefix is not None:
            out = self._prefix + out
            self._prefix = None
        self._finished = final
        return out

    def response(self, *, max_chunk_size: int = MAX_CHUNK_SIZE) -> ChunkedClientResponse:
        """The decoder for this request's chunked response."""
        return ChunkedClientResponse(self._ctx, self._enc, self.suite.kdf, self.suite.aead, max_chunk_size)


class ChunkedClientResponse(_ChunkDecoder):
    """Incremental decoder of a chunked encapsulated response (h11 style).

    ``receive_data(data)`` (``b""`` ends input), then ``next_event()`` gives :class:`Chunk` or ``NEED_DATA``.

    Raises (from ``next_event``):
        ChunkError: oversized or empty non-final chunk, or the stream ended without its final chunk.
        DecryptError: a chunk failed authentication (tampered, reordered, dropped).
    """

    def __init__(self, ctx: HpkeContext, enc: bytes, kdf: KdfId, aead: AeadId, max_chunk_size: int) -> None:
        self._ctx = ctx
        self._enc = enc
        self._kdf = kdf
        self._aead = aead
        self._reader = _ChunkReader(entropy_len(aead), max_chunk_size)
        self._cipher: _ResponseCipher | None = None

    def _next(self, r: _ChunkReader) -> Chunk | _NeedData:
        if self._cipher is None:
            n = entropy_len(self._aead)
            buf = r.buffered()
            if len(buf) < n:
                if r.eof:
                    raise ChunkError(f"response truncated: {len(buf)} of {n} nonce bytes")
                return NEED_DATA
            r.take_prefix(n)
            assert r.prefix is not None
            aead, base = response_keys(self._ctx, LABEL_CHUNKED_RESPONSE, self._enc, r.prefix, self._kdf, self._aead)
            self._cipher = _ResponseCipher(aead, base)
        item = r.next_sealed()
        if item is None:
            return NEED_DATA
        sealed, final = item
        return _chunk(self._cipher.open(sealed, final), final)


# ---------------------------------------------------------------------------------------------------------------
# Gateway side


class ChunkedGatewayRequest(_ChunkDecoder):
    """Incremental decoder of a chunked encapsulated request at the gateway.

    Once the header is in (``next_event`` has returned anything but ``NEED_DATA`` or ``header_ready`` is true),
    :meth:`response` gives the encoder for the chunked response.

    Raises (from ``next_event``):
        KeyIdError, UnsupportedError: the header names an unknown key or suite (answer unencapsulated).
        DecryptError: the HPKE set-up or a chunk failed authentication.
        ChunkError: framing errors or a stream that ended without its final chunk.
        LimitError: more than ``max_chunks`` chunks (each costs an AEAD open however small it is).
    """

    def __init__(self, keys: KeyRing, *, max_chunk_size: int = MAX_CHUNK_SIZE, max_chunks: int = 1 << 20) -> None:
        self._keys = keys
        self._reader = _ChunkReader(0, max_chunk_size)
        self._parsed: ParsedHeader | None = None
        self._ctx: HpkeContext | None = None
        self._max_chunks = max_chunks
        self._chunks = 0

    @property
    def header_ready(self) -> bool:
        """Whether ``hdr || enc`` has been read and the HPKE context is set up."""
        return self._ctx is not None

    @property
    def key_id(self) -> int:
        """The key id of the request (after the header is read)."""
        if self._parsed is None:
            raise LocalProtocolError("header not read yet")
        return self._parsed.header[0]

    @property
    def enc(self) -> bytes:
        """The request's ``enc`` (replay-cache key)."""
        if self._parsed is None:
            raise LocalProtocolError("header not read yet")
        return self._parsed.enc

    def _next(self, r: _ChunkReader) -> Chunk | _NeedData:
        if self._ctx is None:
            parsed = parse_request_header(r.buffered(), self._keys)
            if parsed is None:
                if r.eof:
                    raise DecodeError("chunked request truncated inside its header")
                return NEED_DATA
            self._parsed = parsed
            r.take_prefix(parsed.end)
            self._ctx = parsed.key.private_key.setup_recipient(
                parsed.kdf, parsed.aead, parsed.enc, build_info(INFO_CHUNKED_REQUEST, parsed.header)
            )
        item = r.next_sealed()
        if item is None:
            return NEED_DATA
        sealed, final = item
        self._chunks += 1
        if self._chunks > self._max_chunks:
            raise LimitError(f"more than {self._max_chunks} request chunks")
        try:
            pt = self._ctx.open(sealed, AAD_FINAL if final else b"")
        except Exception:
            raise DecryptError("request chunk authentication failed") from None
        return _chunk(pt, final)

    def response(self, *, response_nonce: bytes | None = None) -> ChunkedGatewayResponse:
        """The encoder of the chunked response; ``response_nonce`` is for test vectors only."""
        if self._ctx is None or self._parsed is None:
            raise LocalProtocolError("the request header has not been read")
        return ChunkedGatewayResponse(self._ctx, self._parsed.enc, self._parsed.kdf, self._parsed.aead, response_nonce)


class ChunkedGatewayResponse:
    """Encodes a chunked encapsulated response; the first output starts with the response nonce."""

    def __init__(
        self, ctx: HpkeContext, enc: bytes, kdf: KdfId, aead: AeadId, response_nonce: bytes | None = None
    ) -> None:
        nonce = response_nonce if response_nonce is not None else os.urandom(entropy_len(aead))
        key, base = response_keys(ctx, LABEL_CHUNKED_RESPONSE, enc, nonce, kdf, aead)
        self._cipher = _ResponseCipher(key, base)
        self._prefix: bytes | None = nonce
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether the final chunk has been encoded."""
        return self._finished

    def encode_chunk(self, data: bytes, *, final: bool = False) -> bytes:
        """Seal ``data`` as the next chunk (split above ``MAX_CHUNK_SIZE``); ``final`` ends the response."""
        if self._finished:
            raise LocalProtocolError("chunk encoded after the final chunk")
        if not data and not final:
            raise LocalProtocolError("a non-final chunk cannot be empty")
        if len(data) <= MAX_CHUNK_SIZE:  # one chunk per token (the usual case): no list, no intermediate buffer
            out = _frame(self._cipher.seal(data, final), final)
        else:
            out = b"".join(_frame(self._cipher.seal(piece, fin), fin) for piece, fin in _split(data, final))
        if self._prefix is not None:
            out = self._prefix + out
            self._prefix = None
        self._finished = final
        return out
