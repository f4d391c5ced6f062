// tokens.js: the page's Privacy Pass wallet. Challenges parsed from the RFC 9577 header vectors (grease skipped, not
// thrown on), and a wallet filled from an in-memory privacypass-ts issuer over an injected fetch: its tokens verify,
// each is handed out once, and a key the relay names but the wallet has not seen makes it refetch the directory.
import assert from "node:assert/strict";
import test from "node:test";

import { TOKEN_TYPES, publicVerif } from "../vendor/privacypass.js";
import { TokenWallet, authorization, b64urlDecode, b64urlEncode, decodeToken, parseChallenges } from "../tokens.js";
import { h, hex, loadVector } from "./helpers.js";

test("parseChallenges reproduces the RFC 9577 header vectors and skips grease", () => {
  const vectors = loadVector("rfc9577_auth_vectors.json").http_headers;
  assert.ok(vectors.length >= 3);
  for (const v of vectors) {
    const wanted = [];
    for (let i = 0; `token-type-${i}` in v; i++) {
      if (Number(v[`token-type-${i}`]) === 2) wanted.push([v[`token-challenge-${i}`], v[`token-key-${i}`]]);
    }
    const got = parseChallenges(v.www_authenticate).map((c) => [hex(c.raw), hex(c.tokenKey)]);
    assert.deepEqual(got, wanted, v.www_authenticate.slice(0, 80));
  }
  assert.deepEqual(parseChallenges('Basic realm="x"'), []);
  assert.deepEqual(parseChallenges('PrivateToken challenge="!!!", token-key="AAAA"'), []);
});

test("base64url with padding, as RFC 9577 writes tokens", () => {
  const bytes = h("0002ff");
  assert.equal(b64urlEncode(bytes), "AAL_");
  assert.deepEqual(b64urlDecode("AAL_"), bytes);
  assert.match(authorization(h("00")), /^PrivateToken token="AA=="$/);
});

async function issuerFetch(name) {
  const mode = publicVerif.BlindRSAMode.PSS;
  const keys = await publicVerif.Issuer.generateKey(mode, { modulusLength: 2048, publicExponent: Uint8Array.from([1, 0, 1]) });
  const issuer = new publicVerif.Issuer(mode, name, keys.privateKey, keys.publicKey);
  const spki = await publicVerif.getPublicKeyBytes(keys.publicKey);
  const calls = [];
  const fetchImpl = async (url, init = {}) => {
    calls.push([init.method || "GET", url]);
    if (url.endsWith("/.well-known/private-token-issuer-directory")) {
      const doc = { "issuer-request-uri": `https://${name}/token-request`,
        "token-keys": [{ "token-type": 2, "token-key": b64urlEncode(spki) }] };
      return new Response(JSON.stringify(doc), { headers: { "Cache-Control": "max-age=300" } });
    }
    assert.equal(url, "/issuer/token-request");
    assert.equal(init.headers["Content-Type"], "application/private-token-request");
    const request = publicVerif.TokenRequest.deserialize(TOKEN_TYPES.BLIND_RSA, new Uint8Array(init.body));
    return new Response((await issuer.issue(request)).serialize());
  };
  return { fetchImpl, calls, publicKey: keys.publicKey, spki };
}

test("a wallet fills from the issuer, hands out verified tokens once each, and refetches for an unseen key", async () => {
  const name = "issuer.example:8090";
  const { fetchImpl, calls, publicKey, spki } = await issuerFetch(name);
  const wallet = new TokenWallet({ issuer: "/issuer", issuerName: name, batch: 3, lowWater: 0, fetch: fetchImpl });
  await wallet.prefetch();
  assert.equal(wallet.size, 3);
  const origin = new publicVerif.Origin(publicVerif.BlindRSAMode.PSS);
  const headers = new Set();
  for (let i = 0; i < 3; i++) {
    const held = await wallet.take();
    headers.add(held.header);
    const token = decodeToken(b64urlDecode(/token="([^"]+)"/.exec(held.header)[1]));
    assert.ok(await origin.verify(token, publicKey));
    assert.deepEqual(token.authInput.tokenKeyId, held.keyId);
  }
  assert.equal(headers.size, 3);
  assert.equal(calls.filter(([m]) => m === "GET").length, 1); // the directory, cached by its max-age
  // The relay's challenge names the key the wallet holds: nothing to refetch; another key: refetch.
  const challenge = b64urlEncode(wallet.challenge.serialize());
  assert.ok(wallet.learn(`PrivateToken challenge="${challenge}", token-key="${b64urlEncode(spki)}"`));
  const held = await wallet.take();
  assert.equal(calls.filter(([m]) => m === "GET").length, 1);
  assert.ok(wallet.learn(`PrivateToken challenge="${challenge}", token-key="${b64urlEncode(h("00ff"))}"`));
  wallet.dropKey(held.keyId); // what the client does after a 401: the pool is empty, the next take refills
  assert.equal(wallet.size, 0);
  await wallet.take();
  assert.equal(calls.filter(([m]) => m === "GET").length, 2);
  assert.ok(!wallet.learn('PrivateToken challenge="AAIAD2lzc3Vlci5vdGhlcjo5MAAAAA==", token-key="AAAA"'));
});

test("an issuer that refuses gives a TokenError with its status, not a hang", async () => {
  const wallet = new TokenWallet({ issuer: "/issuer", issuerName: "i.example", fetch: async (url) =>
    url.endsWith("directory")
      ? new Response(JSON.stringify({ "issuer-request-uri": "/t", "token-keys": [] }))
      : new Response("", { status: 401 }) });
  await assert.rejects(wallet.take(), { name: "TokenError", message: /no usable key/ });
});
