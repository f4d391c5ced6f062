// X-Wing (KEM 0x647A, ML-KEM-768 + X25519) in the browser client, byte for byte against the shared vectors: the
// X-Wing draft's KEM vectors, and the derived RFC 9458 exchange re-run with X-Wing in both directions (the client
// encapsulates the vector's request from its 64-byte eseed through @hpke's `ekm`; the gateway side, @hpke's
// recipient context with the 32-byte seed as private key, opens the vector's own request and seals its response).
import assert from "node:assert/strict";
import { test } from "node:test";

import { concat, decode, encodeRequest } from "../bhttp.js";
import { ChunkedClientRequest, ChunkedResponseEncoder, INFO_CHUNKED_REQUEST, NEED_DATA } from "../chunked.js";
import {
  INFO_REQUEST, KEMS, KEM_XWING, LABEL_RESPONSE, OHTTPError, chooseConfig, decodeKeyList, encapsulateRequest,
  encapsulateResponse, responseKeys, suiteName,
} from "../ohttp.js";
import { gatewayContext, h, hex, loadVector } from "./helpers.js";

const K = loadVector("xwing_kem_vectors.json");
const X = loadVector("ohttp_xwing_derived.json");
const A = loadVector("rfc9458_appendix_a.json");

const seed = (v) => ({ seed: h(v.ephemeral_seed) });

function xwingConfig() {
  const configs = decodeKeyList(h(X.ohttp_keys_media));
  assert.equal(configs.length, 1);
  return configs[0];
}

test("X-Wing KEM vectors: key pair from the seed, derandomized encapsulation and decapsulation", async () => {
  assert.equal(K.kem.hpke_kem_id, KEM_XWING);
  assert.ok(K.vectors.length >= 3);
  for (const [i, v] of K.vectors.entries()) {
    const kem = KEMS[KEM_XWING].make();
    assert.equal(kem.id, KEM_XWING);
    const pair = await kem.generateKeyPairDerand(h(v.seed));
    const pk = new Uint8Array(await kem.serializePublicKey(pair.publicKey));
    assert.equal(hex(pk), v.pk, `pk ${i}`);
    assert.equal(pk.length, K.kem.Npk);
    assert.equal(hex(new Uint8Array(await kem.serializePrivateKey(pair.privateKey))), v.sk, `sk ${i}`);
    const { sharedSecret, enc } = await kem.encap({ recipientPublicKey: pair.publicKey, ekm: h(v.eseed).buffer });
    assert.equal(hex(new Uint8Array(enc)), v.ct, `ct ${i}`);
    assert.equal(new Uint8Array(enc).length, K.kem.Nenc);
    assert.equal(hex(new Uint8Array(sharedSecret)), v.ss, `ss ${i}`);
    const recipientKey = await kem.importKey("raw", h(v.sk).buffer, false);
    assert.equal(hex(new Uint8Array(await kem.decap({ enc: h(v.ct).buffer, recipientKey }))), v.ss, `decap ${i}`);
  }
});

test("X-Wing OHTTP (derived): the 1227-byte key list decodes to key 1, KEM 0x647a, a 1216-byte key", () => {
  const config = xwingConfig();
  assert.equal(h(X.ohttp_keys_media).length, X.sizes.ohttp_keys_media);
  assert.equal(config.keyId, X.key_id);
  assert.equal(config.kem, X.suite.kem_id);
  assert.equal(hex(config.publicKey), X.server_public_key);
  assert.equal(config.publicKey.length, X.sizes.Npk);
  assert.deepEqual(config.suites, [{ kdf: 1, aead: 1 }]);
  assert.equal(suiteName(config.kem, config.suites[0]), "X-Wing (ML-KEM-768 + X25519) / HKDF-SHA256 / AES-128-GCM");
});

test("X-Wing OHTTP (derived): the client encapsulates the request byte for byte (1120-byte enc)", async () => {
  const config = xwingConfig();
  const kem = KEMS[KEM_XWING].make();
  const { sharedSecret } = await kem.encap({ recipientPublicKey: await kem.deserializePublicKey(config.publicKey),
    ekm: h(X.ephemeral_seed).buffer });
  assert.equal(hex(new Uint8Array(sharedSecret)), X.shared_secret);
  assert.equal(hex(encodeRequest({ method: "GET", scheme: "https", authority: "example.com", path: "/" })),
    X.request_bhttp + "000000"); // as in RFC 9458 A: the vector's request is truncated after its control data
  const { request } = await encapsulateRequest(config, h(X.request_bhttp), { ephemeral: seed(X) });
  assert.equal(request.length, X.sizes.encapsulated_request);
  assert.equal(hex(request.subarray(0, 7)), X.request_header);
  assert.equal(hex(request.subarray(7, 7 + 1120)), X.enc);
  assert.equal(hex(request.subarray(7 + 1120)), X.request_ciphertext);
  assert.equal(hex(request), X.encapsulated_request);
});

