// The page's transparency-log check (issue 17): what transparency/ and tlog/ do for `veil proxy --publisher --log
// --log-key`, in the browser with WebCrypto only (Ed25519 and SHA-256), on the proofs the gateway attaches to its
// evidence bundle:
//
//   bundle.certs["veil_log"] = JSON {"checkpoint": "<signed note>",
//                                    "key": {"index": N, "entry": "<base64>", "proof": ["<base64 hash>", ...]},
//                                    "releases": [{"index": N, "entry": "<base64>", "proof": [...]}, ...]}
//
// Checks, in order (fail closed; each is a line in the trust panel):
//   1. the checkpoint is a C2SP signed note by the log's key, its origin is the key's name, and it carries at least
//      minWitnesses valid cosignatures (c2sp.org/tlog-cosignature, type 0x04) from the configured witnesses;
//   2. it does not fork or roll back the last checkpoint this page kept (localStorage): same size needs the same
//      root; another size needs an RFC 9162 consistency proof, computed here from the log's tiles fetched through the
//      serving proxy's same-origin /log path (without one, only an equal checkpoint is accepted);
//   3. every attached entry is included under the checkpoint (RFC 6962/9162 inclusion proofs);
//   4. a release is signed by a trusted publisher (a signed note) and inside its validity window;
//   5. the key entry names SHA-256 of the exact key-configuration bytes fetched, and is inside its window;
//   6. the release's policy admits the gateway as far as this page verifies evidence (transparency/verify.py): the
//      page verifies simulated evidence only, so a release admits it only if it lists platform "simulated" and the
//      page allows simulated; [config] require values are compared type-exact; require_post_quantum needs an X-Wing
//      key; GPU evidence (require_gpu, or evidence present) cannot be checked here, so such a release does not admit.
//
// Formats (tlog/note.py, tlog/checkpoint.py, transparency/statements.py): verifier keys are name+hexid+base64(type ||
// key), key id = SHA-256(name || 0x0A || type || key)[:4]; entries are "TAG\n<canonical JSON>\n" (sorted keys, no
// whitespace, no floats), a release being such a text signed as a note.

import { concat } from "./bhttp.js";

const DASH = "\u2014 ";
const ALG_ED25519 = 0x01;
const ALG_COSIGNATURE_V1 = 0x04;
const MAX_SIGNATURES = 100;
const HASH_SIZE = 32;
const TILE_WIDTH = 256;
const TILE_HEIGHT = 8;
export const RELEASE_TAG = "veil/release/v1";
export const KEY_TAG = "veil/key/v1";
/** The localStorage key of the kept checkpoints: {origin: {size, root (base64), checkpoint, seen}}. */
export const STATE_KEY = "veil-log-state";
const POLICY_KEYS = new Set(["platforms", "require_gpu", "require_post_quantum", "config",
  "sev-snp", "tdx", "sgx", "nvidia", "azure", "maa", "nitro"]);

/** A refusal by one check; kind names it (as proxy/verify.py's _log_refusal does). */
export class LogError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "LogError";
    this.kind = kind;
  }
}

export const KINDS = Object.freeze({
  attachment: "log proofs missing or malformed",
  checkpoint: "log checkpoint refused",
  witnesses: "log checkpoint refused",
  consistency: "log fork or rollback against the last checkpoint seen",
  unreachable: "log unreachable",
  proof: "log proof does not verify",
  release: "not in the log",
  key: "not in the log",
  policy: "no logged release of the publisher admits this gateway",
});

const fail = (kind, message) => new LogError(kind, message);
const malformed = (what) => fail("malformed", `malformed note: ${what}`);

// ---------------------------------------------------------------------------------------------------------------
// Bytes

const enc = new TextEncoder();

