// The chat page: verifies the gateway through the relay, then streams replies token by token. All network traffic
// to the relay is OHTTP made by client.js; this file is the UI only. Model output is only ever set as text.

import { VeilClient, VeilError } from "./client.js";
import { parseTransparencyConfig } from "./transparency.js";

const $ = (id) => document.getElementById(id);
const ui = {
  banner: $("sim-banner"), model: $("model"), newChat: $("new-chat"), toggleTrust: $("toggle-trust"),
  trustDot: $("trust-dot"), messages: $("messages"), empty: $("empty-state"), composer: $("composer"),
  input: $("input"), send: $("send"), stop: $("stop"), panel: $("trust-panel"), verdict: $("trust-verdict"),
  platform: $("trust-platform"), measurement: $("trust-measurement"), keyId: $("trust-key-id"), kem: $("trust-kem"),
  suite: $("trust-suite"), expiry: $("trust-key-expiry"), issued: $("trust-issued"), relay: $("trust-relay"),
  release: $("trust-release"), logPos: $("trust-log"),
  checks: $("trust-checks"), error: $("trust-error"), reverify: $("reverify"), closeTrust: $("close-trust"),
};

const state = { client: null, history: [], controller: null, ready: false, relayLabel: null };

function setText(el, text) {
  el.textContent = text;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

function date(ms) {
  return `${new Date(ms).toLocaleDateString([], { day: "numeric", month: "short", year: "numeric" })} ${time(ms)}`;
}

// ---------------------------------------------------------------------------------------------------------------
// Trust panel

const ICONS = { pass: "✓", warn: "!", fail: "✗", "not-verified": "–" };

function renderTrust(client, pendingText) {
  const t = client && client.trust;
  const v = t && t.verdict;
  ui.banner.hidden = !(v && v.simulated);
  document.body.classList.toggle("simulated", Boolean(v && v.simulated));
  let verdict = ["pending", pendingText || "checking…"];
  if (t && t.accepted) verdict = v.simulated ? ["simulated", "SIMULATED"] : ["verified", "Verified"];
  else if (t && t.error) verdict = ["refused", "Refused"];
  ui.verdict.className = `pill ${verdict[0]}`;
  setText(ui.verdict, verdict[1]);
  ui.trustDot.className = `dot ${verdict[0]}`;
  setText(ui.relay, client ? state.relayLabel || client.relay : "–");
  if (!t) return;
  setText(ui.platform, v ? (v.simulated ? "simulated (no TEE)" : v.platform) : "–");
  setText(ui.measurement, v && v.measurement ? v.measurement : "–");
  ui.measurement.title = v && v.measurement ? "launch measurement (48 bytes, hex)" +
    (v.simulated ? ": for simulated evidence a fixed label, not a real launch digest" : "") : "";
  setText(ui.keyId, t.config ? `id ${t.keyId} · ${t.keysBody.length}-byte key list` : "–");
  // The KEM the requests use: X-Wing whenever the gateway offers it; the title lists every bound configuration.
  setText(ui.kem, t.kemName ? `${t.kemName} · ${t.postQuantum ? "post-quantum" : "not post-quantum"}` : "–");
  ui.kem.dataset.postQuantum = String(Boolean(t.postQuantum));
  ui.kem.title = v && v.keyConfigs ? "offered: " + v.keyConfigs.map((c) => `key ${c.keyId} ${c.kemName}`).join(", ") : "";
  setText(ui.suite, t.suiteName || "–");
  setText(ui.expiry, t.maxAge === null
    ? "no max-age: fetched again before each request"
    : `max-age ${t.maxAge} s (Cache-Control)\nfetched again after ${time(t.expiresAt)}`);
  // With a publisher configured: the release that admitted the gateway and where its key sits in the log.
  const lg = t.log;
  if (!client.transparency) {
    setText(ui.release, "no publisher configured");
    setText(ui.logPos, "no log configured");
  } else {
    const rel = lg && lg.release;
    setText(ui.release, rel ? `${rel.name}\nvalid ${date(rel.notBefore * 1000)} – ${date(rel.notAfter * 1000)}` +
      `\npublisher ${rel.publisher}` : "–");
    const cp = lg && lg.checkpoint;
    setText(ui.logPos, cp ? (lg.keyIndex !== null ? `key configuration at index ${lg.keyIndex} of ${cp.size}\n` : "") +
      `${cp.origin} · size ${cp.size}` : "–");
  }
  setText(ui.issued, v && v.issuedAt ? `issued ${date(v.issuedAt * 1000)}\nfetched ${time(t.fetchedAt)}`
    : `fetched ${time(t.fetchedAt)}`);
  ui.checks.replaceChildren(...(v ? v.checks : []).map((c) => {
    const li = document.createElement("li");
    li.className = `check ${c.status}`;
    li.dataset.status = c.status;
    const icon = document.createElement("span");
    icon.className = "icon";
    icon.textContent = ICONS[c.status] || "?";
    const body = document.createElement("div");
    const name = document.createElement("b");
    name.textContent = c.name;
    const detail = document.createElement("span");
    detail.textContent = c.detail;
    body.append(name, detail);
    li.append(icon, body);
    return li;
  }));
  ui.error.hidden = !t.error;
  setText(ui.error, t.error || "");
}

function showFatal(message) {
  ui.error.hidden = false;
  setText(ui.error, message);
  ui.verdict.className = "pill refused";
  setText(ui.verdict, "Refused");
  ui.trustDot.className = "dot refused";
}

function setReady(ready) {
  state.ready = ready;
  ui.input.disabled = !ready;
  ui.model.disabled = !ready;
  updateButtons();
}

function updateButtons() {
  const busy = state.controller !== null;
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.send.disabled = !state.ready || !ui.input.value.trim();
  document.body.classList.toggle("busy", busy);
}

async function verify() {
  renderTrust(state.client, "checking…");
  try {
    await state.client.refresh();
    renderTrust(state.client);
    return true;
  } catch (err) {
    renderTrust(state.client);
    if (!state.client.trust || !state.client.trust.error) showFatal(err.message);
    setReady(false);
    return false;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Models

async function loadModels() {
  const res = await state.client.request("GET", "/v1/models", { headers: [["accept", "application/json"]] });
  if (res.status !== 200) throw new VeilError(`listing models failed: HTTP ${res.status}`);
  const ids = JSON.parse(new TextDecoder().decode(res.body)).data.map((m) => m.id);
  ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
  renderTrust(state.client);
}

// ---------------------------------------------------------------------------------------------------------------
// Conversation

function addMessage(role, text) {
  ui.empty.hidden = true;
  const wrap = document.createElement("div");
  wrap.className = `msg ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : role === "assistant" ? ui.model.value || "Assistant" : "Veil";
  const content = document.createElement("div");
  content.className = "content";
  const node = document.createTextNode(text);
  content.append(node);
  wrap.append(who, content);
  ui.messages.append(wrap);
  scrollDown(true);
  return { wrap, content, node };
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollDown(force) {
  if (force || nearBottom()) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function note(msg, text, kind) {
  const n = document.createElement("div");
  n.className = `note ${kind || ""}`;
  n.textContent = text;
  msg.wrap.append(n);
}

// Server-sent events from the decrypted pieces: yields the data of each event as it completes.
async function* sseData(pieces) {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const piece of pieces) {
    buf += decoder.decode(piece, { stream: true });
    let m;
    while ((m = /\r?\n\r?\n/.exec(buf))) {
      const event = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart());
      if (data.length) yield data.join("\n");
    }
  }
}

async function send() {
  const text = ui.input.value.trim();
  if (!text || !state.ready || state.controller) return;
  ui.input.value = "";
  autosize();
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant", "");
  reply.wrap.classList.add("streaming");
  const controller = new AbortController();
  state.controller = controller;
  updateButtons();
  let got = "";
  try {
    const body = JSON.stringify({ model: ui.model.value, messages: state.history, stream: true });
    const res = await state.client.request("POST", "/v1/chat/completions", {
      headers: [["content-type", "application/json"], ["accept", "text/event-stream"]],
      body, stream: true, signal: controller.signal,
    });
    if (res.status !== 200) {
      let raw = "";
      for await (const p of res.pieces) raw += new TextDecoder().decode(p);
      let message = raw;
      try {
        message = JSON.parse(raw).error.message;
      } catch { /* not JSON: show it as it is */ }
      throw new VeilError(`the gateway answered ${res.status}: ${message}`);
    }
    for await (const data of sseData(res.pieces)) {
      if (data === "[DONE]") break;
      const event = JSON.parse(data);
      if (event.error) throw new VeilError(event.error.message || "the stream failed");
      for (const choice of event.choices || []) {
        const piece = (choice.delta && choice.delta.content) || "";
        if (piece) {
          got += piece;
          reply.node.appendData(piece);
          scrollDown(false);
        }
      }
    }
    reply.wrap.classList.add("done");
  } catch (err) {
    if (err && err.name === "AbortError") {
      note(reply, "stopped", "stopped");
      reply.wrap.classList.add("stopped");
    } else {
      note(reply, err.message || String(err), "error");
      reply.wrap.classList.add("failed");
    }
  } finally {
    reply.wrap.classList.remove("streaming");
    if (got) state.history.push({ role: "assistant", content: got });
    else if (!reply.wrap.classList.contains("done")) state.history.pop(); // nothing came back: forget the question
    state.controller = null;
    updateButtons();
    renderTrust(state.client);
    ui.input.focus();
  }
}

function stop() {
  if (state.controller) state.controller.abort();
}

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 220)}px`;
}

// ---------------------------------------------------------------------------------------------------------------
// Wiring

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  send();
});
ui.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send();
  } else if (e.key === "Escape") {
    stop();
  }
});
ui.input.addEventListener("input", () => {
  autosize();
  updateButtons();
});
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape") stop();
});
ui.stop.addEventListener("click", stop);
ui.newChat.addEventListener("click", () => {
  stop();
  state.history = [];
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  ui.input.focus();
});
// Wide screens show the trust panel beside the chat (the button hides it); narrow ones open it over the chat.
const narrow = window.matchMedia("(max-width: 900px)");
ui.toggleTrust.addEventListener("click", () => {
  const cls = narrow.matches ? "trust-open" : "trust-hidden";
  const on = document.body.classList.toggle(cls);
  ui.toggleTrust.setAttribute("aria-expanded", String(narrow.matches ? on : !on));
});
ui.closeTrust.addEventListener("click", () => {
  document.body.classList.remove("trust-open");
  ui.toggleTrust.setAttribute("aria-expanded", "false");
});
ui.reverify.addEventListener("click", async () => {
  if (await verify()) setReady(true);
});

