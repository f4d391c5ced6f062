// The page's evidence check: simulated bundles made here exactly as enclave/attestation/simulated.py makes them,
// then every tampering the check must catch, and real platforms refused with what was and was not verified.
import assert from "node:assert/strict";
import { test } from "node:test";

import { canonicalConfig, reportData, verifyBundle } from "../attestation.js";
import { concat } from "../bhttp.js";
import { MEASUREMENT, b64, h, hex, loadVector, simulatedBundle, utf8 } from "./helpers.js";

const KEYS = h(loadVector("rfc9458_appendix_a.json").ohttp_keys_media);

const statuses = (r) => Object.fromEntries(r.checks.map((c) => [c.name, c.status]));

test("REPORT_DATA = SHA-512(label || SHA-256(K) || SHA-256(gpu) || SHA-256(config) || 32 zero bytes), as bundle.py computes it", async () => {
  const rd = await reportData(KEYS);
  const manual = new Uint8Array(await crypto.subtle.digest("SHA-512", concat(
    utf8("veil/report/v2\0"),
    new Uint8Array(await crypto.subtle.digest("SHA-256", KEYS)),
    new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(0))),
    new Uint8Array(await crypto.subtle.digest("SHA-256", utf8("{}"))),
    new Uint8Array(32),
  )));
  assert.equal(hex(rd), hex(manual));
  assert.equal(rd.length, 64);
  // Known answer, computed with Python's enclave.attestation.bundle.report_data over the same keys body.
  assert.equal(hex(rd), "c252eb5ede661eab8d15cde6b6dc36aa8c74d5e1b3c239e84798a07c43f72362" +
    "f52b1015333faa66997fbec21451b34fc5c4f68b3e434d3a8689f43290b5d97b");
});

test("the configuration is canonicalized and bound exactly as bundle.py's canonical_config and report_data do", async () => {
  const config = { key_origin: "generated", pad_to: 256, require_date: true, model: null, cache_salt: "tenant",
    z_name: "\u00e9\"\\\n\u2028\u{1F600}" };
  // Python: json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
  assert.equal(new TextDecoder().decode(canonicalConfig(config)),
    '{"cache_salt":"tenant","key_origin":"generated","model":null,"pad_to":256,"require_date":true,' +
    '"z_name":"\u00e9\\"\\\\\\n\u2028\u{1F600}"}');
  const nonce = Uint8Array.from({ length: 32 }, (_, i) => i);
  assert.equal(hex(await reportData(KEYS, utf8("gpu"), nonce, config)),
    "c173d4a963c6b587080bfa4eb32d57a28e3c74cbdda59c9336780019f59f3125" +
    "1c1a6f6dc0d115ba0873625ab6beca42b131190e58b0b2a0cadd362bc2b351c9");
  for (const bad of [{ pad_to: 1.5 }, { nested: {} }, { list: [] }, { Upper: 1 }, { big: 2 ** 53 }]) {
    assert.throws(() => canonicalConfig(bad), /configuration/, JSON.stringify(bad));
  }
});

test("a configuration changed after the fact fails REPORT_DATA; the bound one is listed", async () => {
  const config = { key_origin: "generated", pad_to: 256 };
  const ok = await verifyBundle(await simulatedBundle({ keys: KEYS, config }), KEYS, { allowSimulated: true });
  assert.equal(ok.accepted, true, ok.refusal);
  assert.deepEqual(ok.config, config);
  const shown = ok.checks.find((c) => c.name === "Gateway configuration");
  assert.equal(shown.status, "pass");
  assert.match(shown.detail, /key_origin="generated", pad_to=256/);
  const altered = await simulatedBundle({ keys: KEYS, config, bundleConfig: { ...config, pad_to: 0 } });
  const bad = await verifyBundle(altered, KEYS, { allowSimulated: true });
  assert.equal(bad.accepted, false);
  assert.match(bad.refusal, /REPORT_DATA/);
  const file = await verifyBundle(await simulatedBundle({ keys: KEYS, config: { key_origin: "file" } }), KEYS,
    { allowSimulated: true });
  assert.equal(file.checks.find((c) => c.name === "Gateway configuration").status, "warn");
});

test("a version 1 bundle (no bound configuration) is refused, saying why", async () => {
  const v1 = utf8(JSON.stringify({ version: 1, platform: "simulated", key_config: b64(KEYS), report: "", gpu_evidence: "",
    nonce: "", certs: {}, issued_at: 1 }));
  const r = await verifyBundle(v1, KEYS, { allowSimulated: true });
  assert.equal(r.accepted, false);
  assert.match(r.checks[0].detail, /version 1 binds no gateway configuration/);
});

test("a good simulated bundle is accepted only when simulated evidence is allowed", async () => {
  const bundle = await simulatedBundle({ keys: KEYS });
  const ok = await verifyBundle(bundle, KEYS, { allowSimulated: true });
  assert.equal(ok.accepted, true, ok.refusal);
  assert.equal(ok.simulated, true);
  assert.equal(ok.platform, "simulated");
  assert.equal(ok.measurement, hex(MEASUREMENT));
  assert.equal(ok.issuedAt, 1767225600);
  assert.deepEqual(statuses(ok), {
    "Evidence bundle": "pass", "Key binding": "pass", "Key configurations": "warn", REPORT_DATA: "pass",
    "Gateway configuration": "pass", "Report signature": "warn",
    TEE: "fail", Freshness: "not-verified",
  });
  // The RFC 9458 example list has one X25519 key: named, and a warning that it is not post-quantum.
  assert.match(ok.checks.find((c) => c.name === "Key configurations").detail,
    /^bound, in the order published: key 1: DHKEM\(X25519, HKDF-SHA256\)\. None is post-quantum/);
  assert.deepEqual(ok.keyConfigs, [{ keyId: 1, kem: 0x0020, kemName: "DHKEM(X25519, HKDF-SHA256)", postQuantum: false }]);
  assert.equal(ok.postQuantum, false);
  const no = await verifyBundle(bundle, KEYS, { allowSimulated: false });
  assert.equal(no.accepted, false);
  assert.match(no.refusal, /SIMULATED/);
});

