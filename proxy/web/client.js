// VeilClient: the page's OHTTP client. It does in the browser what proxy/transport.py does for `veil proxy`:
// fetch the key configuration and the evidence bundle through the relay (GET RELAY, GET RELAY/attestation),
// verify them before anything is sent, encapsulate every request with a fresh HPKE context and a `date` inside,
// only the headers the API needs (INNER_HEADERS) and zero padding to a size bucket (REQUEST_PAD, as veil proxy
// pads), POST it to the relay, and open the answer; `stream: true` travels as chunked OHTTP and is read incrementally
// (fetch's ReadableStream -> chunk decoder -> incremental BHTTP decoder -> content pieces as they arrive).
// A 422 with problem type ohttp-key refreshes and re-verifies the keys and retries once.
// Of the gateway's key configurations the client uses the post-quantum one (X-Wing) when offered, else the first it
// supports (ohttp.js chooseConfig, as ohttp.keys.choose_config); requirePostQuantum refuses a gateway without one.
//
// Requests carry no cookies, no referrer and nothing the relay could use to link them; the relay sees only the
// ciphertext and the media type, and, when it requires Privacy Pass, one unlinkable token per request (tokens.js).

import { BHTTPDecoder, NEED_DATA, decode, encodeRequest, paddedSize } from "./bhttp.js";
import { ChunkedClientRequest, MEDIA_TYPE_CHUNKED_REQUEST, MEDIA_TYPE_CHUNKED_RESPONSE } from "./chunked.js";
import {
  KEMS, MEDIA_TYPE_KEYS, MEDIA_TYPE_REQUEST, MEDIA_TYPE_RESPONSE, chooseConfig, chooseSuite, decodeKeyList,
  encapsulateRequest, suiteName,
} from "./ohttp.js";
import { verifyBundle } from "./attestation.js";
import { LogError, checkpointStore, memoryStore, verifyLog } from "./transparency.js";

/** A failure on the way to or from the gateway (API errors are responses, not VeilErrors). */
export class VeilError extends Error {
  constructor(message, { code = "veil_upstream_error", status = 502 } = {}) {
    super(message);
    this.name = "VeilError";
    this.code = code;
    this.status = status;
  }
}

/** The only headers a caller's request carries inside the encapsulation (proxy/transport.py INNER_HEADERS). */
export const INNER_HEADERS = Object.freeze(["content-type", "accept", "authorization", "openai-beta", "x-veil-tenant"]);
/** Inner requests are padded to paddedSize(n, REQUEST_PAD) bytes (proxy/transport.py REQUEST_PAD). */
export const REQUEST_PAD = 1024;

const FETCH_DEFAULTS = Object.freeze({
  mode: "cors",
  credentials: "omit", // never a cookie or HTTP auth to the relay
  cache: "no-store", // a refresh after 422 must not get the old keys from the browser cache
  referrerPolicy: "no-referrer",
  redirect: "error",
});

function maxAgeOf(cacheControl) {
  const m = /(?:^|,)\s*max-age=(\d+)/i.exec(cacheControl || "");
  return m ? Number(m[1]) : null;
}

