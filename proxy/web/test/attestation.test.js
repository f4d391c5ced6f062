// The page's evidence check: simulated bundles made here exactly as enclave/attestation/simulated.py makes them,
// then every tampering the check must catch, and real platforms refused with what was and was not verified.
import assert from "node:assert/strict";
import { test } from "node:test";

import { reportData, verifyBundle } from "../attestation.js";
import { concat } from "../bhttp.js";
import { MEASUREMENT, b64, h, hex, loadVector, simulatedBundle, utf8 } from "./helpers.js";

const KEYS = h(loadVector("rfc9458_appendix_a.json").ohttp_keys_media);

const statuses = (r) => Object.fromEntries(r.checks.map((c) => [c.name, c.status]));

test("REPORT_DATA = SHA-512(label || SHA-256(K) || SHA-256(gpu) || 32 zero bytes), as bundle.py computes it", async () => {
  const rd = await reportData(KEYS);
  const manual = new Uint8Array(await crypto.subtle.digest("SHA-512", concat(
    utf8("veil/report/v1\0"),
    new Uint8Array(await crypto.subtle.digest("SHA-256", KEYS)),
    new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(0))),
    new Uint8Array(32),
  )));
  assert.equal(hex(rd), hex(manual));
  assert.equal(rd.length, 64);
  // Known answer, computed with Python's enclave.attestation.bundle.report_data over the same keys body.
  assert.equal(hex(rd), "14f87234d51c2096b8c6f1c384f68e7fbdc6d740cd5b075d36a8272b3290162e" +
    "7c3bfedc149aa22a69f1bf67c3be198a54072c4fc920fba6fefe9b7b9508f64c");
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
    "Evidence bundle": "pass", "Key binding": "pass", REPORT_DATA: "pass", "Report signature": "warn",
    TEE: "fail", Freshness: "not-verified",
  });
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
    ["wrong version", utf8(JSON.stringify({ version: 2, platform: "simulated" })), KEYS, /malformed/],
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
    const bundle = utf8(JSON.stringify({ version: 1, platform, key_config: b64(KEYS), report: b64(report),
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
