// VeilClient against a gateway written here with @hpke's recipient side (injected as `fetch`): what goes into
// the encapsulation, streaming as pieces arrive, the 422 refresh-and-retry-once, refusals, truncation, key expiry.
import assert from "node:assert/strict";
import { test } from "node:test";

import { concat, decode, decodeVarint, encodeResponse, encodeVarint } from "../bhttp.js";
import { ChunkedResponseEncoder, INFO_CHUNKED_REQUEST } from "../chunked.js";
import { VeilClient, VeilError } from "../client.js";
import { INFO_REQUEST, KEMS, encapsulateResponse } from "../ohttp.js";
import { gatewayContext, simulatedBundle, utf8 } from "./helpers.js";

const RELAY = "https://relay.example/gw";
const FINAL = utf8("final");

/** A key configuration for kem (0x0020 or 0x647a) with a fresh key pair: {keyId, kem, priv, config (bytes)}. */
async function makeConfig(keyId, kem) {
  const k = KEMS[kem].make();
  const pair = await k.generateKeyPair();
  const pub = new Uint8Array(await k.serializePublicKey(pair.publicKey));
  const priv = new Uint8Array(await k.serializePrivateKey(pair.privateKey));
  const config = concat(Uint8Array.of(keyId, kem >> 8, kem & 0xff), pub, Uint8Array.of(0, 8, 0, 1, 0, 1, 0, 1, 0, 3));
  return { keyId, kem, priv, config };
}

/**
 * The gateway's key list. Default: an unknown KEM (0x0030, Cloudflare's PQ one) first, which the client must skip,
 * not fail on, then X25519 under keyId. kems: the list's KEMs in order, under keyId, keyId + 1, ...
 */
async function makeKey(keyId, kems = null) {
  const made = [];
  let body = new Uint8Array(0);
  if (kems === null) {
    const unknown = concat(Uint8Array.of(9, 0x00, 0x30), new Uint8Array(40), Uint8Array.of(0, 4, 0, 1, 0, 1));
    body = concat(Uint8Array.of(0, unknown.length), unknown);
    kems = [0x0020];
  }
  for (const [i, kem] of kems.entries()) made.push(await makeConfig(keyId + i, kem));
  for (const m of made) body = concat(body, Uint8Array.of(m.config.length >> 8, m.config.length & 0xff), m.config);
  return { keyId, keys: Object.fromEntries(made.map((m) => [m.keyId, m])), body };
}

/** A fake relay + gateway. `plan` decides each POST's answer; everything seen is recorded. */
class FakeGateway {
  constructor() {
    this.seen = [];
    this.calls = [];
    this.wires = []; // every encapsulated request accepted, as sent
    this.maxAge = 60;
    this.streamPlan = null; // (encoder) => ReadableStream; default: one SSE event per chunk
  }

  async init(keyId = 1, kems = null) {
    this.kems = kems;
    this.key = await makeKey(keyId, kems);
    this.bundle = await simulatedBundle({ keys: this.key.body });
    return this;
  }

  async rotate(keyId) {
    this.old = this.key;
    await this.init(keyId, this.kems);
  }

  fetch = async (url, init = {}) => {
    this.calls.push({ url, init });
    const method = init.method || "GET";
    if (method === "GET" && url === RELAY) {
      return new Response(this.key.body, { headers: { "Content-Type": "application/ohttp-keys", "Cache-Control": `max-age=${this.maxAge}` } });
    }
    if (method === "GET" && url === `${RELAY}/attestation`) return new Response(this.bundle);
    assert.equal(method, "POST");
    const wire = new Uint8Array(init.body);
    const key = this.key.keys[wire[0]];
    if (!key || ((wire[1] << 8) | wire[2]) !== key.kem) {
      return new Response('{"type":"https://iana.org/assignments/http-problem-types#ohttp-key"}', { status: 422 });
    }
    this.wires.push(wire);
    const chunked = init.headers["Content-Type"] === "message/ohttp-chunked-req";
    const gw = await gatewayContext(key, key.priv, wire, chunked ? INFO_CHUNKED_REQUEST : INFO_REQUEST);
    if (!chunked) {
      const inner = decode(new Uint8Array(await gw.context.open(gw.rest)));
      this.seen.push(inner);
      const res = encodeResponse({ status: 200, headers: [["content-type", "application/json"]], content: utf8('{"data":[{"id":"m1"}]}') });
      return new Response(await encapsulateResponse(gw.context, gw.enc, gw.suite, res), { headers: { "Content-Type": "message/ohttp-res" } });
    }
    const [len, start] = decodeVarint(gw.rest, 0);
    assert.equal(len, 0, "the client sends one final chunk");
    const inner = decode(new Uint8Array(await gw.context.open(gw.rest.subarray(start), FINAL)));
    this.seen.push(inner);
    const enc = await ChunkedResponseEncoder.create(gw.context, gw.enc, gw.suite);
    const body = this.streamPlan ? this.streamPlan(enc) : sseStream(enc, ["a", "b", "c"]);
    return new Response(body, { headers: { "Content-Type": "message/ohttp-chunked-res" } });
  };
}

