// The browser client against the shared vectors, byte for byte: RFC 9458 Appendix A and the chunked OHTTP
// draft-08 appendix (fixed ephemeral key through @hpke's `ekm`, fixed response nonce).
import assert from "node:assert/strict";
import { test } from "node:test";

import { decode, encodeRequest } from "../bhttp.js";
import {
  ChunkedClientRequest, ChunkedResponseDecoder, ChunkedResponseEncoder, INFO_CHUNKED_REQUEST, NEED_DATA,
} from "../chunked.js";
import {
  INFO_REQUEST, LABEL_RESPONSE, OHTTPError, decodeKeyList, encapsulateRequest, encapsulateResponse, responseKeys,
} from "../ohttp.js";
import { gatewayContext, h, hex, loadVector } from "./helpers.js";

const A = loadVector("rfc9458_appendix_a.json");
const C = loadVector("chunked_ohttp_draft08_appendix.json");

function configOf(v) {
  const configs = decodeKeyList(h(v.ohttp_keys_media || "002d" + v.key_config));
  assert.equal(configs.length, 1);
  return configs[0];
}

const ephemeral = (v) => ({ privateKey: h(v.ephemeral_private_key), publicKey: h(v.ephemeral_public_key_enc) });

test("RFC 9458 A: key configuration decodes to key 1, X25519, two suites", () => {
  const config = configOf(A);
  assert.equal(config.keyId, A.key_id);
  assert.equal(config.kem, A.suite.kem_id);
  assert.equal(hex(config.publicKey), A.key_config.slice(6, 70));
  assert.deepEqual(config.suites, [{ kdf: 1, aead: 1 }, { kdf: 1, aead: 3 }]);
});

test("RFC 9458 A: the request encapsulates byte for byte", async () => {
  const config = configOf(A);
  const bhttp = encodeRequest({ method: "GET", scheme: "https", authority: "example.com", path: "/" });
  // The vector's request is truncated after its control data (RFC 9292 s3.8); our encoder writes the empty parts.
  assert.equal(hex(bhttp), A.request_bhttp + "000000");
  const { request } = await encapsulateRequest(config, h(A.request_bhttp), { ephemeral: ephemeral(A) });
  assert.equal(hex(request), A.encapsulated_request);
  assert.equal(request.length, A.actual_lengths.encapsulated_request);
});

