// Binary HTTP (RFC 9292) for the browser: encoders for both framings and one incremental decoder.
//
// The decoder is the only parser (whole-message decode runs it over all the bytes), mirroring ohttp/bhttp.py:
// feed it arbitrary slices with receive(bytes), end input with end(), and take events from next() as soon as they
// are complete: the head, pieces of content, trailers, the end. Peer bytes raise BHTTPError and the decoder stays
// failed. Field names and values are strings of bytes 0..255 (latin-1, exactly; TextDecoder("latin1") is
// windows-1252 in browsers, so it is never used here).

export const NEED_DATA = Symbol("NEED_DATA");
export const MEDIA_TYPE_BHTTP = "message/bhttp";

export const LIMITS = Object.freeze({
  maxFieldSectionSize: 64 * 1024,
  maxFields: 256,
  maxContentSize: 64 * 1024 * 1024,
  maxInformational: 8,
});

/** Malformed, truncated or over-limit Binary HTTP from the peer. */
export class BHTTPError extends Error {
  constructor(message) {
    super(message);
    this.name = "BHTTPError";
  }
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$/;
const NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const BAD_VALUE = /[\x00\r\n]|^[ \t]|[ \t]$/;
const BAD_CONTROL = /[\x00-\x20\x7f]/;

// ---------------------------------------------------------------------------------------------------------------
// Bytes and varints (RFC 9000 s16)

/** Concatenate byte arrays. */
export function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** A latin-1 string (every char <= 0xff) as its bytes. */
export function latin1(s) {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new TypeError(`character U+${c.toString(16)} cannot be sent in an HTTP field`);
    out[i] = c;
  }
  return out;
}

/** Bytes as a latin-1 string (byte for byte). */
export function fromLatin1(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return s;
}

