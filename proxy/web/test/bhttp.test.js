// Binary HTTP: the RFC 9292 s5 examples (and the Rust bhttp crate's cases) decode and re-encode byte for byte;
// the incremental decoder gives the same events however the bytes are sliced, and yields content as it arrives.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BHTTPDecoder, BHTTPError, NEED_DATA, decode, decodeVarint, encodeRequest, encodeResponse, encodeVarint, fromLatin1,
  paddedSize,
} from "../bhttp.js";
import { h, hex, loadVector } from "./helpers.js";

const RFC = loadVector("rfc9292_examples.json").examples;
const MT = loadVector("martinthomson_ohttp_tests.json").bhttp;

const text = (bytes) => fromLatin1(bytes);

function expectMatches(msg, d) {
  if (d.method !== undefined) {
    for (const k of ["method", "scheme", "authority", "path"]) assert.equal(msg[k], d[k], k);
  } else {
    assert.equal(msg.status, d.status);
  }
  assert.deepEqual(msg.headers, d.headers);
  assert.equal(text(msg.content), d.content);
  assert.deepEqual(msg.trailers, d.trailers);
  assert.deepEqual(msg.informational.map((i) => [i.status, i.headers]), d.informational || []);
  assert.equal(msg.mode, d.framing_indicator < 2 ? "known-length" : "indeterminate-length");
}

function encodeDecoded(d) {
  const mode = d.framing_indicator < 2 ? "known-length" : "indeterminate-length";
  const msg = {
    ...d, content: new TextEncoder().encode(d.content),
    informational: (d.informational || []).map(([status, headers]) => ({ status, headers })),
  };
  return d.method !== undefined ? encodeRequest(msg, { mode, padding: d.padding || 0 })
    : encodeResponse(msg, { mode, padding: d.padding || 0 });
}

function events(bytes, step) {
  const dec = new BHTTPDecoder();
  const out = [];
  const drain = () => {
    for (let ev = dec.next(); ev !== NEED_DATA; ev = dec.next()) out.push(ev);
  };
  for (let i = 0; i < bytes.length; i += step) {
    dec.receive(bytes.subarray(i, i + step));
    drain();
  }
  dec.end();
  drain();
  // Content may arrive in pieces; join adjacent data events so slicings compare equal.
  const joined = [];
  for (const ev of out) {
    const last = joined[joined.length - 1];
    if (ev.type === "data" && last && last.type === "data") last.data += hex(ev.data);
    else joined.push(ev.type === "data" ? { type: "data", data: hex(ev.data) } : ev);
  }
  return joined;
}

test("varints: RFC 9000 examples, minimal encoding, non-minimal decoding", () => {
  assert.deepEqual(decodeVarint(h("25"), 0), [37, 1]);
  assert.deepEqual(decodeVarint(h("7bbd"), 0), [15293, 2]);
  assert.deepEqual(decodeVarint(h("9d7f3e7d"), 0), [494878333, 4]);
  assert.deepEqual(decodeVarint(h("c2197c5eff14e88c"), 0), [151288809941952652, 8]);
  assert.deepEqual(decodeVarint(h("4025"), 0), [37, 2]); // non-minimal is accepted
  assert.equal(decodeVarint(h("40"), 0), null);
  for (const n of [0, 63, 64, 16383, 16384, 2 ** 30 - 1, 2 ** 30, 2 ** 40]) {
    assert.deepEqual(decodeVarint(encodeVarint(n), 0), [n, encodeVarint(n).length]);
  }
  assert.equal(hex(encodeVarint(200)), "40c8");
});

for (const ex of RFC) {
  test(`RFC 9292 ${ex.name}: decodes to its fields and re-encodes to the same bytes`, () => {
    const bytes = h(ex.hex);
    expectMatches(decode(bytes), ex.decoded);
    assert.equal(hex(encodeDecoded(ex.decoded)), ex.hex);
  });

  test(`RFC 9292 ${ex.name}: same events whole, byte by byte and in 5-byte slices`, () => {
    const bytes = h(ex.hex);
    const whole = events(bytes, bytes.length);
    assert.deepEqual(events(bytes, 1), whole);
    assert.deepEqual(events(bytes, 5), whole);
    assert.equal(whole[whole.length - 1].type, "end");
  });

  test(`RFC 9292 ${ex.name}: every truncation inside a part fails; zero padding is fine, non-zero is not`, () => {
    const bytes = h(ex.hex);
    let failures = 0;
    for (let cut = 1; cut < bytes.length; cut++) {
      try {
        decode(bytes.subarray(0, cut));
      } catch (err) {
        assert.ok(err instanceof BHTTPError, String(err));
        failures++;
      }
    }
    assert.ok(failures > bytes.length / 2, `only ${failures} truncations failed`);
    expectMatches(decode(new Uint8Array([...bytes, 0, 0, 0])), ex.decoded);
    assert.throws(() => decode(new Uint8Array([...bytes, 0, 1])), /padding/);
  });
}