test("RFC 9458 A: response keys, response encapsulation and opening", async () => {
  const config = configOf(A);
  const { request, response } = await encapsulateRequest(config, h(A.request_bhttp), { ephemeral: ephemeral(A) });
  const ctx = response._context;
  const keys = await responseKeys(ctx, LABEL_RESPONSE, h(A.ephemeral_public_key_enc), h(A.response_nonce), response.suite);
  assert.equal(hex(keys.secret), A.exported_secret);
  assert.equal(hex(keys.key), A.aead_key);
  assert.equal(hex(keys.nonce), A.aead_nonce);
  // PRK = HMAC(salt, secret) (RFC 5869), checked with WebCrypto: the key and nonce above came from WebCrypto HKDF.
  const hmacKey = await crypto.subtle.importKey("raw", h(A.salt), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  assert.equal(hex(new Uint8Array(await crypto.subtle.sign("HMAC", hmacKey, keys.secret))), A.prk);

  // The gateway's side (its own HPKE recipient context) opens the request and seals the vector's response.
  const gw = await gatewayContext(config, h(A.server_private_key), request, INFO_REQUEST);
  assert.equal(hex(new Uint8Array(await gw.context.open(gw.rest))), A.request_bhttp);
  const encResponse = await encapsulateResponse(gw.context, gw.enc, gw.suite, h(A.response_bhttp), h(A.response_nonce));
  assert.equal(hex(encResponse), A.encapsulated_response);

  const pt = await response.open(h(A.encapsulated_response));
  assert.equal(hex(pt), A.response_bhttp);
  assert.equal(decode(pt).status, 200);
  await assert.rejects(response.open(h(A.encapsulated_response)), /one response only/);
});

test("RFC 9458 A: a tampered response does not open", async () => {
  const config = configOf(A);
  for (const i of [0, 16, 20, 34]) {
    const { response } = await encapsulateRequest(config, h(A.request_bhttp), { ephemeral: ephemeral(A) });
    const bad = h(A.encapsulated_response);
    bad[i] ^= 1;
    await assert.rejects(response.open(bad), OHTTPError);
  }
  const { response } = await encapsulateRequest(config, h(A.request_bhttp), { ephemeral: ephemeral(A) });
  await assert.rejects(response.open(h(A.encapsulated_response).subarray(0, 31)), /too short/);
});

test("fresh HPKE context per request: two encapsulations differ", async () => {
  const config = configOf(A);
  const a = await encapsulateRequest(config, h(A.request_bhttp));
  const b = await encapsulateRequest(config, h(A.request_bhttp));
  assert.notEqual(hex(a.request.subarray(7, 39)), hex(b.request.subarray(7, 39)));
});

test("chunked draft-08 A: the request's three chunks encode byte for byte", async () => {
  const config = configOf(C);
  const creq = await ChunkedClientRequest.create(config, { ephemeral: ephemeral(C) });
  const [c1, c2, c3] = C.request_plaintext_chunks.map(h);
  const p = C.encapsulated_request_parts;
  const w1 = await creq.encodeChunk(c1);
  assert.equal(hex(w1), p.header + p.enc + p.chunk1_with_len);
  assert.equal(hex(await creq.encodeChunk(c2)), p.chunk2_with_len);
  assert.equal(hex(await creq.encodeChunk(c3, { final: true })), p.final_chunk_with_zero_len);
  await assert.rejects(creq.encodeChunk(c1), /after the final chunk/);
});

test("chunked draft-08 A: the gateway side reproduces the response; the client opens it in every slicing", async () => {
  const config = configOf(C);
  const wire = h(C.encapsulated_request);
  const gw = await gatewayContext(config, h(C.server_private_key), wire, INFO_CHUNKED_REQUEST);
  const enc = await ChunkedResponseEncoder.create(gw.context, gw.enc, gw.suite, h(C.response_nonce));
  const [r1, r2, r3] = C.response_plaintext_chunks.map(h);
  const out = hex(await enc.encodeChunk(r1)) + hex(await enc.encodeChunk(r2)) + hex(await enc.encodeChunk(r3, { final: true }));
  assert.equal(out, C.encapsulated_response);

  const whole = h(C.encapsulated_response);
  for (const step of [whole.length, 1, 2, 7, 17]) {
    const creq = await ChunkedClientRequest.create(config, { ephemeral: ephemeral(C) });
    assert.equal(hex(await creq.encodeChunk(h(C.request_bhttp), { final: true })).slice(0, 78), C.encapsulated_request.slice(0, 78));
    const dec = creq.response();
    const chunks = [];
    for (let i = 0; i < whole.length; i += step) {
      dec.receive(whole.subarray(i, i + step));
      for (let ev = await dec.next(); ev !== NEED_DATA; ev = await dec.next()) chunks.push(ev);
    }
    assert.equal(dec.complete, false); // the final chunk runs to the end of input: not open before end()
    dec.end();
    for (let ev = await dec.next(); ev !== NEED_DATA; ev = await dec.next()) chunks.push(ev);
    assert.equal(dec.complete, true);
    assert.deepEqual(chunks.map((c) => [hex(c.data), c.final]), [["01", false], ["40c8", false], ["", true]]);
  }
});

test("chunked: truncation, reordering and tampering are errors, never a silent end", async () => {
  const config = configOf(C);
  const whole = h(C.encapsulated_response);
  const p = C.encapsulated_response_parts;
  const cases = {
    "cut before final": whole.subarray(0, whole.length - p.final_chunk_with_zero_len.length / 2),
    "cut inside final": whole.subarray(0, whole.length - 3),
    "cut in nonce": whole.subarray(0, 10),
    "chunks swapped": h(p.nonce + p.chunk2_with_len + p.chunk1_with_len + p.final_chunk_with_zero_len),
    "final dropped, chunk2 sent as final": h(p.nonce + p.chunk1_with_len + "00" + p.chunk2_with_len.slice(2)),
    "bit flip": (() => { const b = whole.slice(); b[40] ^= 0x10; return b; })(),
  };
  for (const [name, bytes] of Object.entries(cases)) {
    const creq = await ChunkedClientRequest.create(config, { ephemeral: ephemeral(C) });
    await creq.encodeChunk(h(C.request_bhttp), { final: true });
    const dec = creq.response();
    dec.receive(bytes);
    dec.end();
    await assert.rejects(async () => {
      for (let ev = await dec.next(); ev !== NEED_DATA; ev = await dec.next()) { /* drain */ }
    }, OHTTPError, name);
    await assert.rejects(dec.next(), /already failed/, name);
  }
});

test("chunked: large requests split at 16384 bytes, and the gateway side reads them back", async () => {
  const config = configOf(C);
  const creq = await ChunkedClientRequest.create(config);
  const body = new Uint8Array(40000).map((_, i) => i % 251);
  const wire = await creq.encodeChunk(body, { final: true });
  const gw = await gatewayContext(config, h(C.server_private_key), wire, INFO_CHUNKED_REQUEST);
  const pieces = [];
  let rest = gw.rest;
  const { decodeVarint } = await import("../bhttp.js");
  for (;;) {
    const [len, start] = decodeVarint(rest, 0);
    if (len === 0) {
      pieces.push(new Uint8Array(await gw.context.open(rest.subarray(start), new TextEncoder().encode("final"))));
      break;
    }
    pieces.push(new Uint8Array(await gw.context.open(rest.subarray(start, start + len))));
    rest = rest.subarray(start + len);
  }
  assert.deepEqual(pieces.map((x) => x.length), [16384, 16384, 7232]);
  assert.deepEqual(Array.from(pieces.flatMap((x) => Array.from(x))), Array.from(body));
});
