// TokenWallet: Privacy Pass in the page (RFC 9578 token type 2, RFC 9577 PrivateToken), as proxy/client/tokens.py
// does it for veil proxy. Tokens are blinded, finalized and checked in the browser by Cloudflare's privacypass-ts
// (vendor/privacypass.js); the issuer signs blinded bytes only. The wallet fetches the issuer's directory, keeps a pool
// of tokens for the relay's challenge (token type 2, the issuer's name, an empty redemption context), refills it in the
// background below lowWater so a request never waits for issuance unless the pool is empty, and hands out each token
// once. Tokens live in memory only: never in storage, never logged.
//
// Served by veil proxy, `issuer` is the proxy's same-origin /issuer path (the proxy forwards the directory GET and
// the token-request POST, adding the user's issuer key); `issuerName` is the real issuer's host[:port], which the
// relay's challenge names.

import { TOKEN_TYPES, Token, TokenChallenge, publicVerif } from "./vendor/privacypass.js";

export const WELL_KNOWN_DIRECTORY = "/.well-known/private-token-issuer-directory";
export const MEDIA_TYPE_TOKEN_REQUEST = "application/private-token-request";
export const MEDIA_TYPE_TOKEN_RESPONSE = "application/private-token-response";
const TYPE = TOKEN_TYPES.BLIND_RSA.value; // 0x0002

export class TokenError extends Error {
  constructor(message, status = 502) {
    super(message);
    this.name = "TokenError";
    this.status = status;
  }
}

export function b64urlEncode(bytes) {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_"); // RFC 9577: base64url WITH padding
}

export function b64urlDecode(text) {
  const s = text.replace(/-/g, "+").replace(/_/g, "/");
  const bin = atob(s + "=".repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function equal(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** The `Authorization` value for a serialized token (RFC 9577 §2.2). */
export function authorization(tokenBytes) {
  return `PrivateToken token="${b64urlEncode(tokenBytes)}"`;
}

/**
 * The PrivateToken challenges of a WWW-Authenticate value as [{challenge: TokenChallenge, raw, tokenKey}], skipping
 * other schemes, other token types (grease included) and anything malformed: parsed by hand, since privacypass-ts
 * 0.9.0 throws on a header that mixes in grease (see the Privacy Pass notes).
 */
export function parseChallenges(header) {
  const out = [];
  const re = /PrivateToken\s+((?:\s*,?\s*[A-Za-z0-9_-]+\s*=\s*(?:"[^"]*"|[^\s,"]+))+)/gi;
  for (const m of (header || "").matchAll(re)) {
    const params = {};
    for (const p of m[1].matchAll(/([A-Za-z0-9_-]+)\s*=\s*(?:"([^"]*)"|([^\s,"]+))/g)) {
      params[p[1].toLowerCase()] = p[2] ?? p[3];
    }
    try {
      const raw = b64urlDecode(params.challenge || "");
      const challenge = TokenChallenge.deserialize(raw);
      if (challenge.tokenType !== TYPE) continue;
      out.push({ challenge, raw, tokenKey: params["token-key"] ? b64urlDecode(params["token-key"]) : null });
    } catch {
      // not a challenge this client can use
    }
  }
  return out;
}

export class TokenWallet {
  /**
   * issuer: where the issuer's directory and request URI are reached (the proxy's "/issuer", or an issuer's URL);
   * issuerName: the issuer's host[:port] in challenges; originInfo: the relay's origin names (none by default).
   */
  constructor({ issuer, issuerName, originInfo = [], batch = 8, lowWater = 4, concurrency = 4, fetch: fetchImpl,
    now = () => Date.now() }) {
    if (!issuer || !issuerName) throw new TokenError("no issuer configured");
    this.issuer = issuer.replace(/\/+$/, "");
    this.batch = batch;
    this.lowWater = lowWater;
    this.concurrency = concurrency;
    this._fetchImpl = fetchImpl || globalThis.fetch.bind(globalThis);
    this._now = now;
    const origins = originInfo.length ? originInfo : undefined;
    this.challenge = new TokenChallenge(TYPE, issuerName, new Uint8Array(0), origins);
    this._raw = this.challenge.serialize();
    this._pool = [];
    this._directory = null;
    this._directoryUntil = 0;
    this._refill = null;
    this._error = null;
    this.issued = 0;
    this.spent = 0;
  }

  get size() {
    return this._pool.length;
  }

  async _fetch(url, init) {
    try {
      return await this._fetchImpl(url, { credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
        redirect: "error", ...init });
    } catch (err) {
      throw new TokenError(`cannot reach the issuer at ${url} (${err && err.message || err})`);
    }
  }

  /** Fill the pool now (at start, so the first request does not wait); throws TokenError if none came. */
  async prefetch() {
    await this._startRefill();
    if (!this._pool.length && this._error) throw this._error;
  }

