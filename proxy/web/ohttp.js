// Oblivious HTTP (RFC 9458) for the browser: key configurations, request encapsulation, response opening.
//
// Wire-compatible with ohttp/keys.py and ohttp/encapsulation.py. All cryptography is @hpke (bundled in
// vendor/hpke.js from the pinned npm packages) and WebCrypto (HKDF for the response keys); nothing here is a
// hand-written primitive. Every request gets a fresh HPKE sender context; a response context opens one response.
//
//   hdr      = key_id(1) || kem_id(2) || kdf_id(2) || aead_id(2)
//   request  = hdr || enc || Seal(info = "message/bhttp request" || 0x00 || hdr, aad = "", bhttp)
//   response = nonce(max(Nn, Nk)) || AEAD.Seal(key, aead_nonce, "", bhttp)    keys: responseKeys() below
//
// KEMs: X-Wing (0x647A, ML-KEM-768 + X25519: post-quantum; enc is 1120 bytes, the public key 1216) is preferred
// whenever a gateway offers it (chooseConfig, as ohttp.keys.choose_config); the DHKEMs remain for gateways that
// publish no X-Wing key. Nothing else in OHTTP depends on the KEM but the length of enc.

import {
  Aes128Gcm, Aes256Gcm, Chacha20Poly1305, CipherSuite, DhkemP256HkdfSha256, DhkemX25519HkdfSha256,
  HkdfSha256, HkdfSha384, HkdfSha512, XWing,
} from "./vendor/hpke.js";
import { concat } from "./bhttp.js";

export const MEDIA_TYPE_KEYS = "application/ohttp-keys";
export const MEDIA_TYPE_REQUEST = "message/ohttp-req";
export const MEDIA_TYPE_RESPONSE = "message/ohttp-res";
export const INFO_REQUEST = "message/bhttp request";
export const LABEL_RESPONSE = "message/bhttp response";
export const TAG_LEN = 16;

/** Malformed or unauthentic OHTTP from the peer (or keys this client cannot use). */
export class OHTTPError extends Error {
  constructor(message) {
    super(message);
    this.name = "OHTTPError";
  }
}

// What this client can use. Unknown KEMs are skipped by the list's length prefix; unknown KDFs/AEADs are dropped.
// npk: public key length in a key config; nenc: length of enc in a request; postQuantum: resists a quantum adversary.
export const KEMS = Object.freeze({
  0x0010: {
    name: "DHKEM(P-256, HKDF-SHA256)", npk: 65, nenc: 65, postQuantum: false, make: () => new DhkemP256HkdfSha256(),
  },
  0x0020: {
    name: "DHKEM(X25519, HKDF-SHA256)", npk: 32, nenc: 32, postQuantum: false, make: () => new DhkemX25519HkdfSha256(),
  },
  0x647a: { name: "X-Wing (ML-KEM-768 + X25519)", npk: 1216, nenc: 1120, postQuantum: true, make: () => new XWing() },
});
export const KEM_XWING = 0x647a;
export const KDFS = Object.freeze({
  0x0001: { name: "HKDF-SHA256", hash: "SHA-256", make: () => new HkdfSha256() },
  0x0002: { name: "HKDF-SHA384", hash: "SHA-384", make: () => new HkdfSha384() },
  0x0003: { name: "HKDF-SHA512", hash: "SHA-512", make: () => new HkdfSha512() },
});
export const AEADS = Object.freeze({
  0x0001: { name: "AES-128-GCM", nk: 16, nn: 12, make: () => new Aes128Gcm() },
  0x0002: { name: "AES-256-GCM", nk: 32, nn: 12, make: () => new Aes256Gcm() },
  0x0003: { name: "ChaCha20-Poly1305", nk: 32, nn: 12, make: () => new Chacha20Poly1305() },
});
// The client's preference (as ohttp.encapsulation.choose_suite): AES-128-GCM, then ChaCha20, then AES-256-GCM.
const AEAD_PREFERENCE = [0x0001, 0x0003, 0x0002];

const utf8 = (s) => new TextEncoder().encode(s);
const u16 = (n) => Uint8Array.of(n >> 8, n & 0xff);
const readU16 = (b, i) => (b[i] << 8) | b[i + 1];

/** max(Nn, Nk): the response nonce length (16 for AES-128-GCM, 32 otherwise). */
export function entropyLen(aeadId) {
  const a = AEADS[aeadId];
  return Math.max(a.nn, a.nk);
}

// ---------------------------------------------------------------------------------------------------------------
// Key configurations (RFC 9458 s3)