/** The minimal QUIC varint encoding of n (0 <= n < 2^53 here). */
export function encodeVarint(n) {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`varint out of range: ${n}`);
  if (n < 0x40) return Uint8Array.of(n);
  if (n < 0x4000) return Uint8Array.of(0x40 | (n >> 8), n & 0xff);
  if (n < 0x40000000) return Uint8Array.of(0x80 | (n >>> 24), (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
  const hi = Math.floor(n / 0x100000000);
  const lo = n >>> 0;
  return Uint8Array.of(0xc0 | (hi >>> 24), (hi >>> 16) & 0xff, (hi >>> 8) & 0xff, hi & 0xff,
    lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff);
}

/** Decode a varint at pos (non-minimal encodings are accepted): [value, next] or null if incomplete. */
export function decodeVarint(buf, pos, end = buf.length) {
  if (pos >= end) return null;
  const len = 1 << (buf[pos] >> 6);
  if (pos + len > end) return null;
  let v = buf[pos] & 0x3f;
  for (let i = 1; i < len; i++) v = v * 256 + buf[pos + i];
  return [v, pos + len];
}

function lengthPrefixed(bytes) {
  return concat(encodeVarint(bytes.length), bytes);
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding

function checkField(name, value) {
  if (!NAME.test(name)) throw new TypeError(`invalid field name ${JSON.stringify(name)} (lowercase tokens only)`);
  if (BAD_VALUE.test(value)) throw new TypeError(`invalid value for field ${name}`);
}

function fieldLines(fields) {
  const parts = [];
  for (const [name, value] of fields) {
    checkField(name, value);
    parts.push(lengthPrefixed(latin1(name)), lengthPrefixed(latin1(value)));
  }
  return concat(...parts);
}

function section(fields, known) {
  const lines = fieldLines(fields || []);
  return known ? lengthPrefixed(lines) : concat(lines, Uint8Array.of(0));
}

function content(body, known) {
  const bytes = body || new Uint8Array(0);
  if (known) return lengthPrefixed(bytes);
  return bytes.length ? concat(lengthPrefixed(bytes), Uint8Array.of(0)) : Uint8Array.of(0);
}

function asBytes(body) {
  if (body === undefined || body === null) return new Uint8Array(0);
  if (typeof body === "string") return new TextEncoder().encode(body);
  return body instanceof Uint8Array ? body : new Uint8Array(body);
}

/**
 * The size a message of `length` bytes is padded to (RFC 9292 §3.8 zero padding): the next multiple of `quantum`,
 * or of Padmé's step 2^(E - floor(log2 E) - 1), E = floor(log2 length), when that is larger. The same function as
 * ohttp.padded_size in Python, so the page and `veil proxy` pad alike. quantum 0: no padding.
 */
export function paddedSize(length, quantum) {
  if (!(quantum > 0) || !(length > 0)) return Math.max(length, 0);
  const e = 31 - Math.clz32(length); // floor(log2 length), exact (messages stay below 2^31 bytes)
  const bits = 32 - Math.clz32(e); // floor(log2 e) + 1, and 0 for e = 0
  const step = Math.max(quantum, 2 ** Math.max(0, e - bits));
  return Math.ceil(length / step) * step;
}

/**
 * Encode a request {method, scheme, authority, path, headers: [[name, value]...], content, trailers}.
 * mode is "known-length" (default) or "indeterminate-length"; padding appends that many zero bytes.
 */
export function encodeRequest(req, { mode = "known-length", padding = 0 } = {}) {
  const known = mode === "known-length";
  const { method, scheme = "https", authority = "", path = "/" } = req;
  if (!TOKEN.test(method)) throw new TypeError("invalid request method");
  for (const [what, v] of [["scheme", scheme], ["authority", authority], ["path", path]]) {
    if (BAD_CONTROL.test(v)) throw new TypeError(`invalid characters in ${what}`);
  }
  return concat(
    encodeVarint(known ? 0 : 2),
    lengthPrefixed(latin1(method)), lengthPrefixed(latin1(scheme)),
    lengthPrefixed(latin1(authority)), lengthPrefixed(latin1(path)),
    section(req.headers, known), content(asBytes(req.content), known), section(req.trailers, known),
    new Uint8Array(padding),
  );
}

/** Encode a response {status, headers, content, trailers, informational: [{status, headers}...]}. */
export function encodeResponse(res, { mode = "known-length", padding = 0 } = {}) {
  const known = mode === "known-length";
  const parts = [encodeVarint(known ? 1 : 3)];
  for (const info of res.informational || []) {
    if (!(info.status >= 100 && info.status <= 199)) throw new TypeError(`invalid informational status ${info.status}`);
    parts.push(encodeVarint(info.status), section(info.headers, known));
  }
  if (!(res.status >= 200 && res.status <= 599)) throw new TypeError(`invalid status ${res.status}`);
  parts.push(encodeVarint(res.status), section(res.headers, known), content(asBytes(res.content), known),
    section(res.trailers, known), new Uint8Array(padding));
  return concat(...parts);
}

// ---------------------------------------------------------------------------------------------------------------
// Incremental decoding

const S = Object.freeze({
  FRAMING: "framing", CONTROL: "control", HEADERS: "headers", CONTENT: "content", TRAILERS: "trailers",
  PADDING: "padding", ERROR: "error",
});

/**
 * Incremental decoder. expect: "request", "response" or undefined. Events from next():
 *   {type: "request-head", method, scheme, authority, path, headers, mode}
 *   {type: "informational", status, headers}
 *   {type: "response-head", status, headers, mode}
 *   {type: "data", data: Uint8Array}       (content, in pieces as it arrives)
 *   {type: "trailers", trailers}
 *   {type: "end"}
 * or NEED_DATA. Errors are BHTTPError; after one, every call throws.
 */
export class BHTTPDecoder {
  constructor({ expect, limits = LIMITS } = {}) {
    this._expect = expect;
    this._limits = limits;
    this._buf = new Uint8Array(0);
    this._len = 0;
    this._pos = 0;
    this._eof = false;
    this._state = S.FRAMING;
    this._known = true;
    this._isRequest = false;
    this._control = null;
    this._status = 0;
    this._informational = 0;
    this._fields = [];
    this._sectionBytes = 0;
    this._startedSection = false;
    this._contentLeft = -1;
    this._contentTotal = 0;
    this._pending = [];
  }

  /** Append bytes as they arrive. */
  receive(data) {
    if (this._state === S.ERROR) throw new BHTTPError("decoder already failed");
    if (this._eof) throw new BHTTPError("data received after end of input");
    if (!data.length) return;
    if (this._len + data.length > this._buf.length) {
      const live = this._len - this._pos;
      const grown = new Uint8Array(Math.max(2 * (live + data.length), 1024));
      grown.set(this._buf.subarray(this._pos, this._len));
      this._buf = grown;
      this._len = live;
      this._pos = 0;
    }
    this._buf.set(data, this._len);
    this._len += data.length;
  }

  /** Mark the end of input. */
  end() {
    this._eof = true;
  }

  /** The next event, or NEED_DATA. */
  next() {
    if (this._state === S.ERROR) throw new BHTTPError("decoder already failed");
    try {
      return this._next();
    } catch (err) {
      this._state = S.ERROR;
      throw err instanceof BHTTPError ? err : new BHTTPError(String(err && err.message || err));
    }
  }

  _avail() {
    return this._len - this._pos;
  }

  _atEof() {
    return this._eof && this._pos >= this._len;
  }

  _varint() {
    const out = decodeVarint(this._buf, this._pos, this._len);
    if (out === null) {
      if (this._eof) throw new BHTTPError(`message truncated inside a length at offset ${this._pos}`);
      return null;
    }
    this._pos = out[1];
    return out[0];
  }

  _next() {
    if (this._pending.length) return this._pending.shift();
    for (;;) {
      switch (this._state) {
        case S.FRAMING: {
          if (this._atEof()) throw new BHTTPError("empty message");
          const fi = this._varint();
          if (fi === null) return NEED_DATA;
          if (fi > 3) throw new BHTTPError(`unknown framing indicator ${fi}`);
          this._isRequest = fi === 0 || fi === 2;
          this._known = fi < 2;
          if (this._expect === "request" && !this._isRequest) throw new BHTTPError("expected a request, got a response");
          if (this._expect === "response" && this._isRequest) throw new BHTTPError("expected a response, got a request");
          this._state = S.CONTROL;
          break;
        }
        case S.CONTROL:
          if (!this._controlData()) return NEED_DATA;
          break;
        case S.HEADERS: {
          const fields = this._section();
          if (fields === null) return NEED_DATA;
          this._state = S.CONTENT;
          this._contentLeft = -1;
          const mode = this._known ? "known-length" : "indeterminate-length";
          if (this._isRequest) return { type: "request-head", ...this._control, headers: fields, mode };
          if (this._status < 200) {
            this._informational += 1;
            this._state = S.CONTROL;
            return { type: "informational", status: this._status, headers: fields };
          }
          return { type: "response-head", status: this._status, headers: fields, mode };
        }
        case S.CONTENT: {
          const ev = this._content();
          if (ev !== null) return ev;
          if (this._state === S.CONTENT) return NEED_DATA;
          break;
        }
        case S.TRAILERS: {
          const fields = this._section();
          if (fields === null) return NEED_DATA;
          this._state = S.PADDING;
          if (fields.length) {
            this._pending.push({ type: "end" });
            return { type: "trailers", trailers: fields };
          }
          return { type: "end" };
        }
        case S.PADDING:
          for (let i = this._pos; i < this._len; i++) {
            if (this._buf[i] !== 0) throw new BHTTPError("non-zero byte in padding");
          }
          this._pos = this._len;
          return NEED_DATA;
        default:
          return NEED_DATA;
      }
    }
  }

  _string(what) {
    const start = this._pos;
    const n = this._varint();
    if (n === null) return null;
    if (n > this._limits.maxFieldSectionSize) throw new BHTTPError(`${what} of ${n} bytes exceeds the limit`);
    if (this._avail() < n) {
      if (this._eof) throw new BHTTPError(`${what} truncated: ${this._avail()} of ${n} bytes`);
      this._pos = start;
      return null;
    }
    const out = fromLatin1(this._buf.subarray(this._pos, this._pos + n));
    this._pos += n;
    return out;
  }

  _controlData() {
    const start = this._pos;
    if (this._isRequest) {
      const parts = [];
      for (const what of ["method", "scheme", "authority", "path"]) {
        const s = this._string(what);
        if (s === null) {
          this._pos = start;
          return false;
        }
        parts.push(s);
      }
      const [method, scheme, authority, path] = parts;
      if (!TOKEN.test(method)) throw new BHTTPError("invalid request method");
      for (const [what, v] of [["scheme", scheme], ["authority", authority], ["path", path]]) {
        if (BAD_CONTROL.test(v)) throw new BHTTPError(`invalid characters in ${what}`);
      }
      this._control = { method, scheme, authority, path };
      this._state = S.HEADERS;
      return true;
    }
    if (this._atEof()) throw new BHTTPError("response truncated before its status");
    const status = this._varint();
    if (status === null) return false;
    if (!(status >= 100 && status <= 599)) throw new BHTTPError(`invalid status ${status}`);
    if (status < 200 && this._informational >= this._limits.maxInformational) {
      throw new BHTTPError("too many informational responses");
    }
    this._status = status;
    this._state = S.HEADERS;
    return true;
  }

  // RFC 9292 s3.8: a message may end where a section would start (that section and all after it are empty),
  // except right after an informational status, which must have its header section.
  _section() {
    const lim = this._limits;
    const mayTruncate = this._isRequest || this._status >= 200;
    if (this._known) {
      if (mayTruncate && this._atEof()) return [];
      const start = this._pos;
      const n = this._varint();
      if (n === null) return null;
      if (n > lim.maxFieldSectionSize) throw new BHTTPError(`field section of ${n} bytes exceeds the limit`);
      if (this._avail() < n) {
        if (this._eof) throw new BHTTPError(`field section truncated: ${this._avail()} of ${n} bytes`);
        this._pos = start;
        return null;
      }
      const end = this._pos + n;
      const fields = [];
      let pos = this._pos;
      while (pos < end) {
        const [next, field] = this._fieldAt(pos, end);
        pos = next;
        fields.push(field);
        if (fields.length > lim.maxFields) throw new BHTTPError(`more than ${lim.maxFields} fields`);
      }
      this._pos = end;
      return fields;
    }
    for (;;) {
      if (mayTruncate && !this._startedSection && this._atEof()) return [];
      const start = this._pos;
      const first = decodeVarint(this._buf, this._pos, this._len);
      if (first === null) {
        if (this._eof) throw new BHTTPError("field section truncated");
        return null;
      }
      if (first[0] === 0) {
        this._pos = first[1];
        const out = this._fields;
        this._fields = [];
        this._sectionBytes = 0;
        this._startedSection = false;
        return out;
      }
      const [next, field] = this._fieldAt(start, null);
      if (next < 0) {
        if (this._eof) throw new BHTTPError("field line truncated");
        return null;
      }
      this._sectionBytes += next - start;
      if (this._sectionBytes > lim.maxFieldSectionSize) throw new BHTTPError("field section exceeds the limit");
      this._pos = next;
      this._fields.push(field);
      this._startedSection = true;
      if (this._fields.length > lim.maxFields) throw new BHTTPError(`more than ${lim.maxFields} fields`);
    }
  }

  // A field line at pos; with end === null, [-1, null] when incomplete.
  _fieldAt(pos, end) {
    const limit = end === null ? this._len : end;
    const parts = [];
    for (const what of ["name", "value"]) {
      const out = decodeVarint(this._buf, pos, limit);
      if (out === null) {
        if (end === null) return [-1, null];
        throw new BHTTPError(`field ${what} length overruns its section`);
      }
      const [n, p] = out;
      if (n > this._limits.maxFieldSectionSize) throw new BHTTPError(`field ${what} exceeds the limit`);
      if (p + n > limit) {
        if (end === null) return [-1, null];
        throw new BHTTPError(`field ${what} overruns its section`);
      }
      parts.push(fromLatin1(this._buf.subarray(p, p + n)));
      pos = p + n;
    }
    const [name, value] = parts;
    if (!name) throw new BHTTPError("empty field name");
    if (!NAME.test(name)) throw new BHTTPError("invalid field name");
    if (BAD_VALUE.test(value)) throw new BHTTPError(`invalid value in field ${name}`);
    return [pos, [name, value]];
  }

  _content() {
    const lim = this._limits;
    if (this._known) {
      if (this._contentLeft < 0) {
        if (this._atEof()) {
          this._state = S.TRAILERS;
          return null;
        }
        const n = this._varint();
        if (n === null) return null;
        if (n > lim.maxContentSize) throw new BHTTPError(`content of ${n} bytes exceeds the limit`);
        this._contentLeft = n;
      }
    } else if (this._contentLeft <= 0) {
      if (this._contentLeft < 0 && this._atEof()) {
        this._state = S.TRAILERS; // content may be omitted only if none of it was sent
        return null;
      }
      const n = this._varint();
      if (n === null) return null;
      if (n === 0) {
        this._state = S.TRAILERS;
        this._contentLeft = -1;
        return null;
      }
      this._contentTotal += n;
      if (this._contentTotal > lim.maxContentSize) throw new BHTTPError("content exceeds the limit");
      this._contentLeft = n;
    }
    if (this._known && this._contentLeft === 0) {
      this._state = S.TRAILERS;
      return null;
    }
    const take = Math.min(this._contentLeft, this._avail());
    if (take === 0) {
      if (this._eof) throw new BHTTPError(`content truncated: ${this._contentLeft} bytes missing`);
      return null;
    }
    const data = this._buf.slice(this._pos, this._pos + take);
    this._pos += take;
    this._contentLeft -= take;
    return { type: "data", data };
  }
}

/** Decode a whole message: {request or response fields, content, trailers, informational, mode}. */
export function decode(bytes, { expect } = {}) {
  const dec = new BHTTPDecoder({ expect });
  dec.receive(bytes);
  dec.end();
  const msg = { informational: [], trailers: [] };
  const pieces = [];
  for (;;) {
    const ev = dec.next();
    if (ev === NEED_DATA) throw new BHTTPError("message incomplete");
    if (ev.type === "informational") msg.informational.push({ status: ev.status, headers: ev.headers });
    else if (ev.type === "request-head" || ev.type === "response-head") Object.assign(msg, ev);
    else if (ev.type === "data") pieces.push(ev.data);
    else if (ev.type === "trailers") msg.trailers = ev.trailers;
    else if (ev.type === "end") break;
  }
  if (dec.next() !== NEED_DATA) throw new BHTTPError("unexpected data after the message");
  delete msg.type;
  msg.content = concat(...pieces);
  return msg;
}

/** The value of the first field called name (lowercase), or null. */
export function header(fields, name) {
  for (const [n, v] of fields) if (n === name) return v;
  return null;
}