export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Strict standard base64 (padded, no whitespace), as Python's b64decode(validate=True); null if malformed. */
export function fromBase64(s) {
  if (typeof s !== "string" || s.length % 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return null;
  try {
    return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

export function toBase64(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** RFC 6962 leaf hash SHA-256(0x00 || entry). */
export function leafHash(entry) {
  return sha256(concat(Uint8Array.of(0), entry));
}

/** RFC 6962 node hash SHA-256(0x01 || left || right). */
export function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

// ---------------------------------------------------------------------------------------------------------------
// Signed notes (c2sp.org/signed-note) and verifier keys

/** Non-empty, no Unicode space or control character, no "+". */
export function isValidName(name) {
  return typeof name === "string" && name.length > 0 && !/[+\s\p{Cc}\p{Zs}\p{Zl}\p{Zp}]/u.test(name);
}

export async function keyId(name, alg, publicKey) {
  const d = await sha256(concat(enc.encode(name + "\n"), Uint8Array.of(alg), publicKey));
  return ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) >>> 0;
}

const hexId = (id) => id.toString(16).padStart(8, "0");

/** An Ed25519 verifier key (type 0x01 for notes, 0x04 for witness cosignatures). */
export class Verifier {
  constructor(name, id, publicKey, alg) {
    this.name = name;
    this.keyId = id;
    this.publicKey = publicKey;
    this.alg = alg;
    this._key = null;
  }

  get label() {
    return `${this.name}+${hexId(this.keyId)}`;
  }

  async verify(message, signature) {
    if (signature.length !== 64) return false;
    if (!this._key) this._key = await crypto.subtle.importKey("raw", this.publicKey, { name: "Ed25519" }, false, ["verify"]);
    return crypto.subtle.verify({ name: "Ed25519" }, this._key, signature, message);
  }
}

/** Parse name+hexid+base64(type||key); throws LogError (kind "key") on any mismatch, as tlog.parse_verifier_key. */
export async function parseVerifierKey(vkey) {
  const bad = (why) => fail("key", `verifier key ${JSON.stringify(String(vkey).slice(0, 80))}: ${why}`);
  if (typeof vkey !== "string") throw bad("not a string");
  const a = vkey.indexOf("+");
  const b = a < 0 ? -1 : vkey.indexOf("+", a + 1);
  if (a < 0 || b < 0) throw bad("must be name+hash+key");
  const name = vkey.slice(0, a);
  const hex = vkey.slice(a + 1, b);
  const blob = fromBase64(vkey.slice(b + 1));
  if (!isValidName(name) || !/^[0-9a-f]{8}$/.test(hex) || blob === null) throw bad("malformed");
  if (!blob.length || (blob[0] !== ALG_ED25519 && blob[0] !== ALG_COSIGNATURE_V1)) throw bad("unknown algorithm");
  if (blob.length !== 33) throw bad(`wrong key length (${blob.length - 1} bytes)`);
  const id = parseInt(hex, 16);
  if ((await keyId(name, blob[0], blob.subarray(1))) !== id) throw bad(`key id ${hex} does not match the key`);
  return new Verifier(name, id, blob.subarray(1), blob[0]);
}

function checkText(text) {
  if (!text.endsWith("\n")) throw malformed("text must end in a newline");
  if (/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029]/.test(text)) throw malformed("control character in text");
}

/** Split a note (bytes or string) into its text and signature lines; syntax only. */
export function parseNote(data) {
  let s = data;
  if (typeof data !== "string") {
    try {
      s = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(data);
    } catch {
      throw malformed("not UTF-8");
    }
  }
  const split = s.lastIndexOf("\n\n");
  if (split < 0) throw malformed("no signature block");
  const text = s.slice(0, split + 1);
  const block = s.slice(split + 2);
  checkText(text);
  if (!block.endsWith("\n")) throw malformed("signature block must end in a newline");
  const lines = block.slice(0, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) throw malformed(`more than ${MAX_SIGNATURES} signatures`);
  const signatures = lines.map((line) => {
    if (!line.startsWith(DASH)) throw malformed("signature line does not start with an em dash");
    const rest = line.slice(DASH.length);
    const sp = rest.indexOf(" ");
    const name = sp < 0 ? "" : rest.slice(0, sp);
    const b64 = rest.slice(sp + 1);
    if (sp < 0 || !isValidName(name) || b64.includes(" ")) throw malformed("bad signature line");
    const blob = fromBase64(b64);
    if (blob === null) throw malformed("signature is not base64");
    if (blob.length < 5) throw malformed("signature too short");
    return { name, keyId: ((blob[0] << 24) | (blob[1] << 16) | (blob[2] << 8) | blob[3]) >>> 0, payload: blob.subarray(4), line };
  });
  return { text, signatures };
}

/**
 * Parse and verify a note (golang.org/x/mod/sumdb/note Open): lines from unknown (name, id) pairs are kept as
 * unverified; a known pair whose signature fails rejects the note; no verified signature rejects it.
 * Returns {text, verified: [{name, keyId}], unverified: [sig]}; throws LogError with Go's messages.
 */
export async function openNote(data, verifiers) {
  const note = parseNote(data);
  const message = enc.encode(note.text);
  const verified = [];
  const unverified = [];
  const seen = new Set();
  for (const sig of note.signatures) {
    if (seen.has(sig.line)) continue;
    seen.add(sig.line);
    const v = verifiers.find((k) => k.name === sig.name && k.keyId === sig.keyId);
    if (!v) {
      unverified.push(sig);
      continue;
    }
    if (!(await v.verify(message, sig.payload))) throw fail("signature", `invalid signature for key ${v.label}`);
    verified.push(sig);
  }
  if (!verified.length) throw fail("signature", "note has no verifiable signatures");
  return { text: note.text, verified, unverified };
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints (c2sp.org/tlog-checkpoint) and witness cosignatures (c2sp.org/tlog-cosignature)

/** {origin, size, root, extensions} from a checkpoint's note text; sizes beyond 2^53 are refused here. */
export function parseCheckpoint(text) {
  if (!text.endsWith("\n")) throw fail("checkpoint", "malformed checkpoint: text must end in a newline");
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw fail("checkpoint", "malformed checkpoint: fewer than three lines");
  const [origin, sizeText, rootText, ...extensions] = lines;
  if (!origin) throw fail("checkpoint", "malformed checkpoint: empty origin");
  if (!/^(0|[1-9][0-9]*)$/.test(sizeText) || !Number.isSafeInteger(Number(sizeText))) {
    throw fail("checkpoint", `malformed checkpoint: tree size ${JSON.stringify(sizeText)}`);
  }
  const root = fromBase64(rootText);
  if (root === null || root.length !== HASH_SIZE) throw fail("checkpoint", "malformed checkpoint: bad root hash");
  if (extensions.some((l) => !l)) throw fail("checkpoint", "malformed checkpoint: empty extension line");
  return { origin, size: Number(sizeText), root, extensions };
}

export function cosignatureMessage(checkpointText, timestamp) {
  return enc.encode(`cosignature/v1\ntime ${timestamp}\n${checkpointText}`);
}

/** The timestamp when sig is witness's valid cosignature; null when the line is not this witness's; throws if it is
 * and does not verify (tlog.verify_cosignature). */
export async function verifyCosignature(checkpointText, sig, witness) {
  if (witness.alg !== ALG_COSIGNATURE_V1) throw fail("witnesses", `witness key ${witness.name} is not a cosignature (type 0x04) key`);
  if (sig.name !== witness.name || sig.keyId !== witness.keyId || sig.payload.length !== 72) return null;
  const ts = sig.payload.subarray(0, 8).reduce((acc, b) => acc * 256n + BigInt(b), 0n);
  if (!(await witness.verify(cosignatureMessage(checkpointText, ts), sig.payload.subarray(8)))) {
    throw fail("witnesses", `invalid cosignature for witness ${witness.label}`);
  }
  return ts;
}

/** Verify the log's signature, the origin (the log key's name) and the witness quorum: {checkpoint, witnesses}. */
export async function openCheckpoint(data, logKey, { origin = null, witnesses = [], minWitnesses = 0 } = {}) {
  let note;
  try {
    note = await openNote(data, [logKey]);
  } catch (err) {
    throw fail("checkpoint", `checkpoint signature: ${err.message} (log key ${logKey.label})`);
  }
  const cp = parseCheckpoint(note.text);
  const want = origin ?? logKey.name;
  if (cp.origin !== want) throw fail("checkpoint", `checkpoint origin ${JSON.stringify(cp.origin)} is not the expected ${JSON.stringify(want)}`);
  const seen = [];
  for (const w of witnesses) {
    for (const sig of note.unverified) {
      const ts = await verifyCosignature(note.text, sig, w);
      if (ts !== null) {
        seen.push({ name: w.name, time: Number(ts) });
        break;
      }
    }
  }
  if (seen.length < minWitnesses) {
    throw fail("witnesses", `checkpoint has ${seen.length} valid witness cosignatures, ${minWitnesses} required`);
  }
  return { checkpoint: cp, witnesses: seen };
}

// ---------------------------------------------------------------------------------------------------------------
// RFC 9162 proofs (edge cases as transparency-dev/merkle and tlog/merkle.py decide them)

function big(n, what) {
  if (typeof n === "bigint") return n;
  if (!Number.isSafeInteger(n)) throw fail("proof", `${what} ${n} is not an integer this page can use`);
  return BigInt(n);
}

function checkHash(h, what) {
  if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) throw fail("proof", `${what} is not ${HASH_SIZE} bytes`);
}

/** The root an inclusion proof implies for leaf at index in a tree of size (RFC 9162 2.1.3.2). */
export async function rootFromInclusion(index, size, leaf, proof) {
  const idx = big(index, "leaf index");
  const n = big(size, "tree size");
  if (idx < 0n || n <= 0n || idx >= n) throw fail("proof", `leaf index ${index} is outside a tree of size ${size}`);
  checkHash(leaf, "leaf hash");
  let fn = idx;
  let sn = n - 1n;
  let r = leaf;
  for (const p of proof) {
    checkHash(p, "proof hash");
    if (sn === 0n) throw fail("proof", `inclusion proof has too many hashes (${proof.length}) for index ${index} of ${size}`);
    if (fn & 1n || fn === sn) {
      r = await nodeHash(p, r);
      if (!(fn & 1n)) {
        while (fn && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw fail("proof", `inclusion proof has too few hashes (${proof.length}) for index ${index} of ${size}`);
  return r;
}

export async function verifyInclusion(index, size, leaf, proof, root) {
  checkHash(root, "root");
  if (!equalBytes(await rootFromInclusion(index, size, leaf, proof), root)) {
    throw fail("proof", `inclusion proof for index ${index} of ${size} does not lead to the checkpoint's root`);
  }
}

/** Throws unless proof shows the tree (size1, root1) is a prefix of (size2, root2) (RFC 9162 2.1.4.2). */
export async function verifyConsistency(size1, size2, root1, root2, proof) {
  const m = big(size1, "tree size");
  const n = big(size2, "tree size");
  if (m < 0n || n < 0n) throw fail("proof", "negative tree size");
  if (n < m) throw fail("proof", `tree shrank from ${size1} to ${size2}`);
  if (m === 0n) throw fail("proof", "consistency proof from the empty tree is meaningless");
  if (m === n) {
    if (proof.length) throw fail("proof", "consistency proof between equal sizes must be empty");
    if (!equalBytes(root1, root2)) throw fail("proof", `two different roots for tree size ${size1}`);
    return;
  }
  checkHash(root1, "old root");
  checkHash(root2, "new root");
  for (const p of proof) checkHash(p, "proof hash");
  if (!proof.length) throw fail("proof", `empty consistency proof from ${size1} to ${size2}`);
  const path = (m & (m - 1n)) === 0n ? [root1, ...proof] : [...proof];
  let fn = m - 1n;
  let sn = n - 1n;
  while (fn & 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (sn === 0n) throw fail("proof", `consistency proof from ${size1} to ${size2} has too many hashes`);
    if (fn & 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if (!(fn & 1n)) {
        while (fn && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw fail("proof", `consistency proof from ${size1} to ${size2} has too few hashes`);
  if (!equalBytes(fr, root1)) throw fail("proof", `consistency proof from ${size1} to ${size2} does not lead to the old root`);
  if (!equalBytes(sr, root2)) throw fail("proof", `consistency proof from ${size1} to ${size2} does not lead to the new root`);
}

// ---------------------------------------------------------------------------------------------------------------
// Tiles (c2sp.org/tlog-tiles): consistency proofs computed from the log's hash tiles (tlog/tiles.py)

function largestPow2Below(n) {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

function isPow2(n) {
  let k = 1;
  while (k < n) k *= 2;
  return k === n;
}

/** tile/<L>/<N>[.p/<W>] with N in 3-digit groups, all but the last prefixed "x". */
export function tilePath(level, index, width = 0) {
  let s = String(index);
  s = "0".repeat((3 - (s.length % 3)) % 3) + s;
  const groups = s.match(/.../g);
  const n = groups.map((g, i) => (i < groups.length - 1 ? "x" + g : g)).join("/");
  return `tile/${level}/${n}${width ? `.p/${width}` : ""}`;
}

function tileForNode(height, index, treeSize) {
  const level = Math.floor(height / TILE_HEIGHT);
  const sub = height - level * TILE_HEIGHT;
  const first = index * 2 ** sub;
  const tile = Math.floor(first / TILE_WIDTH);
  const count = Math.floor(treeSize / TILE_WIDTH ** level);
  const w = count - tile * TILE_WIDTH;
  if (w <= 0) throw fail("proof", `tile ${level}/${tile} does not exist at tree size ${treeSize}`);
  const start = first - tile * TILE_WIDTH;
  return { level, index: tile, width: w >= TILE_WIDTH ? 0 : w, start, end: start + 2 ** sub };
}

async function rangeHash(get, lo, hi) {
  const n = hi - lo;
  if (isPow2(n) && lo % n === 0) return get(Math.log2(n), lo / n);
  const k = largestPow2Below(n);
  return nodeHash(await rangeHash(get, lo, lo + k), await rangeHash(get, lo + k, hi));
}

/** RFC 6962 PROOF(size1, D[size2]) from complete-subtree hashes get(height, index). */
async function genericConsistencyProof(get, size1, size2) {
  if (size1 === 0 || size1 === size2) return [];
  async function sub(m, lo, hi, complete) {
    const n = hi - lo;
    if (m === n) return complete ? [] : [await rangeHash(get, lo, hi)];
    const k = largestPow2Below(n);
    if (m <= k) return [...(await sub(m, lo, lo + k, complete)), await rangeHash(get, lo + k, hi)];
    return [...(await sub(m - k, lo + k, hi, false)), await rangeHash(get, lo, lo + k)];
  }
  return sub(size1, 0, size2, true);
}

/**
 * The consistency proof from size1 to size2 built from the log's tiles at size2; fetchTile(path) -> bytes (the
 * proof is then checked against signed roots, so a wrong tile only makes it fail).
 */
export async function consistencyProofFromTiles(fetchTile, size1, size2) {
  if (!(0 <= size1 && size1 <= size2)) throw fail("proof", `no consistency proof from ${size1} to ${size2}`);
  const need = new Map();
  const zero = new Uint8Array(HASH_SIZE);
  await genericConsistencyProof(async (height, index) => {
    const t = tileForNode(height, index, size2);
    need.set(tilePath(t.level, t.index, t.width), t.width);
    return zero;
  }, size1, size2);
  const tiles = new Map();
  for (const [path, width] of need) {
    let data;
    try {
      data = await fetchTile(path);
    } catch (err) {
      if (!width) throw err;
      // A partial tile of a tree the log has since grown past may be gone (C2SP lets a log delete partial tiles
      // once the full one exists): the full tile's prefix is the same hashes (as transparency/client.py fetch_tiles).
      const full = await fetchTile(path.slice(0, path.lastIndexOf(".p/")));
      data = full instanceof Uint8Array && full.length === TILE_WIDTH * HASH_SIZE ? full.slice(0, width * HASH_SIZE)
        : full;
    }
    const want = (width || TILE_WIDTH) * HASH_SIZE;
    if (!(data instanceof Uint8Array) || data.length !== want) {
      throw fail("proof", `tile ${path} is ${data && data.length} bytes, expected ${want}`);
    }
    tiles.set(path, data);
  }
  return genericConsistencyProof(async (height, index) => {
    const t = tileForNode(height, index, size2);
    const data = tiles.get(tilePath(t.level, t.index, t.width));
    let level = [];
    for (let i = t.start; i < t.end; i++) level.push(data.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE));
    while (level.length > 1) {
      const up = [];
      for (let i = 0; i < level.length; i += 2) up.push(await nodeHash(level[i], level[i + 1]));
      level = up;
    }
    return level[0];
  }, size1, size2);
}

// ---------------------------------------------------------------------------------------------------------------
// Veil's entries (transparency/statements.py)

function compareCodePoints(a, b) {
  const x = Array.from(a);
  const y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d) return d;
  }
  return x.length - y.length;
}

/** Sorted keys (by code point, as Python), no whitespace, UTF-8 kept; floats and lone surrogates refused. */
export function canonicalJson(v) {
  if (v === null || typeof v === "boolean") return JSON.stringify(v);
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v)) throw fail("entry", "floats are not allowed in canonical JSON");
    return String(v);
  }
  if (typeof v === "string") {
    if (/\p{Cs}/u.test(v)) throw fail("entry", "lone surrogate in a string");
    return JSON.stringify(v);
  }
  if (Array.isArray(v)) return "[" + v.map(canonicalJson).join(",") + "]";
  if (typeof v === "object") {
    return "{" + Object.keys(v).sort(compareCodePoints).map((k) => `${canonicalJson(k)}:${canonicalJson(v[k])}`).join(",") + "}";
  }
  throw fail("entry", `${typeof v} is not JSON`);
}

function parseTagged(text, tag) {
  const lines = text.split("\n");
  if (lines.length !== 3 || lines[0] !== tag || lines[2] !== "") throw fail("entry", `not a ${tag} entry`);
  let obj;
  try {
    obj = JSON.parse(lines[1]);
  } catch {
    throw fail("entry", `${tag}: body is not JSON`);
  }
  if (!obj || typeof obj !== "object" || Array.isArray(obj) || canonicalJson(obj) !== lines[1]) {
    throw fail("entry", `${tag}: body is not canonical JSON`);
  }
  return obj;
}

// As transparency/statements.py MAX_TIME: the last second of year 9999.
const MAX_TIME = 253402300799;

function windowOf(obj, tag) {
  const nb = obj.not_before;
  const na = obj.not_after;
  if (!Number.isSafeInteger(nb) || !Number.isSafeInteger(na) || na <= nb) {
    throw fail("entry", `${tag}: not_before/not_after must be integers with not_before < not_after`);
  }
  if (nb < 0 || na > MAX_TIME) {
    throw fail("entry", `${tag}: not_before/not_after must be unix seconds from 0 to ${MAX_TIME} (year 9999)`);
  }
  return [nb, na];
}

/** A release signed by one of publishers: {name, notBefore, notAfter, policy, publisher}; throws LogError. */
export async function openRelease(raw, publishers) {
  let note;
  try {
    note = await openNote(raw, publishers);
  } catch (err) {
    throw fail("release", `release not signed by a trusted publisher: ${err.message}`);
  }
  const obj = parseTagged(note.text, RELEASE_TAG);
  if (typeof obj.name !== "string" || !obj.policy || typeof obj.policy !== "object" || Array.isArray(obj.policy)) {
    throw fail("entry", `${RELEASE_TAG}: name must be a string and policy a table`);
  }
  const [notBefore, notAfter] = windowOf(obj, RELEASE_TAG);
  return { name: obj.name, notBefore, notAfter, policy: obj.policy, publisher: note.verified[0].name };
}

const HEX32 = /^[0-9a-f]{64}$/;

/** A key entry: {gateway, keyIds, keyConfigSha256, evidenceSha256, notBefore, notAfter, release}; throws LogError. */
export function parseKeyEntry(raw) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(raw);
  } catch {
    throw fail("entry", `${KEY_TAG}: not UTF-8`);
  }
  const obj = parseTagged(text, KEY_TAG);
  if (typeof obj.gateway !== "string" || !obj.gateway) throw fail("entry", `${KEY_TAG}: gateway must be a non-empty string`);
  if (!Array.isArray(obj.key_ids) || !obj.key_ids.every((i) => Number.isInteger(i) && i >= 0 && i < 256)) {
    throw fail("entry", `${KEY_TAG}: key_ids must be a list of integers 0..255`);
  }
  if (obj.release !== null && obj.release !== undefined && !HEX32.test(obj.release)) {
    throw fail("entry", `${KEY_TAG}: release must be 64 lowercase hex digits`);
  }
  const [notBefore, notAfter] = windowOf(obj, KEY_TAG);
  const extra = Object.keys(obj).filter((k) => !["gateway", "key_ids", "key_config_sha256", "evidence_sha256",
    "not_before", "not_after", "release"].includes(k));
  if (extra.length) throw fail("entry", `${KEY_TAG}: unknown fields ${JSON.stringify(extra.sort())}`);
  for (const f of ["key_config_sha256", "evidence_sha256"]) {
    if (!HEX32.test(obj[f])) throw fail("entry", `${KEY_TAG}: ${f} must be 64 lowercase hex digits`);
  }
  return { gateway: obj.gateway, keyIds: obj.key_ids, keyConfigSha256: obj.key_config_sha256,
    evidenceSha256: obj.evidence_sha256, notBefore, notAfter, release: obj.release ?? null };
}

/**
 * Why the release's policy does not admit the gateway as this page verified it (null when it does). facts:
 * {platform, simulated, config, postQuantum, gpuEvidence (bool)} from attestation.js; allowSimulated as the page's.
 */
export function policyRefusal(policy, facts, { allowSimulated = false } = {}) {
  const unknown = Object.keys(policy).filter((k) => !POLICY_KEYS.has(k));
  if (unknown.length) return `its policy has keys this page does not know: ${unknown.sort().join(", ")}`;
  const platforms = policy.platforms === undefined ? ["sev-snp", "tdx"] : policy.platforms;
  if (!Array.isArray(platforms)) return "its policy's platforms is not a list";
  if (facts.simulated) {
    if (!platforms.includes("simulated")) return `it lists platforms ${JSON.stringify(platforms)}, not "simulated"`;
    if (!allowSimulated) return "the gateway is SIMULATED and this page does not allow simulated attestation";
  } else if (!platforms.includes(facts.platform)) {
    return `it lists platforms ${JSON.stringify(platforms)}, not ${JSON.stringify(facts.platform)}`;
  } else {
    return `this page cannot verify "${facts.platform}" evidence against a release's measurements`;
  }
  if (policy.require_gpu === true || facts.gpuEvidence) {
    return "it would check NVIDIA GPU evidence, which this page cannot verify";
  }
  // A policy counting GPUs or switches needs their evidence as much as require_gpu does (verify.py: "GPU evidence
  // present" fails without it).
  const nvidia = policy.nvidia;
  if (nvidia && typeof nvidia === "object" && (nvidia.gpu_count != null || nvidia.switch_count != null)) {
    return "its [nvidia] gpu_count or switch_count needs NVIDIA GPU evidence, and the gateway presents none";
  }
  if (policy.require_post_quantum === true && !facts.postQuantum) {
    return "it requires a post-quantum (X-Wing) key configuration and the gateway offers none";
  }
  const config = policy.config === undefined ? {} : policy.config;
  if (!config || typeof config !== "object" || Array.isArray(config)) return "its [config] is not a table";
  const require = config.require === undefined ? {} : config.require;
  if (!require || typeof require !== "object" || Array.isArray(require)) return "its [config] require is not a table";
  for (const name of Object.keys(require).sort()) {
    const wanted = require[name];
    const found = facts.config ? facts.config[name] : undefined;
    // type-exact, as verify.py: 1 does not satisfy true, "0" does not satisfy 0
    const ok = found !== undefined && typeof found === typeof wanted && found === wanted;
    if (!ok) {
      return `gateway configuration ${name}: wanted ${JSON.stringify(wanted)}, found ` +
        (found === undefined ? "(absent)" : JSON.stringify(found));
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// The kept checkpoint

/** A checkpoint store over localStorage (or any object with getItem/setItem): get(origin), set(origin, cp, raw). */
export function checkpointStore(storage) {
  // Unreadable kept checkpoints are refused, never forgotten (then overwritten): forgetting them would accept a
  // forked or rolled-back log as if first seen (as transparency/client.py load_state refuses).
  const unreadable = (why) => fail("consistency", `the kept log checkpoints (this site's localStorage item ` +
    `"${STATE_KEY}") are unreadable (${why}); refusing rather than forgetting them. To start over, trusting the ` +
    "next checkpoint as on first use, remove that item (or clear this site's data) and reload");
  const read = () => {
    const text = storage.getItem(STATE_KEY);
    if (text === null || text === undefined) return {};
    let v;
    try {
      v = JSON.parse(text);
    } catch (err) {
      throw unreadable(`not JSON: ${err.message}`);
    }
    if (!v || typeof v !== "object" || Array.isArray(v)) throw unreadable("not an object");
    return v;
  };
  return {
    get(origin) {
      const e = read()[origin];
      if (!e) return null;
      const root = fromBase64(e.root);
      if (!Number.isSafeInteger(e.size) || root === null || root.length !== HASH_SIZE) {
        throw fail("consistency", `the kept checkpoint for ${origin} is unreadable; refusing rather than forgetting it`);
      }
      return { origin, size: e.size, root };
    },
    set(origin, cp, raw) {
      const all = read();
      all[origin] = { size: cp.size, root: toBase64(cp.root), checkpoint: raw, seen: Math.floor(Date.now() / 1000) };
      storage.setItem(STATE_KEY, JSON.stringify(all));
    },
  };
}

/** An in-memory store (tests, or a browser without localStorage). */
export function memoryStore() {
  const items = new Map();
  return checkpointStore({ getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v) });
}

/**
 * Refuse cp unless it extends (or is a prefix of) the kept checkpoint; returns which one to keep and what was shown.
 * Another size needs fetchTile (the log's tiles through a same-origin path); without it only equality is accepted.
 */
export async function checkAgainstKept(kept, cp, fetchTile) {
  if (!kept) return { keep: cp, detail: "first checkpoint seen for this log: kept" };
  if (cp.size === kept.size) {
    if (!equalBytes(cp.root, kept.root)) {
      throw fail("consistency", `forked log: two checkpoints of size ${cp.size} with different roots`);
    }
    return { keep: null, detail: `same tree as the kept checkpoint (size ${cp.size})` };
  }
  const [small, large] = cp.size < kept.size ? [cp, kept] : [kept, cp];
  const what = cp.size < kept.size ? "rolled back" : "grown";
  if (small.size === 0) return { keep: cp.size > kept.size ? cp : null, detail: `${what} from/to the empty tree` };
  if (!fetchTile) {
    throw fail("consistency", `checkpoint size ${cp.size} differs from the kept size ${kept.size}, and this page has ` +
      "no same-origin path to the log's tiles to prove the two consistent (serve it with veil proxy --log)");
  }
  let proof;
  try {
    proof = await consistencyProofFromTiles(fetchTile, small.size, large.size);
  } catch (err) {
    throw fail(err.kind === "unreachable" ? "unreachable" : "proof",
      `cannot prove size ${small.size} consistent with size ${large.size} from the log's tiles: ${err.message}`);
  }
  try {
    await verifyConsistency(small.size, large.size, small.root, large.root, proof);
  } catch (err) {
    throw fail("consistency", `forked log: size ${cp.size} is not consistent with the kept size ${kept.size}: ${err.message}`);
  }
  return cp.size > kept.size
    ? { keep: cp, detail: `grew from the kept size ${kept.size} to ${cp.size}: consistency proof from tiles verified` }
    : { keep: null, detail: `older than the kept size ${kept.size}, and a prefix of it (consistency proof verified); ` +
      "the newer one stays kept" };
}

// ---------------------------------------------------------------------------------------------------------------
// The whole check

/** The page's settings (veil-config.json "transparency") parsed: publishers, logKey, witnesses, minWitnesses, log. */
export async function parseTransparencyConfig(cfg) {
  if (!cfg || typeof cfg !== "object") throw fail("key", "transparency settings missing");
  const publishers = await Promise.all((cfg.publishers || []).map(parseVerifierKey));
  if (!publishers.length) throw fail("key", "transparency: at least one publisher key is needed");
  const minWitnesses = cfg.min_witnesses ?? 0;
  if (!Number.isSafeInteger(minWitnesses) || minWitnesses < 0) throw fail("key", "min_witnesses must be a count");
  return { publishers, logKey: await parseVerifierKey(cfg.log_key), witnesses: await Promise.all((cfg.witnesses || [])
    .map(parseVerifierKey)), minWitnesses, log: typeof cfg.log === "string" ? cfg.log : null,
  logUpstream: typeof cfg.log_upstream === "string" ? cfg.log_upstream : null };
}

// Bounds as transparency/proofs.py parses the attachment (strictly: exact fields, sizes).
const MAX_ATTACHMENT_CHARS = 512 * 1024;
const MAX_CHECKPOINT_CHARS = 16 * 1024;
export const MAX_RELEASES = 16;
const MAX_PROOF = 64;
const MAX_ENTRY = 0xffff;

function exactFields(obj, want, where) {
  const got = obj && typeof obj === "object" && !Array.isArray(obj) ? Object.keys(obj).sort() : null;
  if (!got || got.join() !== [...want].sort().join()) {
    throw fail("attachment", `${where} must be an object with exactly ${JSON.stringify([...want].sort())}`);
  }
}

function decodeItem(item, where) {
  exactFields(item, ["index", "entry", "proof"], where);
  if (!Number.isSafeInteger(item.index) || item.index < 0) throw fail("attachment", `${where}.index must be an integer`);
  if (!Array.isArray(item.proof) || item.proof.length > MAX_PROOF) {
    throw fail("attachment", `${where}.proof must be a list of at most ${MAX_PROOF} hashes`);
  }
  const entry = typeof item.entry === "string" && item.entry.length <= Math.ceil(MAX_ENTRY / 3) * 4 ? fromBase64(item.entry) : null;
  if (!entry) throw fail("attachment", `${where}.entry must be base64 of at most ${MAX_ENTRY} bytes`);
  const proof = item.proof.map(fromBase64);
  if (proof.some((p) => !p || p.length !== HASH_SIZE)) throw fail("attachment", `${where}.proof hashes must be base64 of ${HASH_SIZE} bytes`);
  return { index: item.index, entry, proof };
}

/** The bundle's certs["veil_log"] decoded strictly (transparency/proofs.py LogProofs.parse), or a LogError. */
export function parseAttachment(bundleBytes) {
  let bundle;
  try {
    bundle = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bundleBytes));
  } catch {
    throw fail("attachment", "the evidence bundle is not JSON");
  }
  const raw = bundle && bundle.certs && bundle.certs.veil_log;
  if (typeof raw !== "string") {
    throw fail("attachment", "the gateway's evidence carries no transparency-log proofs (certs.veil_log); " +
      "this page requires them because a publisher is configured");
  }
  if (raw.length > MAX_ATTACHMENT_CHARS) throw fail("attachment", `veil_log attachment exceeds ${MAX_ATTACHMENT_CHARS} characters`);
  let obj;
  try {
    obj = JSON.parse(raw);
  } catch {
    throw fail("attachment", "certs.veil_log is not JSON");
  }
  exactFields(obj, ["checkpoint", "key", "releases"], "veil_log");
  if (typeof obj.checkpoint !== "string" || !obj.checkpoint || obj.checkpoint.length > MAX_CHECKPOINT_CHARS) {
    throw fail("attachment", `veil_log: checkpoint must be a note of at most ${MAX_CHECKPOINT_CHARS} characters`);
  }
  if (!Array.isArray(obj.releases) || obj.releases.length > MAX_RELEASES) {
    throw fail("attachment", `veil_log: releases must be a list of at most ${MAX_RELEASES}`);
  }
  return { checkpoint: obj.checkpoint, key: decodeItem(obj.key, "veil_log.key"),
    releases: obj.releases.map((r, i) => decodeItem(r, `veil_log.releases[${i}]`)), gpuEvidence: Boolean(bundle.gpu_evidence) };
}

/**
 * Check the gateway's log attachment for keysBody (the exact key-configuration bytes fetched) and the attestation
 * verdict (attestation.js, accepted). Returns {accepted, refusal, kind, checks, checkpoint, witnesses, release,
 * keyIndex, keyEntry}. opts: publishers, logKey, witnesses, minWitnesses (parseTransparencyConfig), store
 * (checkpointStore), fetchTile (path -> bytes, or null), allowSimulated, now (seconds).
 */
export async function verifyLog(bundleBytes, keysBody, verdict, opts) {
  const { publishers, logKey, witnesses = [], minWitnesses = 0, store, fetchTile = null, allowSimulated = false } = opts;
  const now = opts.now ?? Date.now() / 1000;
  const checks = [];
  const result = { accepted: false, refusal: null, kind: null, checks, checkpoint: null, witnesses: [], release: null,
    keyIndex: null, keyEntry: null };
  const check = (name, status, detail) => checks.push({ name, status, detail });
  let step = "Log proofs";
  try {
    const att = parseAttachment(bundleBytes);
    check(step, "pass", `attached: a checkpoint, the key entry and ${att.releases.length} release entr` +
      (att.releases.length === 1 ? "y" : "ies"));

    step = "Log checkpoint";
    const { checkpoint: cp, witnesses: seen } = await openCheckpoint(att.checkpoint, logKey, { witnesses, minWitnesses });
    result.checkpoint = cp;
    result.witnesses = seen;
    check(step, "pass", `signed by the log key ${logKey.label}; origin ${cp.origin}, size ${cp.size}`);
    if (witnesses.length || minWitnesses) {
      check("Witness cosignatures", "pass", `${seen.length} valid (${seen.map((w) => w.name).join(", ") || "none"}), ` +
        `${minWitnesses} required`);
    }

    step = "Log consistency";
    const kept = store.get(cp.origin);
    const { keep, detail } = await checkAgainstKept(kept, cp, fetchTile);
    if (keep) store.set(cp.origin, keep, att.checkpoint);
    check(step, "pass", detail);

    step = "Inclusion proofs";
    for (const item of [att.key, ...att.releases]) {
      await verifyInclusion(item.index, cp.size, await leafHash(item.entry), item.proof, cp.root);
    }
    check(step, "pass", `the key entry (index ${att.key.index}) and ${att.releases.length} release entr` +
      `${att.releases.length === 1 ? "y" : "ies"} are in the tree of size ${cp.size}`);

    step = "Release";
    const valid = [];
    const skipped = [];
    for (const item of att.releases) {
      let rel;
      try {
        rel = await openRelease(item.entry, publishers);
      } catch (err) {
        skipped.push(`entry ${item.index}: ${err.message}`);
        continue;
      }
      if (!(rel.notBefore <= now && now < rel.notAfter)) {
        skipped.push(`entry ${item.index}: release ${JSON.stringify(rel.name)} is outside its validity window ` +
          `(${new Date(rel.notBefore * 1000).toISOString()} to ${new Date(rel.notAfter * 1000).toISOString()})`);
        continue;
      }
      valid.push({ ...rel, index: item.index });
    }
    if (!valid.length) {
      throw fail("release", `no unexpired release signed by the publisher is in the log at size ${cp.size}` +
        (skipped.length ? ` (${skipped.join("; ")})` : ""));
    }
    check(step, "pass", valid.map((r) => `${JSON.stringify(r.name)} (log index ${r.index}) signed by the publisher ` +
      `${r.publisher}, valid until ${new Date(r.notAfter * 1000).toISOString()}`).join("; ") +
      (skipped.length ? `; skipped: ${skipped.join("; ")}` : ""));

    step = "Key in the log";
    const entry = parseKeyEntry(att.key.entry);
    const digest = toHex(await sha256(keysBody));
    if (entry.keyConfigSha256 !== digest) {
      throw fail("key", `key configuration ${digest.slice(0, 16)}... is not in the log at size ${cp.size}: the ` +
        `attached entry names ${entry.keyConfigSha256.slice(0, 16)}... (refused: a key not in the log may be a split view)`);
    }
    if (!(entry.notBefore <= now && now < entry.notAfter)) {
      throw fail("key", `the logged entry for key configuration ${digest.slice(0, 16)}... is outside its validity ` +
        `window (${new Date(entry.notBefore * 1000).toISOString()} to ${new Date(entry.notAfter * 1000).toISOString()})`);
    }
    result.keyIndex = att.key.index;
    result.keyEntry = entry;
    check(step, "pass", `key configuration at index ${att.key.index} of ${cp.size} (gateway ` +
      `${JSON.stringify(entry.gateway)}): SHA-256 of the exact key bytes fetched, valid until ` +
      new Date(entry.notAfter * 1000).toISOString());

    step = "Release policy";
    const facts = { platform: verdict.platform, simulated: verdict.simulated, config: verdict.config,
      postQuantum: verdict.postQuantum, gpuEvidence: att.gpuEvidence };
    const why = [];
    for (const rel of valid) {
      const no = policyRefusal(rel.policy, facts, { allowSimulated });
      if (no === null) {
        result.release = rel;
        break;
      }
      why.push(`release ${JSON.stringify(rel.name)}: ${no}`);
    }
    if (!result.release) throw fail("policy", why.join("; "));
    const rel = result.release;
    check(step, "pass", `${JSON.stringify(rel.name)} admits this gateway` +
      (facts.simulated ? " (platform \"simulated\": no TEE)" : ""));
    result.accepted = true;
    return result;
  } catch (err) {
    if (!(err instanceof LogError)) throw err;
    let kind = err.kind;
    if (kind === "entry" || kind === "malformed") kind = step === "Key in the log" ? "key" : "proof";
    if (kind === "signature") kind = "checkpoint";
    check(kind === "witnesses" ? "Witness cosignatures" : step, "fail", err.message);
    result.kind = kind;
    const label = KINDS[kind] || "log check failed";
    result.refusal = kind === "policy" ? `${label}: ${err.message}`
      : `refused by the transparency log (${label}): ${err.message}`;
    return result;
  }
}