/**
 * Decode application/ohttp-keys: [{keyId, kem, publicKey, suites: [{kdf, aead}]}]. Configs with a KEM this client
 * cannot use, or no usable suite, are skipped; any encoding error discards the whole list (RFC 9458 s3.2).
 */
export function decodeKeyList(body) {
  const data = body instanceof Uint8Array ? body : new Uint8Array(body);
  if (!data.length) throw new OHTTPError("key config list is empty");
  const out = [];
  let pos = 0;
  while (pos < data.length) {
    if (pos + 2 > data.length) throw new OHTTPError(`key config list truncated: length prefix at offset ${pos}`);
    const length = readU16(data, pos);
    const start = pos + 2;
    const end = start + length;
    if (end > data.length) throw new OHTTPError(`key config list truncated: config of ${length} bytes at ${pos}`);
    const config = decodeKeyConfig(data.subarray(start, end), pos);
    if (config !== null) out.push(config);
    pos = end;
  }
  return out;
}

function decodeKeyConfig(c, offset) {
  if (c.length < 3) throw new OHTTPError(`key config at offset ${offset} truncated`);
  const kem = readU16(c, 1);
  if (!KEMS[kem]) return null; // unknown KEM: its length prefix lets us skip it
  const pkEnd = 3 + KEMS[kem].npk;
  if (pkEnd + 2 > c.length) throw new OHTTPError(`key config at offset ${offset} truncated`);
  const algsLen = readU16(c, pkEnd);
  if (algsLen < 4 || algsLen % 4) throw new OHTTPError(`symmetric algorithms length ${algsLen} is invalid`);
  if (pkEnd + 2 + algsLen !== c.length) {
    throw new OHTTPError(`key config at offset ${offset} is ${pkEnd + 2 + algsLen} bytes, its prefix says ${c.length}`);
  }
  const suites = [];
  for (let i = pkEnd + 2; i < c.length; i += 4) {
    const kdf = readU16(c, i);
    const aead = readU16(c, i + 2);
    if (KDFS[kdf] && AEADS[aead]) suites.push({ kdf, aead });
  }
  if (!suites.length) return null;
  return { keyId: c[0], kem, publicKey: c.slice(3, pkEnd), suites };
}

/**
 * The configuration this client encapsulates to (as ohttp.keys.choose_config): the first post-quantum one (X-Wing)
 * if the list has any, else the first. Throws OHTTPError if there is none, or none post-quantum while
 * requirePostQuantum is set.
 */
export function chooseConfig(configs, { requirePostQuantum = false } = {}) {
  const pq = configs.find((c) => KEMS[c.kem].postQuantum);
  if (pq) return pq;
  if (requirePostQuantum) {
    throw new OHTTPError("the gateway offers no post-quantum key configuration (X-Wing, KEM 0x647a), and this page " +
      "requires one (require_post_quantum)");
  }
  if (!configs.length) throw new OHTTPError("the gateway offers no key configuration this page supports");
  return configs[0];
}

/** The suite this client uses with config: AES-128-GCM when offered, then ChaCha20-Poly1305; SHA-256 first. */
export function chooseSuite(config) {
  const rank = (s) => AEAD_PREFERENCE.indexOf(s.aead) * 0x10000 + s.kdf;
  return [...config.suites].sort((a, b) => rank(a) - rank(b))[0];
}

/** A readable name of a suite, e.g. "DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM". */
export function suiteName(kem, suite) {
  return `${KEMS[kem].name} / ${KDFS[suite.kdf].name} / ${AEADS[suite.aead].name}`;
}

// ---------------------------------------------------------------------------------------------------------------
// HPKE set-up and the response key schedule

/** hdr = key_id || kem_id || kdf_id || aead_id (7 bytes). */
export function buildHeader(config, suite) {
  return concat(Uint8Array.of(config.keyId), u16(config.kem), u16(suite.kdf), u16(suite.aead));
}

/**
 * A fresh HPKE sender context for config and suite with info = label || 0x00 || hdr. ephemeral is for test vectors
 * only: for a DHKEM {privateKey, publicKey}, raw bytes of a fixed ephemeral key (passed to @hpke as its `ekm` key
 * pair); for X-Wing {seed}, the 64-byte EncapsulateDerand eseed (ML-KEM message m || X25519 ephemeral scalar, passed
 * as `ekm` bytes).
 */
