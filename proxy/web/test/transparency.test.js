// The page's transparency-log check (transparency.js): C2SP signed notes, checkpoints and cosignatures and RFC 9162
// proofs against ../shared/data/vectors/tlog_vectors.json (golang/mod sumdb/note, transparency-dev/merkle), then the
// whole check on a real log written by the Python side (test/log-fixture.json, `python -m tests.browser.log_fixture`):
// it accepts the gateway and each tampered attachment fails at its own check.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { verifyBundle } from "../attestation.js";
import {
  LogError, STATE_KEY, canonicalJson, checkAgainstKept, checkpointStore, consistencyProofFromTiles, cosignatureMessage, fromBase64, keyId, leafHash, memoryStore,
  nodeHash, openCheckpoint, openNote, parseCheckpoint, parseKeyEntry, policyRefusal, parseNote, parseTransparencyConfig, parseVerifierKey,
  tilePath, toBase64, verifyConsistency, verifyCosignature, verifyInclusion, verifyLog,
} from "../transparency.js";
import { h, hex, loadVector, utf8 } from "./helpers.js";

const V = loadVector("tlog_vectors.json");
const SN = V.signed_note;
const M = V.merkle_rfc6962;
const F = JSON.parse(readFileSync(new URL("./log-fixture.json", import.meta.url), "utf8"));
const b64 = (s) => fromBase64(s);

