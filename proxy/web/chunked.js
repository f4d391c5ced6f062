// Chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08) for the browser, wire-compatible with ohttp/chunked.py.
//
//   request  = hdr(7) || enc || NonFinalChunk* || 0x00 || FinalSealedChunk      info "message/bhttp chunked request"
//   response = nonce(max(Nn, Nk)) || NonFinalChunk* || 0x00 || FinalSealedChunk  label "message/bhttp chunked response"
//   NonFinalChunk = varint(len(sealed)) (>= 1) || sealed;  the final chunk is sealed with AAD "final" and runs to
//   the end of the body, so it can be opened only at end of input. Response chunk nonces: aead_nonce XOR counter.
//
// ChunkedResponseDecoder is incremental: receive() ciphertext as it arrives, end() at end of input, and await
// next() for {data, final} chunks or NEED_DATA. A stream that ends without its final chunk is an error, never a
// silent success.

import { NEED_DATA, concat, decodeVarint, encodeVarint } from "./bhttp.js";
import { OHTTPError, TAG_LEN, chooseSuite, entropyLen, responseAead, responseKeys, setupSender } from "./ohttp.js";

export { NEED_DATA };
export const MEDIA_TYPE_CHUNKED_REQUEST = "message/ohttp-chunked-req";
export const MEDIA_TYPE_CHUNKED_RESPONSE = "message/ohttp-chunked-res";
export const INFO_CHUNKED_REQUEST = "message/bhttp chunked request";
export const LABEL_CHUNKED_RESPONSE = "message/bhttp chunked response";
/** Plaintext bytes per chunk that every receiver must accept (s3, 2^14). */
export const MAX_CHUNK_SIZE = 16384;

const AAD_FINAL = new TextEncoder().encode("final");
const NO_AAD = new Uint8Array(0);

function frame(sealed, final) {
  return final ? concat(Uint8Array.of(0), sealed) : concat(encodeVarint(sealed.length), sealed);
}

function split(data, final) {
  if (data.length <= MAX_CHUNK_SIZE) return [[data, final]];
  const out = [];
  for (let i = 0; i < data.length; i += MAX_CHUNK_SIZE) {
    out.push([data.subarray(i, i + MAX_CHUNK_SIZE), final && i + MAX_CHUNK_SIZE >= data.length]);
  }
  return out;
}

/** The chunk nonces of s6.2: aead_nonce XOR encode(Nn, counter); the counter counts every chunk, final included. */
class ResponseCipher {
  constructor(aeadId, key, baseNonce) {
    this._aead = responseAead(aeadId, key);
    this._base = baseNonce;
    this._counter = 0;
  }

  _nextNonce() {
    const nonce = this._base.slice();
    let c = this._counter++;
    if (c >= 2 ** 48) throw new OHTTPError("too many chunks");
    for (let i = nonce.length - 1; c > 0; i--) {
      nonce[i] ^= c % 256;
      c = Math.floor(c / 256);
    }
    return nonce;
  }

  async seal(pt, final) {
    return new Uint8Array(await this._aead.seal(this._nextNonce(), pt, final ? AAD_FINAL : NO_AAD));
  }

  async open(ct, final) {
    const nonce = this._nextNonce();
    try {
      return new Uint8Array(await this._aead.open(nonce, ct, final ? AAD_FINAL : NO_AAD));
    } catch {
      throw new OHTTPError("a response chunk did not authenticate (tampered, reordered or cut)");
    }
  }
}

/** Encodes a chunked encapsulated request; create with ChunkedClientRequest.create(config, options). */
export class ChunkedClientRequest {
  static async create(config, { suite, ephemeral } = {}) {
    const s = suite || chooseSuite(config);
    const { context, hdr, enc } = await setupSender(config, s, INFO_CHUNKED_REQUEST, ephemeral);
    return new ChunkedClientRequest(context, hdr, enc, s);
  }

  constructor(context, hdr, enc, suite) {
    this._context = context;
    this._prefix = concat(hdr, enc);
    this.enc = enc;
    this.suite = suite;
    this._finished = false;
  }

  /** Seal data as the next chunk (split above MAX_CHUNK_SIZE); final ends the request. */
  async encodeChunk(data, { final = false } = {}) {
    if (this._finished) throw new Error("chunk encoded after the final chunk");
    if (!data.length && !final) throw new Error("a non-final chunk cannot be empty");
    const parts = [];
    if (this._prefix) {
      parts.push(this._prefix);
      this._prefix = null;
    }
    for (const [piece, fin] of split(data, final)) {
      parts.push(frame(new Uint8Array(await this._context.seal(piece, fin ? AAD_FINAL : NO_AAD)), fin));
    }
    this._finished = final;
    return concat(...parts);
  }

  /** The decoder of this request's chunked response. */
  response(options) {
    return new ChunkedResponseDecoder(this._context, this.enc, this.suite, options);
  }
}