export async function setupSender(config, suite, label, ephemeral) {
  const cs = new CipherSuite({ kem: KEMS[config.kem].make(), kdf: KDFS[suite.kdf].make(), aead: AEADS[suite.aead].make() });
  const hdr = buildHeader(config, suite);
  const params = {
    recipientPublicKey: await cs.kem.deserializePublicKey(config.publicKey),
    info: concat(utf8(label), Uint8Array.of(0), hdr),
  };
  if (ephemeral && ephemeral.seed) {
    if (config.kem !== KEM_XWING) throw new Error("an ephemeral seed is for X-Wing only");
    params.ekm = ephemeral.seed.slice().buffer;
  } else if (ephemeral) {
    params.ekm = {
      privateKey: await cs.kem.importKey("raw", ephemeral.privateKey.slice().buffer, false),
      publicKey: await cs.kem.importKey("raw", ephemeral.publicKey.slice().buffer, true),
    };
  }
  const context = await cs.createSenderContext(params);
  return { context, hdr, enc: new Uint8Array(context.enc) };
}

async function hkdf(hash, salt, ikm, info, length) {
  const key = await crypto.subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await crypto.subtle.deriveBits({ name: "HKDF", hash, salt, info: utf8(info) }, key, length * 8));
}

/**
 * RFC 9458 s4.4 (and the chunked draft s6.2 with its own label): export a secret from the HPKE context, then plain
 * HKDF (WebCrypto) with salt = enc || response_nonce to the AEAD key and nonce. Works with either side's context.
 */
export async function responseKeys(context, label, enc, responseNonce, suite) {
  const n = entropyLen(suite.aead);
  const secret = new Uint8Array(await context.export(utf8(label), n));
  const salt = concat(enc, responseNonce);
  const { hash } = KDFS[suite.kdf];
  const { nk, nn } = AEADS[suite.aead];
  return { secret, key: await hkdf(hash, salt, secret, "key", nk), nonce: await hkdf(hash, salt, secret, "nonce", nn) };
}

/** An AEAD for a response key (@hpke's AES-GCM over WebCrypto, or its ChaCha20-Poly1305). */
export function responseAead(aeadId, key) {
  return AEADS[aeadId].make().createEncryptionContext(key.slice().buffer);
}

// ---------------------------------------------------------------------------------------------------------------
// Requests and responses (RFC 9458 s4)

/**
 * Encapsulate a BHTTP request to config: {request: bytes to POST as message/ohttp-req, response: ClientResponse}.
 * options.suite picks a suite (default chooseSuite); options.ephemeral is for test vectors only.
 */
export async function encapsulateRequest(config, bhttp, { suite, ephemeral } = {}) {
  const s = suite || chooseSuite(config);
  const { context, hdr, enc } = await setupSender(config, s, INFO_REQUEST, ephemeral);
  const ct = new Uint8Array(await context.seal(bhttp));
  return { request: concat(hdr, enc, ct), response: new ClientResponse(context, enc, s) };
}

/** Opens the one response to an encapsulated request (a second use throws). */
export class ClientResponse {
  constructor(context, enc, suite) {
    this._context = context;
    this._enc = enc;
    this.suite = suite;
    this._used = false;
  }

  /** Decrypt message/ohttp-res bytes to the BHTTP response. Throws OHTTPError if it does not authenticate. */
  async open(encResponse) {
    if (this._used) throw new Error("a response context opens one response only");
    this._used = true;
    const data = encResponse instanceof Uint8Array ? encResponse : new Uint8Array(encResponse);
    const n = entropyLen(this.suite.aead);
    if (data.length < n + TAG_LEN) throw new OHTTPError(`encapsulated response too short: ${data.length} bytes`);
    const { key, nonce } = await responseKeys(this._context, LABEL_RESPONSE, this._enc, data.subarray(0, n), this.suite);
    try {
      return new Uint8Array(await responseAead(this.suite.aead, key).open(nonce, data.subarray(n), new Uint8Array(0)));
    } catch {
      throw new OHTTPError("the encapsulated response did not authenticate");
    }
  }
}

/**
 * Gateway side of s4.4, for tests and tools: seal bhttp under the response keys of an HPKE context (either side's)
 * with the given response nonce (fresh random bytes in real use).
 */
export async function encapsulateResponse(context, enc, suite, bhttp, responseNonce) {
  const nonce = responseNonce || crypto.getRandomValues(new Uint8Array(entropyLen(suite.aead)));
  const keys = await responseKeys(context, LABEL_RESPONSE, enc, nonce, suite);
  const ct = new Uint8Array(await responseAead(suite.aead, keys.key).seal(keys.nonce, bhttp, new Uint8Array(0)));
  return concat(nonce, ct);
}