async function rejects(promise, re) {
  await assert.rejects(promise, (err) => {
    assert.match(err.message, re);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Signed notes

test("signed-note vectors: verifier keys parse to their key ids (SHA-256(name || 0x0A || 0x01 || key)[:4])", async () => {
  for (const v of Object.values(SN.verifiers)) {
    const k = await parseVerifierKey(v.vkey);
    assert.equal(k.name, v.name);
    assert.equal(k.keyId.toString(16).padStart(8, "0"), v.key_id);
    assert.equal(hex(k.publicKey), v.public_key);
    assert.equal(await keyId(v.name, 1, h(v.public_key)), parseInt(v.key_id, 16));
  }
  for (const bad of SN.bad_vkeys) await rejects(parseVerifierKey(bad.vkey), /verifier key/);
});

test("signed-note vectors: the signer's seed reproduces Peter's signature (Ed25519 is deterministic)", async () => {
  const pkcs8 = new Uint8Array([...h("302e020100300506032b657004220420"), ...h(SN.signer_key.ed25519_seed)]);
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
  const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key, utf8(SN.text)));
  assert.equal(hex(sig), SN.signatures.peter.ed25519_signature);
  const line = parseNote(SN.text + "\n" + SN.signatures.peter.line).signatures[0];
  assert.equal(hex(line.payload), SN.signatures.peter.ed25519_signature);
});

test("signed-note vectors: Open's cases (verified, unverified, and the must-fail ones with Go's messages)", async () => {
  const keys = {};
  for (const [n, v] of Object.entries(SN.verifiers)) keys[n] = await parseVerifierKey(v.vkey);
  let failures = 0;
  for (const c of SN.open_cases) {
    const note = c.note ?? c.note_repeat.prefix + c.note_repeat.line.repeat(c.note_repeat.count);
    const open = openNote(note, c.verifiers.map((n) => keys[n]));
    if (c.ok) {
      const r = await open;
      assert.deepEqual(r.verified.map((s) => s.name), c.verified, c.desc);
      if (c.unverified) assert.deepEqual(r.unverified.map((s) => s.name), c.unverified, c.desc);
      if (c.unverified_lines) assert.deepEqual(r.unverified.map((s) => s.line + "\n"), c.unverified_lines, c.desc);
    } else {
      failures++;
      await rejects(open, new RegExp(c.error.replace(/[+]/g, "\\+")));
    }
  }
  assert.ok(failures >= 3);
  for (const note of SN.malformed_notes.notes) await rejects(openNote(note, [keys.peter]), /malformed note/);
  for (const bytes of SN.malformed_notes.also_malformed_bytes_hex) await rejects(openNote(h(bytes), [keys.peter]), /malformed note/);
  const c2 = SN.c2sp_example;
  assert.equal((await openNote(c2.note, [await parseVerifierKey(c2.vkey)])).verified.length, 1);
});

test("cosignature vector: the witness line verifies with its timestamp; the altered ones do not count", async () => {
  const C = V.cosignature_v1;
  const w = await parseVerifierKey(C.witness.vkey);
  const sig = parseNote(`x\n\n${C.cosignature_line}\n`).signatures[0];
  assert.equal(new TextDecoder().decode(cosignatureMessage(C.checkpoint_body, 1234)), C.signed_message);
  assert.equal(await verifyCosignature(C.checkpoint_body, sig, w), 1234n);
  const [changedTime, otherId, otherName, badSize] = C.must_fail.map((f) => parseNote(`x\n\n${f.cosignature_line}\n`).signatures[0]);
  await rejects(verifyCosignature(C.checkpoint_body, changedTime, w), /invalid cosignature/);
  for (const s of [otherId, otherName, badSize]) assert.equal(await verifyCosignature(C.checkpoint_body, s, w), null);
  const log = await parseVerifierKey(C.log_checkpoint_same_key.vkey);
  const { checkpoint } = await openCheckpoint(C.log_checkpoint_same_key.checkpoint, log);
  assert.equal(checkpoint.size, 10);
});

// ---------------------------------------------------------------------------------------------------------------
// Merkle proofs and tiles

test("RFC 6962 hashes: empty root, leaf and node hashes, roots", async () => {
  for (const c of M.hasher_cases) {
    if (c.leaf_hash) assert.equal(hex(await leafHash(h(c.leaf_input))), c.leaf_hash);
    if (c.node_hash) assert.equal(hex(await nodeHash(h(c.left), h(c.right))), c.node_hash);
  }
  for (const [i, leaf] of M.leaves.entries()) assert.equal(hex(await leafHash(h(leaf))), M.node_hashes_by_level[0][i]);
});

test("RFC 9162 inclusion and consistency proofs: the tree's proofs verify, all 98 + 98 merkle probes decide as Go", async () => {
  for (const p of M.inclusion_proofs) {
    await verifyInclusion(p.leaf_index, p.tree_size, h(p.leaf_hash), p.proof.map(h), h(p.root));
  }
  for (const p of M.consistency_proofs) {
    await verifyConsistency(p.size1, p.size2, h(p.root1), h(p.root2), p.proof.map(h));
  }
  const P = V.merkle_probes;
  let bad = 0;
  for (const p of P.inclusion) {
    const run = verifyInclusion(p.leaf_index, p.tree_size, h(p.leaf_hash), p.proof.map(h), h(p.root));
    if (p.valid) await run;
    else await assert.rejects(run, undefined, p.file);
    bad += !p.valid;
  }
  for (const p of P.consistency) {
    const run = verifyConsistency(p.size1, p.size2, h(p.root1), h(p.root2), p.proof.map(h));
    if (p.valid) await run;
    else await assert.rejects(run, undefined, p.file);
    bad += !p.valid;
  }
  assert.equal(P.inclusion.length + P.consistency.length, 196);
  assert.ok(bad > 150);
});

test("tlog-tiles paths as the vectors write them", () => {
  for (const t of V.tlog_tiles.tile_paths) assert.equal(tilePath(t.level, t.index, t.width), t.path);
});

test("consistency proof from 5 to 300 computed from the log's tiles (a full and a partial tile)", async () => {
  const fetched = [];
  const fetchTile = async (p) => {
    fetched.push(p);
    return b64(F.tiles[p]);
  };
  const proof = await consistencyProofFromTiles(fetchTile, 5, 300);
  await verifyConsistency(5, 300, b64(F.root_small), b64(F.root_large), proof);
  assert.deepEqual(fetched.sort(), Object.keys(F.tiles).sort()); // the tiles tlog.consistency_tiles(5, 300) names
  assert.ok(fetched.includes("tile/0/001.p/44"), fetched.join(" "));
  const bad = { ...F.tiles };
  const t0 = b64(bad["tile/0/000"]);
  t0[40] ^= 1;
  bad["tile/0/000"] = toBase64(t0);
  const proof2 = await consistencyProofFromTiles(async (p) => b64(bad[p]), 5, 300);
  await rejects(verifyConsistency(5, 300, b64(F.root_small), b64(F.root_large), proof2), /does not lead/);
});

test("consistency proof from tiles: a partial tile the log has deleted is read as the full tile's prefix", async () => {
  // the log grew past 300 and dropped tile/0/001.p/44: its full tile starts with the same 44 hashes
  const partial = b64(F.tiles["tile/0/001.p/44"]);
  const full = new Uint8Array(256 * 32).fill(7);
  full.set(partial);
  const files = { "tile/0/000": b64(F.tiles["tile/0/000"]), "tile/0/001": full };
  const fetched = [];
  const fetchTile = async (p) => {
    fetched.push(p);
    if (!(p in files)) throw new LogError("unreachable", `GET /log/${p}: HTTP 404`);
    return files[p];
  };
  const proof = await consistencyProofFromTiles(fetchTile, 5, 300);
  await verifyConsistency(5, 300, b64(F.root_small), b64(F.root_large), proof);
  assert.ok(fetched.includes("tile/0/001.p/44") && fetched.includes("tile/0/001"), fetched.join(" "));
  // a full tile that is gone as well stays a refusal
  delete files["tile/0/001"];
  await rejects(consistencyProofFromTiles(fetchTile, 5, 300), /HTTP 404/);
});

test("release policy: [nvidia] gpu_count or switch_count without GPU evidence is refused (as verify.py)", () => {
  const facts = { platform: "simulated", simulated: true, config: { engine: "echo" }, postQuantum: false,
    gpuEvidence: false };
  const base = { platforms: ["simulated"] };
  assert.equal(policyRefusal(base, facts, { allowSimulated: true }), null);
  assert.equal(policyRefusal({ ...base, nvidia: {} }, facts, { allowSimulated: true }), null);
  for (const nvidia of [{ gpu_count: 1 }, { switch_count: 0 }, { gpu_count: 8, switch_count: 4 }]) {
    assert.match(policyRefusal({ ...base, nvidia }, facts, { allowSimulated: true }) || "",
      /gpu_count or switch_count needs NVIDIA GPU evidence/, JSON.stringify(nvidia));
  }
});

// ---------------------------------------------------------------------------------------------------------------
// The whole check on the Python-written log

async function settings(extra = {}) {
  return parseTransparencyConfig({ publishers: [F.publisher], log_key: F.log_key, log: "/log", ...extra });
}

const keys = b64(F.keys);

async function run(bundleB64, { store = memoryStore(), now = F.now, fetchTile = null, cfg = {}, allowSimulated = true,
  keysBody = keys } = {}) {
  const bundle = b64(bundleB64);
  const verdict = await verifyBundle(bundle, keysBody, { allowSimulated: true });
  assert.ok(verdict.accepted, verdict.refusal);
  return verifyLog(bundle, keysBody, verdict, { ...(await settings(cfg)), store, now, fetchTile, allowSimulated });
}

const tiles = async (p) => {
  if (!(p in F.tiles)) throw new Error(`no tile ${p}`);
  return b64(F.tiles[p]);
};

function failed(r) {
  const f = r.checks.filter((c) => c.status === "fail");
  assert.equal(f.length, 1, JSON.stringify(r.checks));
  return f[0].name;
}

test("log check: the gateway's attachment passes; release, publisher, index of size, origin; the checkpoint is kept", async () => {
  const store = memoryStore();
  const r = await run(F.bundle_large, { store, cfg: { witnesses: [F.witness], min_witnesses: 1 } });
  assert.ok(r.accepted, r.refusal);
  assert.equal(r.release.name, "veil-gateway 1.0");
  assert.equal(r.release.publisher, "releases.veil.example");
  assert.equal(r.release.notAfter, F.release_window[1]);
  assert.equal(r.keyIndex, 3);
  assert.equal(r.checkpoint.size, 300);
  assert.equal(r.checkpoint.origin, F.origin);
  assert.deepEqual(r.witnesses.map((w) => w.name), ["witness.veil.example"]);
  assert.deepEqual(r.checks.map((c) => [c.name, c.status]), [["Log proofs", "pass"], ["Log checkpoint", "pass"],
    ["Witness cosignatures", "pass"], ["Log consistency", "pass"], ["Inclusion proofs", "pass"], ["Release", "pass"],
    ["Key in the log", "pass"], ["Release policy", "pass"]]);
  assert.match(r.checks.find((c) => c.name === "Key in the log").detail, /index 3 of 300/);
  assert.equal(store.get(F.origin).size, 300);
});

test("log check refuses: no attachment, another log key, too few witnesses, a bad cosignature", async () => {
  let r = await run(F.bundle);
  assert.ok(!r.accepted);
  assert.equal(failed(r), "Log proofs");
  assert.match(r.refusal, /carries no transparency-log proofs/);

  r = await run(swapCheckpoint(F.bundle_small, F.checkpoint_impostor));
  assert.equal(failed(r), "Log checkpoint");
  assert.match(r.refusal, /log checkpoint refused.*checkpoint signature: note has no verifiable signatures/);

  r = await run(F.bundle_large, { cfg: { witnesses: [F.witness, F.witness2], min_witnesses: 2 } });
  assert.equal(failed(r), "Witness cosignatures");
  assert.match(r.refusal, /1 valid witness cosignatures, 2 required/);

  const lines = F.checkpoint_large.split("\n");
  const last = lines.at(-2); // the witness line: flip one signature character
  lines[lines.length - 2] = last.slice(0, -6) + (last.at(-6) === "A" ? "B" : "A") + last.slice(-5);
  r = await run(swapCheckpoint(F.bundle_large, lines.join("\n")), { cfg: { witnesses: [F.witness], min_witnesses: 1 } });
  assert.equal(failed(r), "Witness cosignatures");
  assert.match(r.refusal, /invalid cosignature for witness witness.veil.example/);
});

test("log check refuses a malformed attachment (as proofs.py parses it: exact fields, 32-byte hashes, <= 16 releases)", async () => {
  for (const change of [
    (l) => { l.extra = 1; },
    (l) => { l.key.proof[0] = toBase64(new Uint8Array(31)); },
    (l) => { l.releases = Array(17).fill(l.releases[0]); },
    (l) => { l.key.index = -1; },
    (l) => { l.key.entry = "not base64!"; },
  ]) {
    const r = await run(edit(F.bundle_small, change));
    assert.equal(failed(r), "Log proofs");
    assert.match(r.refusal, /log proofs missing or malformed/);
  }
});

function swapCheckpoint(bundleB64, checkpoint) {
  return edit(bundleB64, (log) => {
    log.checkpoint = checkpoint;
  });
}

function edit(bundleB64, change) {
  const bundle = JSON.parse(new TextDecoder().decode(b64(bundleB64)));
  const log = JSON.parse(bundle.certs.veil_log);
  change(log);
  bundle.certs.veil_log = JSON.stringify(log);
  return toBase64(utf8(JSON.stringify(bundle)));
}

test("log check refuses a tampered inclusion proof, a tampered entry, a wrong index", async () => {
  const flip = (s) => {
    const b = b64(s);
    b[0] ^= 0x80;
    return toBase64(b);
  };
  for (const change of [
    (l) => { l.key.proof[0] = flip(l.key.proof[0]); },
    (l) => { l.releases[0].proof[1] = flip(l.releases[0].proof[1]); },
    (l) => { l.releases[0].proof.pop(); },
    (l) => { l.key.index = 2; },
    (l) => { l.key.entry = toBase64(utf8(new TextDecoder().decode(b64(l.key.entry)).replace("gw-1", "gw-9"))); },
  ]) {
    const r = await run(edit(F.bundle_small, change));
    assert.equal(failed(r), "Inclusion proofs");
    assert.match(r.refusal, /log proof does not verify/);
  }
});

test("log check refuses: a release of another publisher only, an expired release, an expired key entry", async () => {
  let r = await run(F.bundle_other_publisher);
  assert.equal(failed(r), "Release");
  assert.match(r.refusal, /not in the log.*no unexpired release signed by the publisher.*not signed by a trusted publisher/);

  r = await run(F.bundle_small, { now: F.release_window[1] + 1 });
  assert.equal(failed(r), "Release");
  assert.match(r.refusal, /outside its validity window/);

  r = await run(F.bundle_small, { now: F.key_window[1] + 1 });
  assert.equal(failed(r), "Key in the log");
  assert.match(r.refusal, /not in the log.*outside its validity window/);

  // the other publisher's key as the only trusted one: our releases are not signed by it
  r = await run(edit(F.bundle_small, (l) => { l.releases = l.releases.slice(0, 2); }),
    { cfg: { publishers: [F.other_publisher] } });
  assert.equal(failed(r), "Release");
});

test("log check refuses a key entry for other key bytes (not in the log: maybe a split view)", async () => {
  const r = await run(F.bundle_wrong_key);
  assert.equal(failed(r), "Key in the log");
  assert.match(r.refusal, /not in the log.*is not in the log at size 5.*split view/);
});

test("log check refuses when no release's policy admits the gateway (platforms, allow-simulated)", async () => {
  let r = await run(F.bundle_sev_only);
  assert.equal(failed(r), "Release policy");
  assert.match(r.refusal, /^no logged release of the publisher admits this gateway: release "veil-gateway sev": it lists platforms \["sev-snp"\], not "simulated"/);
  r = await run(F.bundle_small, { allowSimulated: false });
  assert.equal(failed(r), "Release policy");
  assert.match(r.refusal, /does not allow simulated/);
});

test("kept checkpoint: the same again passes; a fork at the same size is refused", async () => {
  const store = memoryStore();
  assert.ok((await run(F.bundle_small, { store })).accepted);
  assert.ok((await run(F.bundle_small, { store })).accepted);
  const r = await run(swapCheckpoint(F.bundle_small, F.checkpoint_fork), { store });
  assert.equal(failed(r), "Log consistency");
  assert.match(r.refusal, /fork or rollback.*forked log: two checkpoints of size 5 with different roots/);
  assert.equal(store.get(F.origin).size, 5);
  assert.equal(toBase64(store.get(F.origin).root), F.root_small);
});

test("kept checkpoint: growth needs a consistency proof from tiles; a smaller one must be its prefix", async () => {
  const store = memoryStore();
  assert.ok((await run(F.bundle_small, { store })).accepted);
  let r = await run(F.bundle_large, { store }); // no tiles path: growth cannot be proven
  assert.equal(failed(r), "Log consistency");
  assert.match(r.refusal, /no same-origin path to the log's tiles/);
  r = await run(F.bundle_large, { store, fetchTile: tiles });
  assert.ok(r.accepted, r.refusal);
  assert.match(r.checks.find((c) => c.name === "Log consistency").detail, /grew from the kept size 5 to 300/);
  assert.equal(store.get(F.origin).size, 300);
  // back to the size-5 checkpoint: refused without tiles, accepted as a proven prefix with them (300 stays kept)
  r = await run(F.bundle_small, { store });
  assert.equal(failed(r), "Log consistency");
  r = await run(F.bundle_small, { store, fetchTile: tiles });
  assert.ok(r.accepted, r.refusal);
  assert.equal(store.get(F.origin).size, 300);
  // a forked size-5 checkpoint is no prefix of the kept 300
  r = await run(swapCheckpoint(F.bundle_small, F.checkpoint_fork), { store, fetchTile: tiles });
  assert.equal(failed(r), "Log consistency");
  assert.match(r.refusal, /forked log: size 5 is not consistent with the kept size 300/);
  // and growth over a fork: kept = the fork at 5, offered 300 -> refused
  const forked = memoryStore();
  const fk = parseCheckpoint(F.checkpoint_fork.slice(0, F.checkpoint_fork.indexOf("\n\n") + 1));
  forked.set(F.origin, fk, F.checkpoint_fork);
  r = await run(F.bundle_large, { store: forked, fetchTile: tiles });
  assert.equal(failed(r), "Log consistency");
  assert.equal(forked.get(F.origin).size, 5);
});

test("checkAgainstKept: without a kept checkpoint the first one is kept", async () => {
  const cp = { origin: F.origin, size: 5, root: b64(F.root_small) };
  assert.equal((await checkAgainstKept(null, cp, null)).keep, cp);
});

// ---------------------------------------------------------------------------------------------------------------
// VeilClient with a publisher configured

function fakeRelay(bundleB64) {
  const seen = [];
  const fetch = async (url, init = {}) => {
    seen.push(`${init.method || "GET"} ${url}`);
    if ((init.method || "GET") !== "GET") throw new Error("nothing may be sent");
    if (url === "http://relay.test/gw") return new Response(keys, { headers: { "Content-Type": "application/ohttp-keys" } });
    if (url === "http://relay.test/gw/attestation") return new Response(b64(bundleB64), { headers: { "Content-Type": "application/json" } });
    const m = /^\/log\/(.+)$/.exec(url);
    if (m && m[1] in F.tiles) return new Response(b64(F.tiles[m[1]]));
    return new Response("no", { status: 404 });
  };
  return { fetch, seen };
}

test("VeilClient with a publisher: accepts the logged gateway, proves growth through /log tiles, refuses an unlogged key", async () => {
  const { VeilClient } = await import("../client.js");
  const transparency = await settings();
  const logStore = memoryStore();
  const now = () => F.now * 1000;
  let relay = fakeRelay(F.bundle_small);
  let client = new VeilClient({ relay: "http://relay.test/gw", allowSimulated: true, transparency, logStore, fetch: relay.fetch, now });
  const trust = await client.refresh();
  assert.equal(trust.log.release.name, "veil-gateway 1.0");
  assert.ok(trust.verdict.checks.some((c) => c.name === "Key in the log" && c.status === "pass"));

  relay = fakeRelay(F.bundle_large);
  client = new VeilClient({ relay: "http://relay.test/gw", allowSimulated: true, transparency, logStore, fetch: relay.fetch, now });
  assert.equal((await client.refresh()).log.checkpoint.size, 300);
  assert.ok(relay.seen.includes("GET /log/tile/0/001.p/44"), relay.seen.join(", "));
  assert.equal(logStore.get(F.origin).size, 300);

  relay = fakeRelay(F.bundle_wrong_key);
  client = new VeilClient({ relay: "http://relay.test/gw", allowSimulated: true, transparency, logStore, fetch: relay.fetch, now });
  await assert.rejects(client.request("POST", "/v1/chat/completions", { body: "{}" }), (err) => {
    assert.equal(err.code, "veil_attestation_refused");
    assert.match(err.message, /^attestation refused: refused by the transparency log \(not in the log\)/);
    return true;
  });
  // the keys, the evidence and the tiles proving its size-5 checkpoint a prefix of the kept 300; no POST
  assert.deepEqual(relay.seen, ["GET http://relay.test/gw", "GET http://relay.test/gw/attestation",
    "GET /log/tile/0/000", "GET /log/tile/0/001.p/44"]);

  relay = fakeRelay(F.bundle); // no proofs at all
  client = new VeilClient({ relay: "http://relay.test/gw", allowSimulated: true, transparency, logStore, fetch: relay.fetch, now });
  await assert.rejects(client.refresh(), /carries no transparency-log proofs/);
});

test("kept checkpoints that do not parse are refused, never forgotten and overwritten", async () => {
  for (const stored of ["{not json", "[]", "null", "7"]) {
    const items = new Map([[STATE_KEY, stored]]);
    const store = checkpointStore({ getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v) });
    const r = await run(F.bundle_large, { store });
    assert.equal(r.accepted, false, stored);
    assert.equal(r.kind, "consistency");
    assert.match(r.refusal, /kept log checkpoints .* are unreadable.*remove that item/, r.refusal);
    assert.equal(items.get(STATE_KEY), stored); // left as it was
  }
  // nothing kept yet: the first checkpoint is kept
  const items = new Map();
  const store = checkpointStore({ getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, v) });
  assert.ok((await run(F.bundle_large, { store })).accepted);
  assert.ok(JSON.parse(items.get(STATE_KEY))[F.origin]);
});

test("key entries with a validity window past year 9999 or before 1970 are refused (as transparency/statements.py)", () => {
  const entry = (nb, na) => utf8(`veil/key/v1\n${canonicalJson({
    gateway: "gw", key_ids: [1], key_config_sha256: "ab".repeat(32), evidence_sha256: "cd".repeat(32),
    not_before: nb, not_after: na, release: null })}\n`);
  assert.equal(parseKeyEntry(entry(0, 253402300799)).notAfter, 253402300799);
  for (const [nb, na] of [[1e15, 1e15 + 10], [-5, 10], [1, 253402300800]]) {
    assert.throws(() => parseKeyEntry(entry(nb, na)), /year 9999/);
  }
});