function bhttpChunk(text) {
  const b = utf8(text);
  return concat(encodeVarint(b.length), b);
}

const HEAD = encodeResponse({ status: 200, headers: [["content-type", "text/event-stream"]] }, { mode: "indeterminate-length" });
const HEAD_ONLY = HEAD.subarray(0, HEAD.length - 2); // 03 | status | fields | 00

/** A response stream whose chunks are released one by one through the returned gate. */
function gatedStream(enc, events, { withFinal = true } = {}) {
  const gate = [];
  let release;
  const stream = new ReadableStream({
    async start(controller) {
      controller.enqueue(await enc.encodeChunk(HEAD_ONLY));
      for (const e of events) {
        await new Promise((r) => { release = r; gate.push(r); });
        controller.enqueue(await enc.encodeChunk(bhttpChunk(`data: ${e}\n\n`)));
      }
      if (withFinal) controller.enqueue(await enc.encodeChunk(Uint8Array.of(0, 0), { final: true }));
      controller.close();
    },
  });
  stream.release = () => { const r = release; release = null; if (r) r(); };
  stream.waitGate = async () => { while (!release) await new Promise((r) => setTimeout(r, 1)); };
  return stream;
}

function sseStream(enc, events) {
  return new ReadableStream({
    async start(controller) {
      controller.enqueue(await enc.encodeChunk(HEAD_ONLY));
      for (const e of events) controller.enqueue(await enc.encodeChunk(bhttpChunk(`data: ${e}\n\n`)));
      controller.enqueue(await enc.encodeChunk(Uint8Array.of(0, 0), { final: true }));
      controller.close();
    },
  });
}

test("a request is verified, encapsulated with a date inside, and opened; nothing identifying is added", async () => {
  const gw = await new FakeGateway().init();
  const client = new VeilClient({ relay: RELAY + "/", allowSimulated: true, fetch: gw.fetch });
  const res = await client.request("GET", "/v1/models", { headers: [["Accept", "application/json"]] });
  assert.equal(res.status, 200);
  assert.deepEqual(JSON.parse(new TextDecoder().decode(res.body)), { data: [{ id: "m1" }] });
  const inner = gw.seen[0];
  assert.equal(inner.method, "GET");
  assert.equal(inner.path, "/v1/models");
  assert.equal(inner.authority, "");
  const names = inner.headers.map(([n]) => n);
  assert.deepEqual(names, ["accept", "date"]);
  const date = Date.parse(inner.headers[1][1]);
  assert.ok(Math.abs(date - Date.now()) < 5000, inner.headers[1][1]);
  assert.equal(client.trust.keyId, 1); // the unknown-KEM config before it was skipped
  assert.equal(client.trust.maxAge, 60);
  for (const { init } of gw.calls) {
    assert.equal(init.credentials, "omit");
    assert.equal(init.cache, "no-store");
    assert.equal(init.referrerPolicy, "no-referrer");
  }
  assert.deepEqual(gw.calls.map((c) => c.init.method || "GET"), ["GET", "GET", "POST"]);
});

test("a stream yields each event as soon as its chunk arrives, and completes only with the final chunk", async () => {
  const gw = await new FakeGateway().init();
  let stream;
  gw.streamPlan = (enc) => (stream = gatedStream(enc, ["one", "two", "three"]));
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: gw.fetch });
  const body = JSON.stringify({ model: "m1", stream: true, messages: [{ role: "user", content: "hi" }] });
  const res = await client.request("POST", "/v1/chat/completions", {
    headers: [["content-type", "application/json"]], body, stream: true,
  });
  assert.equal(res.status, 200);
  assert.equal(new TextDecoder().decode(gw.seen[0].content), body);
  const it = res.pieces[Symbol.asyncIterator]();
  for (const word of ["one", "two", "three"]) {
    const pending = it.next();
    await stream.waitGate();
    let settled = false;
    pending.then(() => { settled = true; });
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(settled, false, "nothing to yield before the chunk is released");
    stream.release();
    const { value, done } = await pending;
    assert.equal(done, false);
    assert.equal(new TextDecoder().decode(value), `data: ${word}\n\n`);
  }
  assert.deepEqual(await it.next(), { value: undefined, done: true });
});