test("X-Wing OHTTP (derived): response keys, the gateway side opens the vector's request and seals its response, " +
  "the client opens it", async () => {
  const config = xwingConfig();
  const { response } = await encapsulateRequest(config, h(X.request_bhttp), { ephemeral: seed(X) });
  const keys = await responseKeys(response._context, LABEL_RESPONSE, h(X.enc), h(X.response_nonce), response.suite);
  assert.equal(hex(keys.secret), X.exported_secret);
  assert.equal(hex(keys.key), X.aead_key);
  assert.equal(hex(keys.nonce), X.aead_nonce);
  assert.equal(hex(concat(h(X.enc), h(X.response_nonce))), X.salt); // 1136 bytes: enc || response nonce
  const hmacKey = await crypto.subtle.importKey("raw", h(X.salt), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  assert.equal(hex(new Uint8Array(await crypto.subtle.sign("HMAC", hmacKey, keys.secret))), X.prk);

  // Decapsulation direction: the vector's request bytes, not ours, opened with the 32-byte X-Wing seed.
  const gw = await gatewayContext(config, h(X.server_private_key), h(X.encapsulated_request), INFO_REQUEST);
  assert.equal(hex(gw.enc), X.enc);
  assert.equal(hex(new Uint8Array(await gw.context.open(gw.rest))), X.request_bhttp);
  assert.equal(hex(new Uint8Array(await gw.context.export(new TextEncoder().encode(X.export_label), 16))),
    X.exported_secret);
  const encResponse = await encapsulateResponse(gw.context, gw.enc, gw.suite, h(X.response_bhttp), h(X.response_nonce));
  assert.equal(hex(encResponse), X.encapsulated_response);
  assert.equal(encResponse.length, X.sizes.encapsulated_response);

  const pt = await response.open(h(X.encapsulated_response));
  assert.equal(hex(pt), X.response_bhttp);
  assert.equal(decode(pt).status, 200);
});

test("X-Wing OHTTP: a tampered enc or ciphertext does not open (ML-KEM's implicit rejection fails at the AEAD)", async () => {
  const config = xwingConfig();
  for (const i of [7, 7 + 500, 7 + 1087, 7 + 1100, 7 + 1120 + 3]) {
    const bad = h(X.encapsulated_request);
    bad[i] ^= 1;
    const gw = await gatewayContext(config, h(X.server_private_key), bad, INFO_REQUEST);
    await assert.rejects(gw.context.open(gw.rest), undefined, `byte ${i}`);
  }
  const { response } = await encapsulateRequest(config, h(X.request_bhttp), { ephemeral: seed(X) });
  const bad = h(X.encapsulated_response);
  bad[20] ^= 1;
  await assert.rejects(response.open(bad), OHTTPError);
});

test("X-Wing OHTTP: fresh randomness per request, and the gateway side opens it", async () => {
  const config = xwingConfig();
  const a = await encapsulateRequest(config, h(X.request_bhttp));
  const b = await encapsulateRequest(config, h(X.request_bhttp));
  assert.equal(a.request.length, 1168);
  assert.notEqual(hex(a.request.subarray(7, 7 + 1120)), hex(b.request.subarray(7, 7 + 1120)));
  assert.notEqual(hex(a.request.subarray(7 + 1088, 7 + 1120)), hex(b.request.subarray(7 + 1088, 7 + 1120)));
  for (const { request, response } of [a, b]) {
    const gw = await gatewayContext(config, h(X.server_private_key), request, INFO_REQUEST);
    assert.equal(hex(new Uint8Array(await gw.context.open(gw.rest))), X.request_bhttp);
    const res = await encapsulateResponse(gw.context, gw.enc, gw.suite, h(X.response_bhttp));
    assert.equal(hex(await response.open(res)), X.response_bhttp);
  }
  // A DHKEM's fixed ephemeral key pair is no X-Wing seed, and the other way round.
  await assert.rejects(encapsulateRequest(decodeKeyList(h(A.ohttp_keys_media))[0], h(A.request_bhttp), { ephemeral: seed(X) }),
    /X-Wing only/);
});

test("X-Wing chunked OHTTP: a streamed exchange round-trips through the gateway side", async () => {
  const config = xwingConfig();
  const creq = await ChunkedClientRequest.create(config);
  const wire = await creq.encodeChunk(h(X.request_bhttp), { final: true });
  assert.equal(hex(wire.subarray(0, 7)), X.request_header);
  const gw = await gatewayContext(config, h(X.server_private_key), wire, INFO_CHUNKED_REQUEST);
  assert.equal(gw.enc.length, 1120);
  assert.equal(gw.rest[0], 0); // one final chunk, length 0
  assert.equal(hex(new Uint8Array(await gw.context.open(gw.rest.subarray(1), new TextEncoder().encode("final")))),
    X.request_bhttp);
  const enc = await ChunkedResponseEncoder.create(gw.context, gw.enc, gw.suite);
  const out = [await enc.encodeChunk(h("01")), await enc.encodeChunk(h("40c8"), { final: true })];
  const dec = creq.response();
  for (const piece of out) dec.receive(piece);
  dec.end();
  const chunks = [];
  for (let ev = await dec.next(); ev !== NEED_DATA; ev = await dec.next()) chunks.push([hex(ev.data), ev.final]);
  assert.deepEqual(chunks, [["01", false], ["40c8", true]]);
  assert.equal(dec.complete, true);
});

test("the client prefers X-Wing wherever it is listed, else the first config; require_post_quantum refuses", () => {
  const x25519 = decodeKeyList(h(A.ohttp_keys_media))[0];
  const xwing = xwingConfig();
  assert.equal(chooseConfig([xwing, x25519]), xwing);
  assert.equal(chooseConfig([x25519, xwing]), xwing);
  assert.equal(chooseConfig([x25519]), x25519);
  assert.equal(chooseConfig([xwing], { requirePostQuantum: true }), xwing);
  assert.throws(() => chooseConfig([x25519], { requirePostQuantum: true }), /no post-quantum key configuration/);
  assert.throws(() => chooseConfig([]), /no key configuration/);
  // Both in one application/ohttp-keys body, X-Wing first as `veil gateway` publishes them.
  const both = decodeKeyList(h(X.ohttp_keys_media + A.ohttp_keys_media));
  assert.deepEqual(both.map((c) => [c.keyId, c.kem]), [[1, 0x647a], [1, 0x0020]]);
});