  /** One unspent token as {keyId, header}; waits only when the pool is empty. */
  async take() {
    while (!this._pool.length) {
      await this._startRefill();
      if (!this._pool.length && this._error) throw this._error;
    }
    const held = this._pool.shift();
    this.spent += 1;
    if (this._pool.length < this.lowWater) this._startRefill().catch(() => {});
    return held;
  }

  /**
   * Adopt a relay's PrivateToken challenge for this issuer (a different challenge empties the pool; a key this
   * wallet has not seen makes the next refill refetch the directory). True if there was one for this issuer.
   */
  learn(wwwAuthenticate) {
    for (const { challenge, raw, tokenKey } of parseChallenges(wwwAuthenticate)) {
      if (challenge.issuerName !== this.challenge.issuerName) continue;
      if (!equal(raw, this._raw)) {
        this.challenge = challenge;
        this._raw = raw;
        this._pool = [];
      }
      if (!this._directory || (tokenKey && !this._directory.keys.some((k) => equal(k.spki, tokenKey)))) {
        this._directoryUntil = 0;
      }
      return true;
    }
    return false;
  }

  /** Forget pooled tokens under keyId (a relay said they are no longer accepted). */
  dropKey(keyId) {
    this._pool = this._pool.filter((t) => !equal(t.keyId, keyId));
  }

  _startRefill() {
    if (!this._refill) {
      this._refill = this._fill().finally(() => {
        this._refill = null;
      });
    }
    return this._refill;
  }

  async _directoryNow() {
    if (this._directory && this._now() < this._directoryUntil) return this._directory;
    const res = await this._fetch(this.issuer + WELL_KNOWN_DIRECTORY, { headers: { Accept: "application/json" } });
    if (res.status !== 200) throw new TokenError(`the issuer's directory answered HTTP ${res.status}`);
    const doc = await res.json();
    if (typeof doc["issuer-request-uri"] !== "string" || !Array.isArray(doc["token-keys"])) {
      throw new TokenError("the issuer's directory is malformed");
    }
    const keys = doc["token-keys"]
      .filter((k) => k && k["token-type"] === TYPE && typeof k["token-key"] === "string")
      .map((k) => ({ spki: b64urlDecode(k["token-key"]), notBefore: Number(k["not-before"] || 0) }));
    // Through veil proxy only the path of the issuer's request URI is used, under this wallet's issuer base.
    const path = new URL(doc["issuer-request-uri"], "http://issuer.invalid/").pathname;
    const m = /max-age=(\d+)/.exec(res.headers.get("Cache-Control") || "");
    this._directory = { requestUrl: this.issuer + path, keys };
    this._directoryUntil = this._now() + Math.min(m ? Number(m[1]) : 60, 3600) * 1000;
    return this._directory;
  }

  async _fill() {
    this._error = null;
    try {
      for (let attempt = 0; attempt < 2; attempt++) {
        const directory = await this._directoryNow();
        const now = this._now() / 1000;
        const key = directory.keys.find((k) => k.notBefore <= now);
        if (!key) throw new TokenError("the issuer lists no usable key");
        const results = [];
        for (let i = 0; i < this.batch; i += this.concurrency) {
          const n = Math.min(this.concurrency, this.batch - i);
          results.push(...await Promise.allSettled(Array.from({ length: n }, () => this._one(directory, key))));
        }
        const got = results.filter((r) => r.status === "fulfilled").map((r) => r.value);
        this._pool.push(...got);
        this.issued += got.length;
        const errors = results.filter((r) => r.status === "rejected").map((r) => r.reason);
        if (got.length || !errors.length) return;
        if (errors[0] instanceof TokenError && errors[0].status === 422 && attempt === 0) {
          this._directoryUntil = 0; // the issuer rotated its keys: refetch and try once more
          continue;
        }
        throw errors[0];
      }
    } catch (err) {
      this._error = err instanceof TokenError ? err : new TokenError(`no tokens: ${err && err.message || err}`);
    }
  }

  async _one(directory, key) {
    const client = new publicVerif.Client(publicVerif.BlindRSAMode.PSS);
    const request = await client.createTokenRequest(this.challenge, key.spki);
    const res = await this._fetch(directory.requestUrl, {
      method: "POST",
      headers: { "Content-Type": MEDIA_TYPE_TOKEN_REQUEST, Accept: MEDIA_TYPE_TOKEN_RESPONSE },
      body: request.serialize(),
    });
    if (res.status !== 200) throw new TokenError(`the issuer answered HTTP ${res.status}`, res.status);
    const response = client.deserializeTokenResponse(new Uint8Array(await res.arrayBuffer()));
    const token = await client.finalize(response); // verified under the issuer's key before it is kept
    const bytes = token.serialize();
    return { keyId: token.authInput.tokenKeyId, header: authorization(bytes) };
  }
}

/** For tests: a serialized token's parts. */
export function decodeToken(bytes) {
  return Token.deserialize(TOKEN_TYPES.BLIND_RSA, bytes);
}