async function boot() {
  if (!globalThis.crypto || !crypto.subtle) {
    showFatal("This page needs a secure context (https, or http on localhost/127.0.0.1) for WebCrypto.");
    return;
  }
  let config;
  try {
    const res = await fetch("veil-config.json", { cache: "no-store", credentials: "same-origin" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    config = await res.json();
  } catch (err) {
    showFatal(`Cannot load veil-config.json from the server that served this page: ${err.message}`);
    return;
  }
  // Served by veil proxy, the page sends its ciphertext to the proxy's same-origin /relay path, which forwards it to
  // the relay unchanged (so the relay needs no CORS rule); the panel names the relay it reaches.
  state.relayLabel = config.relay_upstream ? `${config.relay_upstream} (through veil proxy)` : null;
  // require_post_quantum (optional): refuse a gateway that offers no X-Wing key configuration.
  // tokens (when veil proxy has --issuer): the relay requires Privacy Pass; the page blinds, finalizes and spends
  // tokens itself, fetched ahead of need through the proxy's same-origin /issuer path.
  let tokens = null;
  if (config.tokens && config.tokens.issuer && config.tokens.issuer_name) {
    const { TokenWallet } = await import("./tokens.js"); // loaded (with its bundle) only when tokens are needed
    tokens = new TokenWallet({ issuer: config.tokens.issuer, issuerName: config.tokens.issuer_name });
    tokens.prefetch().catch((err) => console.warn(`no Privacy Pass tokens yet: ${err.message}`));
  }
  // transparency (veil proxy --publisher --log --log-key): the gateway's evidence must carry valid log proofs.
  let transparency = null;
  if (config.transparency) {
    try {
      transparency = await parseTransparencyConfig(config.transparency);
    } catch (err) {
      showFatal(`The transparency settings in veil-config.json are invalid: ${err.message}`);
      return;
    }
  }
  state.client = new VeilClient({ relay: config.relay, allowSimulated: Boolean(config.allow_simulated),
    requirePostQuantum: config.require_post_quantum === true, tokens, transparency });
  if (!(await verify())) return;
  try {
    await loadModels();
  } catch (err) {
    showFatal(`Verified, but listing models failed: ${err.message}`);
    return;
  }
  setReady(true);
  ui.input.focus();
}

boot();