test("GPU evidence is bound into REPORT_DATA (and said to be unverified)", async () => {
  const gpu = utf8("gpu evidence bytes");
  const ok = await verifyBundle(await simulatedBundle({ keys: KEYS, gpu }), KEYS, { allowSimulated: true });
  assert.equal(ok.accepted, true, ok.refusal);
  assert.equal(statuses(ok)["GPU evidence"], "not-verified");
  const swapped = await simulatedBundle({ keys: KEYS, gpu, bundleGpu: utf8("other gpu evidence") });
  const bad = await verifyBundle(swapped, KEYS, { allowSimulated: true });
  assert.equal(bad.accepted, false);
  assert.match(bad.refusal, /REPORT_DATA/);
});

test("every tampering is refused", async () => {
  const other = KEYS.slice();
  other[10] ^= 1;
  const cases = [
    ["keys served differ from the bundle's", await simulatedBundle({ keys: KEYS }), other, /different key configuration/],
    ["bundle names other keys", await simulatedBundle({ keys: KEYS, bundleKeys: other }), KEYS, /different key configuration/],
    ["report binds other keys", await simulatedBundle({ keys: other, bundleKeys: KEYS }), KEYS, /REPORT_DATA/],
    ["REPORT_DATA flipped", await simulatedBundle({ keys: KEYS, tamper: "report_data" }), KEYS, /REPORT_DATA/],
    ["signature flipped", await simulatedBundle({ keys: KEYS, tamper: "signature" }), KEYS, /signature/],
    ["measurement changed after signing", await simulatedBundle({ keys: KEYS, tamper: "measurement_after_signing" }), KEYS, /signature/],
    ["report cut short", await simulatedBundle({ keys: KEYS, tamper: "short" }), KEYS, /malformed/],
    ["not JSON", utf8("{"), KEYS, /malformed/],
    ["wrong version", utf8(JSON.stringify({ version: 3, platform: "simulated" })), KEYS, /malformed/],
    ["no config", utf8(JSON.stringify({ version: 2, platform: "simulated" })), KEYS, /malformed/],
  ];
  for (const [name, bundle, keys, why] of cases) {
    const r = await verifyBundle(bundle, keys, { allowSimulated: true });
    assert.equal(r.accepted, false, name);
    assert.match(r.refusal, why, name);
    assert.ok(r.checks.some((c) => c.status === "fail"), name);
  }
});

test("real platforms are refused, saying what was and was not verified", async () => {
  for (const platform of ["sev-snp", "tdx"]) {
    const report = new Uint8Array(1184);
    report.set(await reportData(KEYS), 0x50);
    const bundle = utf8(JSON.stringify({ version: 2, platform, key_config: b64(KEYS), config: {}, report: b64(report),
      gpu_evidence: b64(utf8("gpu")), nonce: "", certs: {}, issued_at: 1 }));
    const r = await verifyBundle(bundle, KEYS, { allowSimulated: true });
    assert.equal(r.accepted, false);
    assert.equal(r.simulated, false);
    assert.match(r.refusal, /cannot verify/);
    const s = statuses(r);
    assert.equal(s["Key binding"], "pass");
    assert.equal(s["Certificate chain"], "not-verified");
    assert.equal(s["Report signature"], "not-verified");
    assert.equal(s["GPU evidence"], "not-verified");
    // The REPORT_DATA here was built without the GPU evidence: it must not match what binds keys AND GPU evidence.
    assert.equal(s.REPORT_DATA, platform === "sev-snp" ? "fail" : "not-verified");
  }
});

// A key list as `veil gateway` publishes it by default: X-Wing (key 0) first, X25519 (key 1) second.
const XWING = loadVector("ohttp_xwing_derived.json");
const X25519_CONFIG = loadVector("rfc9458_appendix_a.json").ohttp_keys_media;
const BOTH = h(XWING.ohttp_keys_media.slice(0, 4) + "00" + XWING.ohttp_keys_media.slice(6) + X25519_CONFIG);

test("the bound key list's KEMs are named; X-Wing passes, and require_post_quantum refuses a list without it", async () => {
  const both = await verifyBundle(await simulatedBundle({ keys: BOTH }), BOTH, { allowSimulated: true, requirePostQuantum: true });
  assert.equal(both.accepted, true, both.refusal);
  assert.equal(both.postQuantum, true);
  assert.deepEqual(both.keyConfigs.map((c) => [c.keyId, c.kemName, c.postQuantum]),
    [[0, "X-Wing (ML-KEM-768 + X25519)", true], [1, "DHKEM(X25519, HKDF-SHA256)", false]]);
  const named = both.checks.find((c) => c.name === "Key configurations");
  assert.equal(named.status, "pass");
  assert.equal(named.detail, "bound, in the order published: key 0: X-Wing (ML-KEM-768 + X25519), post-quantum; " +
    "key 1: DHKEM(X25519, HKDF-SHA256)");

  const only = await verifyBundle(await simulatedBundle({ keys: KEYS }), KEYS, { allowSimulated: true, requirePostQuantum: true });
  assert.equal(only.accepted, false);
  assert.match(only.refusal, /no post-quantum key configuration.*require_post_quantum/);
  assert.equal(statuses(only)["Key configurations"], "fail");
  assert.equal(statuses(only)["REPORT_DATA"], undefined, "refused before anything else was looked at");
});