function mediaType(res) {
  return (res.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
}

export class VeilClient {
  /**
   * relay: the relay's URL for one gateway (http://relay.example/NAME); allowSimulated: accept SIMULATED
   * evidence (only when the user asked for it); requirePostQuantum: refuse a gateway that offers no X-Wing key
   * configuration (otherwise X-Wing is still preferred); tokens: a TokenWallet for a relay that requires Privacy
   * Pass tokens (veil relay --require-token); transparency: the parsed log settings (transparency.js
   * parseTransparencyConfig) when a publisher is configured: then the gateway's evidence must carry valid log proofs
   * (verifyLog), checked against the checkpoint kept in logStore (localStorage by default); fetch: injectable for
   * tests; now: clock in ms.
   */
  constructor({ relay, allowSimulated = false, requirePostQuantum = false, tokens = null, transparency = null,
    logStore = null, fetch: fetchImpl, now = () => Date.now() }) {
    if (!relay) throw new VeilError("no relay URL configured");
    /** A TokenWallet (tokens.js) when the relay requires Privacy Pass tokens: each POST spends one. */
    this.tokens = tokens;
    this.relay = relay.replace(/\/+$/, "");
    this.allowSimulated = allowSimulated;
    this.requirePostQuantum = requirePostQuantum;
    this._fetchImpl = fetchImpl || globalThis.fetch.bind(globalThis);
    this._now = now;
    this.transparency = transparency;
    this.logStore = logStore || (transparency ? defaultLogStore() : null);
    /** What was fetched and verified (also when it was refused): shown by the trust panel. */
    this.trust = null;
    this._refreshing = null;
  }

  async _fetch(url, init) {
    try {
      return await this._fetchImpl(url, { ...FETCH_DEFAULTS, ...init });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new VeilError(`cannot reach the relay at ${url} (${err && err.message || err}); is it running, ` +
        "and does it allow this page's origin (veil relay --cors-origin)?");
    }
  }

  /** Fetch and verify keys and evidence. Throws VeilError (code veil_attestation_refused) if they do not pass. */
  refresh() {
    if (!this._refreshing) {
      this._refreshing = this._refresh().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  async _refresh() {
    const keysRes = await this._fetch(this.relay, { headers: { Accept: MEDIA_TYPE_KEYS } });
    if (keysRes.status !== 200) throw new VeilError(`key fetch from ${this.relay} failed: HTTP ${keysRes.status}`);
    const keysBody = new Uint8Array(await keysRes.arrayBuffer());
    const cacheControl = keysRes.headers.get("Cache-Control") || "";
    const attRes = await this._fetch(`${this.relay}/attestation`, { headers: { Accept: "application/json" } });
    if (attRes.status !== 200) throw new VeilError(`attestation fetch failed: HTTP ${attRes.status}`);
    const bundle = new Uint8Array(await attRes.arrayBuffer());

    const fetchedAt = this._now();
    const maxAge = maxAgeOf(cacheControl);
    const trust = {
      relay: this.relay, keysBody, cacheControl, fetchedAt, maxAge,
      expiresAt: maxAge === null ? null : fetchedAt + maxAge * 1000,
      config: null, suite: null, suiteName: null, keyId: null, kemName: null, postQuantum: false,
      verdict: null, accepted: false, error: null,
    };
    this.trust = trust;
    let configs;
    try {
      configs = decodeKeyList(keysBody);
    } catch (err) {
      trust.error = `the gateway's key configuration is malformed: ${err.message}`;
      throw new VeilError(trust.error);
    }
    if (!configs.length) {
      trust.error = "the gateway offers no key configuration this page supports";
      throw new VeilError(trust.error);
    }
    trust.config = chooseConfig(configs); // X-Wing when offered; requirePostQuantum is the verdict's to refuse
    trust.kemName = KEMS[trust.config.kem].name;
    trust.postQuantum = KEMS[trust.config.kem].postQuantum;
    trust.suite = chooseSuite(trust.config);
    trust.suiteName = suiteName(trust.config.kem, trust.suite);
    trust.keyId = trust.config.keyId;
    trust.verdict = await verifyBundle(bundle, keysBody,
      { allowSimulated: this.allowSimulated, requirePostQuantum: this.requirePostQuantum });
    if (!trust.verdict.accepted) {
      trust.error = `attestation refused: ${trust.verdict.refusal}`;
      throw new VeilError(trust.error, { code: "veil_attestation_refused" });
    }
    if (this.requirePostQuantum && !trust.postQuantum) { // fail closed even if the verdict and the choice disagreed
      trust.error = "refused: no post-quantum key configuration, and this page requires one (require_post_quantum)";
      throw new VeilError(trust.error, { code: "veil_attestation_refused" });
    }
    if (this.transparency) { // a publisher is configured: the log's proofs are required (fail closed)
      const t = this.transparency;
      trust.log = await verifyLog(bundle, keysBody, trust.verdict, {
        ...t, store: this.logStore, allowSimulated: this.allowSimulated, now: this._now() / 1000,
        fetchTile: t.log ? (path) => this._fetchLogFile(path) : null,
      });
      trust.verdict.checks.push(...trust.log.checks);
      if (!trust.log.accepted) {
        trust.error = `attestation refused: ${trust.log.refusal}`;
        throw new VeilError(trust.error, { code: "veil_attestation_refused" });
      }
    }
    trust.accepted = true;
    return trust;
  }

  /** One static file of the log through the serving proxy's same-origin path (veil proxy --log): for consistency
   * proofs, checked against signed checkpoints, so the proxy is trusted for nothing. */
  async _fetchLogFile(path) {
    const url = `${this.transparency.log.replace(/\/+$/, "")}/${path}`;
    let res;
    try {
      res = await this._fetchImpl(url, { credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
        redirect: "error" });
    } catch (err) {
      throw new LogError("unreachable", `cannot fetch ${url}: ${err && err.message || err}`);
    }
    if (res.status !== 200) throw new LogError("unreachable", `GET ${url}: HTTP ${res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  }

  /** Verified, unexpired keys (refreshing when needed). */
  async ready() {
    const t = this.trust;
    if (t && t.accepted && (t.expiresAt === null || this._now() < t.expiresAt)) return t;
    return this.refresh();
  }

  /**
   * Send one request through OHTTP. Returns {status, headers, body} or, with stream: true (chunked OHTTP),
   * {status, headers, pieces} where pieces is an async iterator of content bytes as they arrive. signal aborts.
   */
  async request(method, path, { headers = [], body, stream = false, signal } = {}) {
    let trust = await this.ready();
    for (let attempt = 1; ; attempt++) {
      const out = await this._send(trust, method, path, headers, body, stream, signal);
      if (!out.keyRejected) return out;
      if (attempt === 2) throw new VeilError("the gateway rejected freshly verified keys twice; giving up");
      trust = await this.refresh(); // the key was rotated out: fetch, re-verify, retry once
    }
  }

  async _send(trust, method, path, headers, body, stream, signal) {
    const content = typeof body === "string" ? new TextEncoder().encode(body) : body || new Uint8Array(0);
    const fields = headers.map(([n, v]) => [n.toLowerCase(), v]).filter(([n]) => INNER_HEADERS.includes(n));
    fields.push(["date", new Date(this._now()).toUTCString()]); // always: gateways require it (replay protection)
    const msg = { method, scheme: "https", authority: "", path, headers: fields, content };
    const bare = encodeRequest(msg).length;
    const inner = encodeRequest(msg, { padding: paddedSize(bare, REQUEST_PAD) - bare });
    if (!stream) {
      const { request, response } = await encapsulateRequest(trust.config, inner, { suite: trust.suite });
      const res = await this._post({ method: "POST", headers: { "Content-Type": MEDIA_TYPE_REQUEST }, body: request,
        signal });
      if (await this._keyRejected(res)) return { keyRejected: true };
      this._checkOuter(res, MEDIA_TYPE_RESPONSE);
      let msg;
      try {
        msg = decode(await response.open(new Uint8Array(await res.arrayBuffer())), { expect: "response" });
      } catch (err) {
        if (err && err.name === "AbortError") throw err;
        throw new VeilError(`the encapsulated response did not open: ${err.message}`);
      }
      return { status: msg.status, headers: msg.headers, body: msg.content };
    }
    const creq = await ChunkedClientRequest.create(trust.config, { suite: trust.suite });
    const wire = await creq.encodeChunk(inner, { final: true });
    const res = await this._post({
      method: "POST", headers: { "Content-Type": MEDIA_TYPE_CHUNKED_REQUEST, Incremental: "?1" }, body: wire, signal,
    });
    if (await this._keyRejected(res)) return { keyRejected: true };
    this._checkOuter(res, MEDIA_TYPE_CHUNKED_RESPONSE);
    return openStream(res.body.getReader(), creq.response());
  }

  /**
   * POST to the relay, spending one Privacy Pass token (outer Authorization) when the client has a wallet. A 401/403
   * with a PrivateToken challenge for the wallet's issuer (a key rotation, a token spent already) is retried once with
   * another token: the relay refused it before forwarding, so the gateway never saw the request.
   */
  async _post(init) {
    if (!this.tokens) return this._fetch(this.relay, init);
    for (let attempt = 1; ; attempt++) {
      let held;
      try {
        held = await this.tokens.take();
      } catch (err) {
        throw new VeilError(`no Privacy Pass token from the issuer: ${err.message}`,
          { code: "veil_token_unavailable", status: err.status || 502 });
      }
      const res = await this._fetch(this.relay, { ...init, headers: { ...init.headers, Authorization: held.header } });
      if ((res.status !== 401 && res.status !== 403) || attempt === 2) return res;
      if (!this.tokens.learn(res.headers.get("WWW-Authenticate") || "")) return res;
      if (res.status === 401) this.tokens.dropKey(held.keyId);
      if (res.body) await res.body.cancel();
    }
  }

  async _keyRejected(res) {
    if (res.status !== 422) return false;
    const text = await res.text();
    return text.includes("ohttp-key");
  }

  _checkOuter(res, expected) {
    if ((res.status === 401 || res.status === 403) && /privatetoken/i.test(res.headers.get("WWW-Authenticate") || "")) {
      throw new VeilError(`the relay wants a Privacy Pass token (HTTP ${res.status})`,
        { code: "veil_token_required", status: res.status });
    }
    if (res.status !== 200) {
      // Unencapsulated: from the relay or the gateway before decryption; trusted for nothing beyond its status.
      throw new VeilError(`the relay or gateway answered HTTP ${res.status} before decryption`, { status: res.status });
    }
    const type = mediaType(res);
    if (type !== expected) throw new VeilError(`unexpected response media type "${type}", wanted ${expected}`);
  }
}

function defaultLogStore() {
  try {
    if (globalThis.localStorage) return checkpointStore(globalThis.localStorage);
  } catch { /* storage disabled: keep the checkpoint for this page's life only */ }
  return memoryStore();
}

/** Read a chunked OHTTP response: returns {status, headers, pieces} once the BHTTP head has arrived. */
async function openStream(reader, chunks) {
  const bhttp = new BHTTPDecoder({ expect: "response" });
  let ended = false;

  // One network read into the decoders; false at end of input.
  async function pump() {
    if (ended) return false;
    const { value, done } = await reader.read();
    if (done) {
      ended = true;
      chunks.end();
    } else {
      chunks.receive(value);
    }
    for (let c = await chunks.next(); c !== NEED_DATA; c = await chunks.next()) {
      if (c.data.length) bhttp.receive(c.data);
      if (c.final) bhttp.end();
    }
    return true;
  }

  const wrap = (err) => (err && (err.name === "AbortError" || err instanceof VeilError) ? err
    : new VeilError(`the encapsulated stream failed: ${err && err.message || err}`, { code: "veil_stream_broken" }));

  let head = null;
  try {
    while (head === null) {
      const ev = bhttp.next();
      if (ev === NEED_DATA) {
        if (!(await pump())) throw new VeilError("the stream ended before the response head");
      } else if (ev.type === "response-head") {
        head = ev;
      }
    }
  } catch (err) {
    reader.cancel().catch(() => {});
    throw wrap(err);
  }

  async function* pieces() {
    let complete = false;
    try {
      for (;;) {
        const ev = bhttp.next();
        if (ev === NEED_DATA) {
          if (!(await pump())) throw new VeilError("stream truncated: it ended without its final chunk");
        } else if (ev.type === "data") {
          yield ev.data;
        } else if (ev.type === "end") {
          // Complete only once the final chunk (AAD "final") has authenticated: a cut stream is never a success.
          while (!chunks.complete) {
            if (!(await pump())) throw new VeilError("stream truncated: it ended without its final chunk");
          }
          complete = true;
          return;
        }
      }
    } catch (err) {
      throw wrap(err);
    } finally {
      if (!complete) reader.cancel().catch(() => {}); // hang up: the relay and the gateway stop generating
    }
  }

  return { status: head.status, headers: head.headers, pieces: pieces() };
}