for (const v of MT) {
  test(`bhttp crate ${v.name}`, () => {
    if (v.expect_error) {
      assert.throws(() => decode(h(v.hex)), BHTTPError);
      return;
    }
    const msg = decode(h(v.hex));
    if (v.decoded) {
      expectMatches(msg, { informational: [], ...v.decoded });
      // Truncated vectors (RFC 9292 s3.8) re-encode with their empty parts written out as zero lengths.
      const enc = hex(encodeDecoded(v.decoded));
      assert.equal(enc.slice(0, v.hex.length), v.hex);
      assert.match(enc.slice(v.hex.length), /^(00)*$/);
    }
  });
}

test("the incremental decoder yields each SSE event as soon as its BHTTP chunk is complete", () => {
  const events = ["data: {\"a\":1}\n\n", "data: {\"b\":2}\n\n", "data: [DONE]\n\n"];
  const head = encodeResponse({ status: 200, headers: [["content-type", "text/event-stream"]] }, { mode: "indeterminate-length" });
  // head = 03 | status | fields | 00 | 00 (empty content) | 00 (empty trailers): keep the head part only.
  const headOnly = head.subarray(0, head.length - 2);
  const dec = new BHTTPDecoder({ expect: "response" });
  dec.receive(headOnly);
  const ev = dec.next();
  assert.equal(ev.type, "response-head");
  assert.equal(ev.status, 200);
  assert.deepEqual(ev.headers, [["content-type", "text/event-stream"]]);
  assert.equal(dec.next(), NEED_DATA);
  for (const e of events) {
    const bytes = new TextEncoder().encode(e);
    dec.receive(new Uint8Array([bytes.length, ...bytes]));
    const got = dec.next();
    assert.equal(got.type, "data");
    assert.equal(new TextDecoder().decode(got.data), e);
    assert.equal(dec.next(), NEED_DATA);
  }
  dec.receive(Uint8Array.of(0, 0));
  dec.end();
  assert.equal(dec.next().type, "end");
});

test("decoder limits, bad fields and a wrong message kind are errors and the decoder stays failed", () => {
  assert.throws(() => decode(h("0140c8"), { expect: "request" }), /expected a request/);
  assert.throws(() => decode(h("04")), /framing indicator/);
  assert.equal(decode(h("0141f4")).status, 500);
  assert.throws(() => decode(h("014258")), /invalid status 600/);
  assert.throws(() => decode(h("01" + "4064" + "00")), /truncated/); // an informational status needs its headers
  // A field name with an upper-case letter is invalid (RFC 9292 s3.6 / HTTP/2 rules).
  assert.throws(() => decode(h("0140c805" + "0141" + "0162" + "0000")), /field name/);
  const dec = new BHTTPDecoder();
  dec.receive(h("05"));
  assert.throws(() => dec.next(), BHTTPError);
  assert.throws(() => dec.next(), /already failed/);
  assert.throws(() => encodeRequest({ method: "GET", path: "/", headers: [["X-Upper", "v"]] }), /field name/);
  assert.throws(() => encodeRequest({ method: "GET", path: "/", headers: [["x", "a\r\nb"]] }), /invalid value/);
});

test("paddedSize buckets exactly as ohttp.padded_size (tests/ohttp/test_bhttp.py holds the same table)", () => {
  const table = [[0, 0], [1, 1024], [5, 1024], [255, 1024], [256, 1024], [257, 1024], [1000, 1024], [1024, 1024],
    [1025, 2048], [4097, 5120], [32767, 32768], [32768, 32768], [40000, 40960], [100000, 100352],
    [1048577, 1081344]];
  for (const [n, want] of table) assert.equal(paddedSize(n, 1024), want, `${n}`);
  assert.deepEqual([1, 200, 256, 300].map((n) => paddedSize(n, 256)), [256, 256, 256, 512]);
  assert.equal(paddedSize(5, 0), 5);
  const padded = encodeRequest({ method: "GET", path: "/" }, { padding: 10 });
  assert.equal(decode(padded).path, "/"); // zero padding is accepted
});