/** Incremental decoder of a chunked encapsulated response. Errors are OHTTPError; after one, it stays failed. */
export class ChunkedResponseDecoder {
  constructor(context, enc, suite, { maxChunkSize = MAX_CHUNK_SIZE } = {}) {
    this._context = context;
    this._enc = enc;
    this._suite = suite;
    this._maxSealed = maxChunkSize + TAG_LEN;
    this._nonceLen = entropyLen(suite.aead);
    this._buf = new Uint8Array(0);
    this._eof = false;
    this._finalSeen = false;
    this._done = false;
    this._failed = false;
    this._cipher = null;
    this._busy = false;
  }

  /** Feed ciphertext as it arrives. */
  receive(data) {
    if (this._failed) throw new OHTTPError("decoder already failed");
    if (this._eof) throw new OHTTPError("data after the end of the stream");
    if (!data.length) return;
    this._buf = this._buf.length ? concat(this._buf, data) : data.slice();
    if (this._finalSeen && this._buf.length > this._maxSealed) this._fail(`final chunk larger than ${this._maxSealed} bytes`);
  }

  /** Mark the end of input. */
  end() {
    this._eof = true;
  }

  /** Whether the final chunk has been opened (the response is complete and authentic). */
  get complete() {
    return this._done;
  }

  /** The next decrypted chunk {data, final}, or NEED_DATA. Calls must not overlap. */
  async next() {
    if (this._failed) throw new OHTTPError("decoder already failed");
    if (this._busy) throw new Error("ChunkedResponseDecoder.next() calls must not overlap");
    this._busy = true;
    try {
      return await this._next();
    } catch (err) {
      this._failed = true;
      throw err instanceof OHTTPError ? err : new OHTTPError(String(err && err.message || err));
    } finally {
      this._busy = false;
    }
  }

  _fail(message) {
    this._failed = true;
    throw new OHTTPError(message);
  }

  async _next() {
    if (this._done) {
      if (this._buf.length) throw new OHTTPError("data after the final chunk");
      return NEED_DATA;
    }
    if (this._cipher === null) {
      if (this._buf.length < this._nonceLen) {
        if (this._eof) throw new OHTTPError(`response truncated: ${this._buf.length} of ${this._nonceLen} nonce bytes`);
        return NEED_DATA;
      }
      const nonce = this._buf.slice(0, this._nonceLen);
      this._buf = this._buf.subarray(this._nonceLen);
      const keys = await responseKeys(this._context, LABEL_CHUNKED_RESPONSE, this._enc, nonce, this._suite);
      this._cipher = new ResponseCipher(this._suite.aead, keys.key, keys.nonce);
    }
    if (this._finalSeen) {
      if (!this._eof) return NEED_DATA;
      const sealed = this._buf;
      this._buf = new Uint8Array(0);
      if (sealed.length < TAG_LEN) throw new OHTTPError("final chunk shorter than its tag");
      const pt = await this._cipher.open(sealed, true);
      this._done = true;
      return { data: pt, final: true };
    }
    const out = decodeVarint(this._buf, 0);
    if (out === null) {
      if (this._eof) throw new OHTTPError("stream truncated: it ended before its final chunk");
      return NEED_DATA;
    }
    const [length, start] = out;
    if (length === 0) {
      this._finalSeen = true;
      this._buf = this._buf.subarray(start);
      if (this._buf.length > this._maxSealed) throw new OHTTPError(`final chunk larger than ${this._maxSealed} bytes`);
      return this._next();
    }
    if (length > this._maxSealed) throw new OHTTPError(`chunk of ${length} bytes exceeds the limit of ${this._maxSealed}`);
    if (length < TAG_LEN) throw new OHTTPError(`chunk of ${length} bytes is shorter than its tag`);
    if (start + length > this._buf.length) {
      if (this._eof) throw new OHTTPError("stream truncated inside a chunk");
      return NEED_DATA;
    }
    const sealed = this._buf.subarray(start, start + length);
    this._buf = this._buf.subarray(start + length);
    const pt = await this._cipher.open(sealed, false);
    if (!pt.length) throw new OHTTPError("empty non-final chunk");
    return { data: pt, final: false };
  }
}

/**
 * Gateway side of the response, for tests and tools: encodes chunks under an HPKE context's chunked response keys.
 * Create with ChunkedResponseEncoder.create(context, enc, suite, responseNonce?).
 */
export class ChunkedResponseEncoder {
  static async create(context, enc, suite, responseNonce) {
    const nonce = responseNonce || crypto.getRandomValues(new Uint8Array(entropyLen(suite.aead)));
    const keys = await responseKeys(context, LABEL_CHUNKED_RESPONSE, enc, nonce, suite);
    return new ChunkedResponseEncoder(new ResponseCipher(suite.aead, keys.key, keys.nonce), nonce);
  }

  constructor(cipher, nonce) {
    this._cipher = cipher;
    this._prefix = nonce;
    this._finished = false;
  }

  async encodeChunk(data, { final = false } = {}) {
    if (this._finished) throw new Error("chunk encoded after the final chunk");
    if (!data.length && !final) throw new Error("a non-final chunk cannot be empty");
    const parts = [];
    if (this._prefix) {
      parts.push(this._prefix);
      this._prefix = null;
    }
    for (const [piece, fin] of split(data, final)) parts.push(frame(await this._cipher.seal(piece, fin), fin));
    this._finished = final;
    return concat(...parts);
  }
}