test("a stream cut before its final chunk is an error, not a quiet end", async () => {
  const gw = await new FakeGateway().init();
  gw.streamPlan = (enc) => {
    const s = gatedStream(enc, ["x"], { withFinal: false });
    s.waitGate().then(() => s.release());
    return s;
  };
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: gw.fetch });
  const res = await client.request("POST", "/v1/chat/completions", { body: "{}", stream: true });
  const got = [];
  await assert.rejects(async () => {
    for await (const p of res.pieces) got.push(new TextDecoder().decode(p));
  }, (err) => err instanceof VeilError && /truncated/.test(err.message));
  assert.deepEqual(got, ["data: x\n\n"]);
});

test("422 ohttp-key: keys are fetched and verified again, and the request is retried once", async () => {
  const gw = await new FakeGateway().init(1);
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: gw.fetch });
  await client.refresh();
  await gw.rotate(2); // the client still holds key 1
  const res = await client.request("GET", "/v1/models");
  assert.equal(res.status, 200);
  assert.equal(client.trust.keyId, 2);
  const kinds = gw.calls.map((c) => `${c.init.method || "GET"} ${c.url.replace(RELAY, "")}`);
  assert.deepEqual(kinds, ["GET ", "GET /attestation", "POST ", "GET ", "GET /attestation", "POST "]);

  // A gateway that rejects even fresh keys: one retry, then a clear error.
  const stuck = await new FakeGateway().init(1);
  const c2 = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: stuck.fetch });
  await c2.refresh();
  stuck.key = { ...stuck.key, keys: {} }; // every POST now gets 422
  await assert.rejects(c2.request("GET", "/v1/models"), /twice/);
  assert.equal(stuck.calls.filter((c) => c.init.method === "POST").length, 2);
});

test("nothing is sent when attestation is refused", async () => {
  const gw = await new FakeGateway().init();
  const client = new VeilClient({ relay: RELAY, allowSimulated: false, fetch: gw.fetch });
  await assert.rejects(client.request("GET", "/v1/models"), (err) => err.code === "veil_attestation_refused");
  assert.equal(client.trust.accepted, false);
  assert.match(client.trust.error, /SIMULATED/);
  assert.equal(gw.calls.filter((c) => c.init.method === "POST").length, 0);

  const swapped = await new FakeGateway().init();
  swapped.bundle = (await new FakeGateway().init()).bundle; // evidence for somebody else's keys
  const c2 = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: swapped.fetch });
  await assert.rejects(c2.request("GET", "/v1/models"), /different key configuration/);
  assert.equal(swapped.calls.filter((c) => c.init.method === "POST").length, 0);
});

test("keys are fetched again once their Cache-Control max-age has passed", async () => {
  const gw = await new FakeGateway().init();
  let now = 1_000_000;
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: gw.fetch, now: () => now });
  await client.request("GET", "/v1/models");
  now += 59_000;
  await client.request("GET", "/v1/models");
  assert.equal(gw.calls.filter((c) => c.url === RELAY && !c.init.method).length, 1);
  now += 2_000;
  await client.request("GET", "/v1/models");
  assert.equal(gw.calls.filter((c) => c.url === RELAY && !c.init.method).length, 2);
});

test("an unreachable relay and a refused POST are explained", async () => {
  const down = new VeilClient({ relay: RELAY, fetch: async () => { throw new TypeError("Failed to fetch"); } });
  await assert.rejects(down.refresh(), /cannot reach the relay.*--cors-origin/);
  const gw = await new FakeGateway().init();
  const inner = gw.fetch;
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: (url, init) =>
    (init.method === "POST" ? Promise.resolve(new Response("busy", { status: 503 })) : inner(url, init)) });
  await assert.rejects(client.request("GET", "/v1/models"), (err) => err.status === 503 && /before decryption/.test(err.message));
});

