// The page's check of a gateway's evidence bundle before anything is sent (fail closed).
//
// Mirrors proxy/verify.py and enclave/attestation/{bundle,simulated}.py with WebCrypto only:
//   REPORT_DATA = SHA-512("veil/report/v2\0" || SHA-256(K) || SHA-256(gpu_evidence) || SHA-256(C)
//                         || nonce_or_32_zero_bytes)
// where K is the exact application/ohttp-keys body fetched through the relay and C the canonical JSON of the
// bundle's "config" (the gateway's security-relevant settings: keys sorted, no whitespace, UTF-8; values only
// strings, safe integers, booleans, null; bundle.py's canonical_config). The result lists every check with what it
// established, so the trust panel can say exactly what was and was not verified.
//
// Simulated report layout: magic "VEIL-SIMULATED-V1" (17) || report_data (64) || measurement (48)
//   || issued_at (8, big-endian ms) || ed25519 public key (32) || signature (64) over everything before it.
//
// The bound key list's configurations are named, KEM by KEM (as the Python verdict's key_configs): a list with an
// X-Wing (post-quantum) configuration passes, one without is a warning, or a refusal with requirePostQuantum.
//
// Real platforms (sev-snp, tdx) are refused: this page cannot yet verify their signatures, certificate chains
// (AMD ARK/ASK/VCEK, Intel PCK/QE), TCB or GPU evidence (`veil proxy` does, in Python, against a measurement
// policy), and a key binding inside an unverified report proves nothing.

import { KEMS, decodeKeyList } from "./ohttp.js";

const MAGIC = "VEIL-SIMULATED-V1";
const REPORT_LABEL = "veil/report/v2\0";
const BUNDLE_VERSION = 2;
const CONFIG_NAME = /^[a-z][a-z0-9_]{0,63}$/;
const SIM_BODY_LEN = MAGIC.length + 64 + 48 + 8 + 32;
const SIM_REPORT_LEN = SIM_BODY_LEN + 64;

