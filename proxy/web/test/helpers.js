// Shared by the unit tests: where the protocol vectors live, hex, and a gateway-side HPKE context for cross-checks.
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { CipherSuite } from "../vendor/hpke.js";
import { AEADS, KDFS, KEMS } from "../ohttp.js";
import { concat } from "../bhttp.js";
import { reportData } from "../attestation.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** $VEIL_SHARED_DATA or <repo>/../shared/data, like tests/helpers.py; a missing folder fails, never skips. */
export function vectorsDir() {
  return join(process.env.VEIL_SHARED_DATA || resolve(repo, "..", "shared", "data"), "vectors");
}

export function loadVector(name) {
  const path = join(vectorsDir(), name);
  return JSON.parse(readFileSync(path, "utf8"));
}

export function h(hex) {
  if (hex.length % 2) throw new Error("odd hex");
  return Uint8Array.from(hex.match(/../g) || [], (b) => parseInt(b, 16));
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const utf8 = (s) => new TextEncoder().encode(s);

/** The gateway's side: open hdr || enc || ct with the server's private key; returns {context, enc, suite, pt?}. */
export async function gatewayContext(config, serverPrivateKey, encRequest, label) {
  const hdr = encRequest.subarray(0, 7);
  const suite = { kdf: (hdr[3] << 8) | hdr[4], aead: (hdr[5] << 8) | hdr[6] };
  const cs = new CipherSuite({ kem: KEMS[config.kem].make(), kdf: KDFS[suite.kdf].make(), aead: AEADS[suite.aead].make() });
  const nenc = KEMS[config.kem].nenc; // 1120 for X-Wing (its public key is 1216), the public key's length for DHKEMs
  const enc = encRequest.slice(7, 7 + nenc);
  const recipientKey = await cs.kem.importKey("raw", serverPrivateKey.slice().buffer, false);
  const context = await cs.createRecipientContext({
    recipientKey, enc: enc.buffer, info: concat(utf8(label), Uint8Array.of(0), hdr),
  });
  return { context, enc, suite, rest: encRequest.subarray(7 + nenc) };
}

export const MEASUREMENT = new Uint8Array(48).fill(0xab);

export const b64 = (bytes) => Buffer.from(bytes).toString("base64");

/** A simulated evidence bundle laid out as enclave/attestation/simulated.py lays it out (tamper: for tests). */
export async function simulatedBundle({ keys, bundleKeys = keys, tamper, gpu = new Uint8Array(0), bundleGpu = gpu,
  config = { key_origin: "generated", pad_to: 0, require_date: false, model: null }, bundleConfig = config } = {}) {
  const pair = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const issued = new Uint8Array(8);
  new DataView(issued.buffer).setBigUint64(0, 1767225600000n);
  let body = concat(utf8("VEIL-SIMULATED-V1"), await reportData(keys, gpu, new Uint8Array(0), config), MEASUREMENT, issued, pub);
  if (tamper === "report_data") body[20] ^= 1;
  let sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, pair.privateKey, body));
  if (tamper === "signature") sig[3] ^= 1;
  if (tamper === "measurement_after_signing") body = concat(body.subarray(0, 90), Uint8Array.of(body[90] ^ 1), body.subarray(91));
  const report = tamper === "short" ? concat(body, sig).subarray(0, 200) : concat(body, sig);
  const obj = { version: 2, platform: "simulated", key_config: b64(bundleKeys), config: bundleConfig, report: b64(report),
    gpu_evidence: b64(bundleGpu), nonce: "", certs: {}, issued_at: 1767225600.0 };
  return utf8(JSON.stringify(obj));
}