test("requests carry only the allowed headers and are zero-padded to the bucket veil proxy uses", async () => {
  const gw = await new FakeGateway().init();
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: gw.fetch });
  const sizes = [];
  const realFetch = gw.fetch;
  gw.fetch = async (url, init = {}) => {
    if (init.method === "POST") sizes.push(new Uint8Array(init.body).length);
    return realFetch(url, init);
  };
  client._fetchImpl = gw.fetch;
  const hostile = [["Content-Type", "application/json"], ["Accept", "application/json"], ["X-Real-IP", "10.1.2.3"],
    ["Referer", "https://me.example/"], ["Accept-Language", "fr"], ["Sec-CH-UA-Platform", "Linux"],
    ["X-Stainless-OS", "Linux"], ["Idempotency-Key", "k1"], ["User-Agent", "me/1.0"]];
  for (const prompt of ["x", "a much longer prompt ".repeat(20)]) {
    await client.request("POST", "/v1/chat/completions", { headers: hostile, body: JSON.stringify({ prompt }) });
  }
  for (const inner of gw.seen) {
    assert.deepEqual(inner.headers.map(([n]) => n), ["content-type", "accept", "date"]);
  }
  assert.equal(sizes.length, 2);
  assert.equal(sizes[0], sizes[1], "two prompts of different lengths look alike on the wire");
});

test("X-Wing is used whenever the gateway lists it (first or second); X25519 only when it does not", async () => {
  for (const [kems, used, usedId] of [[[0x647a, 0x0020], 0x647a, 0], [[0x0020, 0x647a], 0x647a, 1], [[0x0020], 0x0020, 0]]) {
    const gw = await new FakeGateway().init(0, kems);
    const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: gw.fetch });
    assert.equal((await client.request("GET", "/v1/models")).status, 200);
    await client.request("POST", "/v1/chat/completions", { body: "{}", stream: true });
    assert.equal(gw.wires.length, 2);
    for (const wire of gw.wires) {
      assert.equal(wire[0], usedId, `key id with ${kems}`);
      assert.equal((wire[1] << 8) | wire[2], used);
    }
    const t = client.trust;
    assert.equal(t.keyId, usedId);
    assert.equal(t.config.kem, used);
    assert.equal(t.postQuantum, used === 0x647a);
    assert.equal(t.kemName, used === 0x647a ? "X-Wing (ML-KEM-768 + X25519)" : "DHKEM(X25519, HKDF-SHA256)");
    assert.equal(t.verdict.checks.find((c) => c.name === "Key configurations").status, used === 0x647a ? "pass" : "warn");
    if (used === 0x647a) {
      // hdr (7) || enc (1120) || ...: the same padded request is 1088 bytes larger than with X25519 (enc 32).
      assert.equal(gw.wires[0].length, 7 + 1120 + 1024 + 16);
    }
  }
});

test("require_post_quantum: an X25519-only gateway is refused before anything is sent; X-Wing is accepted", async () => {
  const old = await new FakeGateway().init(1, [0x0020]);
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, requirePostQuantum: true, fetch: old.fetch });
  await assert.rejects(client.request("GET", "/v1/models"),
    (err) => err.code === "veil_attestation_refused" && /no post-quantum key configuration/.test(err.message));
  assert.equal(client.trust.accepted, false);
  assert.equal(client.trust.kemName, "DHKEM(X25519, HKDF-SHA256)");
  assert.equal(client.trust.verdict.checks.find((c) => c.name === "Key configurations").status, "fail");
  assert.equal(old.calls.filter((c) => c.init.method === "POST").length, 0);

  const pq = await new FakeGateway().init(0, [0x647a, 0x0020]);
  const c2 = new VeilClient({ relay: RELAY, allowSimulated: true, requirePostQuantum: true, fetch: pq.fetch });
  assert.equal((await c2.request("GET", "/v1/models")).status, 200);
  assert.equal(pq.wires[0][0], 0);
});

test("422 after a rotation of both keys: the client re-fetches and stays on X-Wing", async () => {
  const gw = await new FakeGateway().init(0, [0x647a, 0x0020]);
  const client = new VeilClient({ relay: RELAY, allowSimulated: true, fetch: gw.fetch });
  await client.refresh();
  await gw.rotate(2); // X-Wing is key 2 now, X25519 key 3
  assert.equal((await client.request("GET", "/v1/models")).status, 200);
  assert.equal(client.trust.keyId, 2);
  assert.deepEqual(gw.wires.map((w) => [w[0], (w[1] << 8) | w[2]]), [[2, 0x647a]]);
});