/** One check: status is "pass", "fail", "warn" (holds, but weak) or "not-verified". */
function check(name, status, detail) {
  return { name, status, detail };
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function fromHex(s) {
  if (typeof s !== "string" || s.length % 2 || /[^0-9a-fA-F]/.test(s)) throw new Error("bad hex");
  return Uint8Array.from(s.match(/../g) || [], (b) => parseInt(b, 16));
}

function fromBase64(s) {
  if (typeof s !== "string" || s.length % 4 || /[^A-Za-z0-9+/=]/.test(s)) throw new Error("bad base64");
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

async function sha(name, ...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const all = new Uint8Array(n);
  let pos = 0;
  for (const p of parts) {
    all.set(p, pos);
    pos += p.length;
  }
  return new Uint8Array(await crypto.subtle.digest(name, all));
}

/**
 * The bytes REPORT_DATA binds for a gateway configuration: JSON with sorted ASCII names and no whitespace, which
 * for strings, safe integers, booleans and null is exactly what Python's json.dumps(sort_keys, compact) writes.
 * Throws on anything else (floats, nested values, odd names), as bundle.py does.
 */
export function canonicalConfig(config = {}) {
  if (!config || typeof config !== "object" || Array.isArray(config)) throw new Error("config must be an object");
  const names = Object.keys(config).sort();
  for (const name of names) {
    const v = config[name];
    if (!CONFIG_NAME.test(name)) throw new Error(`configuration name ${JSON.stringify(name)} is not lower-case ASCII`);
    const ok = v === null || typeof v === "boolean" || Number.isSafeInteger(v) ||
      (typeof v === "string" && !/\p{Cs}/u.test(v));
    if (!ok) throw new Error(`configuration value ${name}=${JSON.stringify(v)} is not a string, integer, boolean or null`);
  }
  return new TextEncoder().encode("{" + names.map((n) => `${JSON.stringify(n)}:${JSON.stringify(config[n])}`).join(",") + "}");
}

/** The 64 bytes a TEE report must carry to bind keysBody (and GPU evidence, the gateway's configuration, a nonce). */
export async function reportData(keysBody, gpuEvidence = new Uint8Array(0), nonce = new Uint8Array(0), config = {}) {
  if (nonce.length !== 0 && nonce.length !== 32) throw new Error("client nonce must be 32 bytes");
  return sha("SHA-512", new TextEncoder().encode(REPORT_LABEL), await sha("SHA-256", keysBody),
    await sha("SHA-256", gpuEvidence), await sha("SHA-256", canonicalConfig(config)),
    nonce.length ? nonce : new Uint8Array(32));
}

/** Parse bundle JSON bytes strictly (version 2); throws on anything malformed. Version 1 bound no configuration. */
export function parseBundle(bytes) {
  const obj = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  if (obj && obj.version === 1) throw new Error("bundle version 1 binds no gateway configuration (upgrade the gateway)");
  if (!obj || typeof obj !== "object" || obj.version !== BUNDLE_VERSION) throw new Error(`unsupported bundle version ${obj && obj.version}`);
  if (typeof obj.platform !== "string") throw new Error("bundle has no platform");
  canonicalConfig(obj.config);
  return {
    platform: obj.platform,
    config: obj.config,
    keyConfig: fromBase64(obj.key_config),
    report: fromBase64(obj.report),
    gpuEvidence: fromBase64(obj.gpu_evidence || ""),
    nonce: fromHex(obj.nonce || ""),
    issuedAt: Number(obj.issued_at || 0),
  };
}

/** What the bound configuration says, one "name=value" each; a key the operator supplied is a warning. */
function configCheck(config) {
  const shown = Object.keys(config).sort().map((n) => `${n}=${JSON.stringify(config[n])}`).join(", ") || "none";
  if (config.key_origin === "file") {
    return check("Gateway configuration", "warn",
      `bound by REPORT_DATA: ${shown}. The OHTTP key came from the operator's file, so the operator knows it`);
  }
  return check("Gateway configuration", "pass", `bound by REPORT_DATA: ${shown}`);
}

/**
 * The KEMs of the bound key list, in the order published: {check, configs: [{keyId, kem, kemName, postQuantum}],
 * postQuantum}. Configurations with a KEM this page does not know are skipped (and not counted).
 */
function kemCheck(keysBody, requirePostQuantum) {
  let configs;
  try {
    configs = decodeKeyList(keysBody).map((c) => ({ keyId: c.keyId, kem: c.kem, kemName: KEMS[c.kem].name,
      postQuantum: KEMS[c.kem].postQuantum }));
  } catch (err) {
    return { check: check("Key configurations", "fail", `the bound key list is malformed: ${err.message}`), configs: [],
      postQuantum: false, refusal: "the gateway's key configuration list is malformed" };
  }
  const named = configs.map((c) => `key ${c.keyId}: ${c.kemName}${c.postQuantum ? ", post-quantum" : ""}`).join("; ") ||
    "none this page supports";
  const postQuantum = configs.some((c) => c.postQuantum);
  let status = "pass";
  let detail = `bound, in the order published: ${named}`;
  if (!postQuantum) {
    status = requirePostQuantum ? "fail" : "warn";
    detail += requirePostQuantum
      ? ". None is post-quantum (X-Wing, KEM 0x647a), and this page requires one"
      : ". None is post-quantum: traffic recorded today could be decrypted by a future quantum computer";
  }
  const refusal = status === "fail"
    ? "the gateway offers no post-quantum key configuration (X-Wing), and this page requires one (require_post_quantum)"
    : null;
  return { check: check("Key configurations", status, detail), configs, postQuantum, refusal };
}

async function ed25519Verify(publicKey, signature, message) {
  let key;
  try {
    key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
  } catch (err) {
    return { supported: false, error: String(err && err.message || err) };
  }
  return { supported: true, valid: await crypto.subtle.verify({ name: "Ed25519" }, key, signature, message) };
}

/**
 * Verify an evidence bundle for the keys body. Returns
 *   {accepted, refusal, platform, simulated, measurement (hex), issuedAt (s), config, keyConfigs, postQuantum,
 *    checks: [{name, status, detail}]}
 * accepted is true only if nothing failed and the platform is acceptable: simulated evidence needs
 * allowSimulated (the serving proxy was started with --insecure-allow-simulated); real platforms are refused;
 * requirePostQuantum refuses a key list without an X-Wing configuration.
 */
export async function verifyBundle(bundleBytes, keysBody, { allowSimulated = false, requirePostQuantum = false } = {}) {
  const checks = [];
  const result = { accepted: false, refusal: null, platform: "unknown", simulated: false, measurement: null, issuedAt: null,
    config: null, keyConfigs: null, postQuantum: false, checks };
  const refuse = (why) => {
    result.refusal = why;
    return result;
  };
  let bundle;
  try {
    bundle = parseBundle(bundleBytes);
  } catch (err) {
    checks.push(check("Evidence bundle", "fail", `malformed: ${err.message}`));
    return refuse("the gateway's evidence bundle is malformed");
  }
  checks.push(check("Evidence bundle", "pass", `format v${BUNDLE_VERSION}, platform "${bundle.platform}"`));
  result.platform = bundle.platform;
  result.config = bundle.config;
  result.issuedAt = bundle.issuedAt || null;

  // The evidence must be about exactly the keys we fetched (and every client gets the relay's cached copy).
  if (!equalBytes(bundle.keyConfig, keysBody)) {
    checks.push(check("Key binding", "fail", "the bundle names a different key configuration than the relay served"));
    return refuse("the evidence binds a different key configuration");
  }
  checks.push(check("Key binding", "pass", `bundle.key_config equals the ${keysBody.length}-byte keys body, byte for byte`));
  const kems = kemCheck(keysBody, requirePostQuantum);
  checks.push(kems.check);
  result.keyConfigs = kems.configs;
  result.postQuantum = kems.postQuantum;
  if (kems.refusal) return refuse(kems.refusal);
  const expected = await reportData(keysBody, bundle.gpuEvidence, bundle.nonce, bundle.config);

  if (bundle.platform === "simulated") {
    result.simulated = true;
    const r = bundle.report;
    const magic = new TextEncoder().encode(MAGIC);
    if (r.length !== SIM_REPORT_LEN || !equalBytes(r.subarray(0, magic.length), magic)) {
      checks.push(check("Report format", "fail", "simulated report has the wrong size or magic"));
      return refuse("the simulated report is malformed");
    }
    const body = r.subarray(0, SIM_BODY_LEN);
    const rd = body.subarray(magic.length, magic.length + 64);
    if (!equalBytes(rd, expected)) {
      checks.push(check("REPORT_DATA", "fail",
        "does not equal SHA-512 over these keys and this configuration: the report is about other keys or settings"));
      return refuse("REPORT_DATA does not bind these keys and this configuration");
    }
    checks.push(check("REPORT_DATA", "pass",
      "recomputed with SHA-256/SHA-512 over the keys body and the configuration; equals the report's"));
    checks.push(configCheck(bundle.config));
    const sig = await ed25519Verify(body.subarray(SIM_BODY_LEN - 32), r.subarray(SIM_BODY_LEN), body);
    if (!sig.supported) {
      checks.push(check("Report signature", "not-verified",
        `this browser has no WebCrypto Ed25519 (${sig.error}); the simulated report's signature was NOT checked`));
    } else if (!sig.valid) {
      checks.push(check("Report signature", "fail", "Ed25519 signature over the simulated report is invalid"));
      return refuse("the simulated report's signature is invalid");
    } else {
      checks.push(check("Report signature", "warn",
        "Ed25519 valid, but the key is inside the report itself: it shows integrity, not who made it"));
    }
    result.measurement = toHex(body.subarray(magic.length + 64, magic.length + 112));
    const ms = body.subarray(magic.length + 112, magic.length + 120).reduce((acc, b) => acc * 256 + b, 0);
    result.issuedAt = ms / 1000;
    if (bundle.gpuEvidence.length) {
      checks.push(check("GPU evidence", "not-verified", "bound into REPORT_DATA; its NVIDIA signature chain is not checked here"));
    }
    checks.push(check("TEE", "fail", "SIMULATED: no hardware protects this gateway; its operator can read everything"));
    checks.push(check("Freshness", "not-verified", "cached evidence (the relay does not pass client nonces)"));
    if (!allowSimulated) {
      return refuse("the gateway presents SIMULATED attestation; this page was not started with " +
        "--insecure-allow-simulated, so it refuses to send anything");
    }
    result.accepted = true;
    return result;
  }

  // Real hardware: what this page could check, and what it cannot yet.
  // SEV-SNP: REPORT_DATA sits at 0x50 of the 1184-byte report (enclave/attestation/snp/abi.py). TDX quotes differ
  // between versions, so they are not parsed here at all.
  if (bundle.platform === "sev-snp" && bundle.report.length >= 0x90) {
    const ok = equalBytes(bundle.report.subarray(0x50, 0x90), expected);
    checks.push(check("REPORT_DATA", ok ? "warn" : "fail",
      ok ? "matches these keys, but the report around it is unverified" : "does not bind these keys"));
  } else {
    checks.push(check("REPORT_DATA", "not-verified", `no parser for platform "${bundle.platform}"`));
  }
  checks.push(check("Report signature", "not-verified", "not checked: this page has no verifier for this platform yet"));
  checks.push(check("Certificate chain", "not-verified", "AMD ARK/ASK/VCEK or Intel PCK chain: not checked"));
  checks.push(check("TCB and measurement policy", "not-verified", "not checked"));
  if (bundle.gpuEvidence.length) checks.push(check("GPU evidence", "not-verified", "bound into REPORT_DATA only; not checked"));
  return refuse(`this page cannot verify "${bundle.platform}" evidence yet (signature, certificate chain, TCB); ` +
    "it refuses to send rather than trust it silently. `veil proxy --policy FILE` verifies this platform.");
}
