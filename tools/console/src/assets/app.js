// The live console. Plain JS, no framework, nothing loaded from anywhere but the five services
// (their URLs come from /config.json). Every failed request is shown in the Errors panel, never
// only logged: the page must tell a person what went wrong.
"use strict";

const CONSUMERS = ["account", "email", "interest", "compliance"];
const LANE_ITEMS = 50;

const state = {
  config: null,
  // deposit_id -> what this page knows of a deposit it made
  deposits: new Map(),
  latest: null,
  lanes: {},
  // POSTs in flight: applied records of unknown deposits wait until they settle, because a fast
  // consumer can apply a deposit before its POST's answer reached this page.
  inflight: 0,
  held: [],
  // account_id -> { es, open: Promise }
  streams: new Map(),
  // deposit_id -> { arrived, data }: pushed completions that came before the POST's answer
  pushedEarly: new Map(),
  // account_id -> last balance_minor seen
  balances: new Map(),
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function now() {
  return performance.now();
}

function ms(value) {
  return Math.round(value) + " ms";
}

function showError(where, message) {
  $("errors-panel").hidden = false;
  const time = new Date().toISOString().slice(11, 23);
  $("errors").prepend(el("li", {}, el("time", {}, time), " ", el("b", {}, where), ": " + message));
}

// Minor units to a decimal string; the exponent of the currencies the demo offers.
function money(minor, currency) {
  const exponent = currency === "JPY" ? 0 : 2;
  if (exponent === 0) return minor + " " + currency;
  const sign = minor < 0 ? "-" : "";
  const abs = Math.abs(minor);
  const units = Math.floor(abs / 100);
  const cents = String(abs % 100).padStart(2, "0");
  return sign + units + "." + cents + " " + currency;
}

function problemText(r) {
  if (r.json && r.json.title) return r.status + " " + r.json.title + ": " + (r.json.detail || "");
  return r.status + " " + (r.text || "").slice(0, 200);
}

// One HTTP request; resolves with the status and the parsed body, rejects only when no answer
// came (the service down, or its CORS not allowing this page's origin).
async function request(method, url, body, headers) {
  const init = { method, headers: Object.assign({}, headers || {}) };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new Error(method + " " + url + " got no answer (" + e.message +
      "): the service is down, or its CORS_ALLOW_ORIGINS does not hold " + location.origin);
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  return { status: response.status, ok: response.ok, json, text, headers: response.headers };
}

function newKey() {
  if (window.crypto && typeof window.crypto.randomUUID === "function") return "console-" + crypto.randomUUID();
  return "console-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
}

// ---- lanes ---------------------------------------------------------------------------------

function buildLanes() {
  const lanes = $("lanes");
  for (const svc of CONSUMERS) {
    const list = el("ol", { class: "applied" });
    const status = el("span", { class: "status" }, "connecting…");
    const lag = el("p", { class: "lag", id: "lag-" + svc }, "lag: –");
    const lane = el("div", { class: "lane", id: "lane-" + svc, "data-service": svc, "data-pending": "0", "data-connected": "false" },
      el("h3", {}, svc, " ", status), lag, list);
    lanes.append(lane);
    state.lanes[svc] = { node: lane, list, status, lag, es: null, reported: false };
    connectLane(svc);
  }
}

function connectLane(svc) {
  const lane = state.lanes[svc];
  const url = state.config[svc] + "/applied";
  const es = new EventSource(url);
  lane.es = es;
  es.onopen = () => {
    lane.reported = false;
    lane.node.dataset.connected = "true";
    lane.status.textContent = "connected";
    lane.status.className = "status ok";
    // Nothing applied while this stream was closed is replayed: ask the service's own queries
    // about the deposits still pending here.
    reconcile(svc);
  };
  es.addEventListener("applied", (e) => {
    let record;
    try {
      record = JSON.parse(e.data);
    } catch (err) {
      showError(svc + " /applied", "an event that is not JSON: " + String(e.data).slice(0, 100));
      return;
    }
    record.arrived = now();
    receive(svc, record, "pushed");
  });
  es.addEventListener("lagged", (e) => {
    showError(svc + " /applied", "this page fell behind the stream and missed records (" + e.data + "); asking the service instead");
    reconcile(svc);
  });
  es.onerror = () => {
    const wasOpen = lane.node.dataset.connected === "true";
    lane.node.dataset.connected = "false";
    lane.status.className = "status down";
    // One line in the Errors panel per outage, not one per retry.
    const report = !lane.reported;
    lane.reported = true;
    if (es.readyState === EventSource.CLOSED) {
      // The browser gave up (an answer that is not a stream, or refused by CORS): start again
      // ourselves.
      lane.status.textContent = "failed; retrying";
      if (report) showError(svc, "GET " + url + " failed (the service down, or its CORS_ALLOW_ORIGINS does not hold " +
        location.origin + "); retrying every second");
      setTimeout(() => connectLane(svc), 1000);
    } else {
      lane.status.textContent = "disconnected; reconnecting";
      if (report) showError(svc, "GET " + url + (wasOpen ? ": connection lost" : " failed") + "; the browser reconnects");
    }
  };
}

function receive(svc, record, via) {
  if (!state.deposits.has(record.deposit_id) && state.inflight > 0) {
    state.held.push([svc, record, via]);
    return;
  }
  applied(svc, record, via);
}

function flushHeld() {
  if (state.inflight > 0) return;
  const held = state.held;
  state.held = [];
  for (const [svc, record, via] of held) applied(svc, record, via);
}

function applied(svc, record, via) {
  const lane = state.lanes[svc];
  const d = state.deposits.get(record.deposit_id);
  if (d && d.applied[svc] !== undefined) return; // already shown (pushed and found by a query)
  let timing;
  if (d) {
    d.applied[svc] = record.arrived - d.sentAt;
    timing = "+" + ms(d.applied[svc]) + " after the POST";
  } else {
    timing = "not from this page";
  }
  const detail = record.applied_at && record.created_at
    ? "applied " + ms(Date.parse(record.applied_at) - Date.parse(record.created_at)) + " after the event was created"
    : "found by a query after the stream reconnected";
  const item = el("li", { "data-deposit-id": record.deposit_id, "data-via": via, class: d ? "mine" : "" },
    el("b", {}, record.account_id + " #" + record.sequence + " " + money(record.amount_minor, record.currency)),
    el("span", { class: "timing" }, " " + timing),
    el("small", {}, detail));
  lane.list.prepend(item);
  while (lane.list.children.length > LANE_ITEMS) lane.list.lastChild.remove();
  if (!d) return;
  if (svc === "account") confirmOptimistic(d);
  if (d === state.latest && svc === "email") loadEmail(d);
  if (d === state.latest && svc === "compliance") loadCompliance(d.account_id);
}

// Deposits this page made that `svc` has not applied yet, oldest first.
function pendingIn(svc) {
  return [...state.deposits.values()].filter((d) => d.applied[svc] === undefined);
}

async function reconcile(svc) {
  const base = state.config[svc];
  for (const d of pendingIn(svc)) {
    let found = false;
    try {
      if (svc === "account") {
        const r = await request("GET", base + "/accounts/" + encodeURIComponent(d.account_id));
        if (r.ok) found = r.json.last_sequence >= d.sequence;
        else if (r.status !== 404) throw new Error(problemText(r));
      } else if (svc === "email") {
        const r = await request("GET", base + "/emails/" + d.event_id);
        if (r.ok) found = true;
        else if (r.status !== 404) throw new Error(problemText(r));
      } else if (svc === "compliance") {
        const r = await request("GET", base + "/compliance/audit?limit=1000&account_id=" + encodeURIComponent(d.account_id));
        if (!r.ok) throw new Error(problemText(r));
        found = r.json.items.some((i) => i.event_id === d.event_id);
      } else if (svc === "interest") {
        // Interest keeps balances, not event ids: applied once its balance has reached the
        // account's balance right after this deposit (deposits of an account apply in order).
        const r = await request("GET", base + "/interest/accounts/" + encodeURIComponent(d.account_id) + "/balance");
        if (r.ok) found = d.balanceAfter !== undefined && r.json.balance_minor >= d.balanceAfter;
        else if (r.status !== 404) throw new Error(problemText(r));
      }
    } catch (e) {
      showError(svc, "checking deposit " + d.account_id + " #" + d.sequence + ": " + e.message);
      continue;
    }
    if (found && d.applied[svc] === undefined) {
      applied(svc, {
        deposit_id: d.deposit_id, account_id: d.account_id, sequence: d.sequence,
        amount_minor: d.amount_minor, currency: d.currency, arrived: now(),
      }, "query");
    }
  }
}

function updateLag() {
  for (const svc of CONSUMERS) {
    const lane = state.lanes[svc];
    const pending = pendingIn(svc);
    lane.node.dataset.pending = String(pending.length);
    if (pending.length === 0) {
      lane.lag.textContent = "lag: 0, up to date";
      lane.lag.className = "lag";
    } else {
      const oldest = now() - Math.min(...pending.map((d) => d.sentAt));
      lane.lag.textContent = "lag: " + pending.length + (pending.length === 1 ? " deposit" : " deposits") +
        ", oldest " + (oldest / 1000).toFixed(1) + " s";
      lane.lag.className = "lag lagging";
    }
  }
}

// ---- forms ---------------------------------------------------------------------------------

async function openAccount(event) {
  event.preventDefault();
  const out = $("open-result");
  const body = { holder_name: $("open-holder").value, email: $("open-email").value, currency: $("open-currency").value };
  out.textContent = "opening…";
  try {
    const r = await request("POST", state.config.deposit + "/accounts", body, { "x-api-key": state.config.api_key });
    if (r.status !== 201 && r.status !== 200) {
      out.textContent = problemText(r);
      showError("open account", problemText(r));
      return;
    }
    out.textContent = "opened " + r.json.account_id + " (" + r.json.currency + ")";
    $("deposit-account").value = r.json.account_id;
    $("deposit-currency").value = r.json.currency;
  } catch (e) {
    out.textContent = e.message;
    showError("open account", e.message);
  }
}

async function submitDeposit(event) {
  event.preventDefault();
  const out = $("deposit-result");
  const account_id = $("deposit-account").value.trim();
  const amount = $("deposit-amount").value.trim();
  const currency = $("deposit-currency").value;
  // The pushed-completion panel needs its stream open before the POST, or it could miss it.
  await accountStream(account_id);
  const optimistic = showOptimistic(account_id, amount, currency);
  out.textContent = "posting…";
  state.inflight += 1;
  const sentAt = now();
  let r;
  try {
    r = await request("POST", state.config.deposit + "/deposits", { account_id, amount, currency },
      { "x-api-key": state.config.api_key, "idempotency-key": newKey() });
  } catch (e) {
    state.inflight -= 1;
    flushHeld();
    out.textContent = e.message;
    showError("deposit", e.message);
    rollBackOptimistic(optimistic, e.message);
    return;
  }
  state.inflight -= 1;
  if (r.status !== 201 && r.status !== 200) {
    flushHeld();
    out.textContent = problemText(r);
    showError("deposit", problemText(r));
    rollBackOptimistic(optimistic, problemText(r));
    return;
  }
  const d = Object.assign({}, r.json, { sentAt, answeredAfter: now() - sentAt, applied: {}, optimistic });
  state.deposits.set(d.deposit_id, d);
  state.latest = d;
  out.textContent = "accepted in " + ms(d.answeredAfter) + ": " + d.account_id + " #" + d.sequence + " " +
    d.amount + " " + d.currency + " (deposit " + d.deposit_id.slice(0, 8) + "…)";
  $("deposit-result").dataset.depositId = d.deposit_id;
  plainRead(d);
  readYourWrites(d);
  acceptOptimistic(d);
  $("read-pushed").querySelector(".out").textContent = "waiting for #" + d.sequence + "…";
  const early = state.pushedEarly.get(d.deposit_id);
  if (early) pushed(d, early.arrived, early.data);
  flushHeld();
  updateLag();
}

// ---- the four reads ------------------------------------------------------------------------

function setRead(id, text, cls) {
  const out = $(id).querySelector(".out");
  out.textContent = text;
  out.className = "out " + (cls || "");
}

async function plainRead(d) {
  const started = now();
  try {
    const r = await request("GET", state.config.account + "/accounts/" + encodeURIComponent(d.account_id));
    const took = ms(now() - started);
    if (r.status === 404) {
      setRead("read-plain", "stale: 404, the account service does not know " + d.account_id + " yet (" + took + ")", "stale");
    } else if (!r.ok) {
      setRead("read-plain", problemText(r), "stale");
      showError("plain read", problemText(r));
    } else if (r.json.last_sequence < d.sequence) {
      setRead("read-plain", "stale: balance " + r.json.balance + " " + r.json.currency + " at #" + r.json.last_sequence +
        ", without deposit #" + d.sequence + " (" + took + ")", "stale");
    } else {
      setRead("read-plain", "lucky: balance " + r.json.balance + " " + r.json.currency + " already at #" + r.json.last_sequence +
        " (" + took + "); nothing promised that", "fresh");
    }
  } catch (e) {
    setRead("read-plain", e.message, "stale");
    showError("plain read", e.message);
  }
}

async function readYourWrites(d) {
  const started = now();
  const url = state.config.account + "/accounts/" + encodeURIComponent(d.account_id) + "?min_sequence=" + d.sequence + "&wait=2s";
  try {
    const r = await request("GET", url);
    const took = ms(now() - started);
    if (!r.ok) {
      setRead("read-ryw", problemText(r) + " (" + took + ")", "stale");
      showError("read-your-writes", problemText(r));
      return;
    }
    if (r.json.last_sequence === d.sequence) d.balanceAfter = r.json.balance_minor;
    state.balances.set(d.account_id, r.json.balance_minor);
    setRead("read-ryw", "balance " + r.json.balance + " " + r.json.currency + " at #" + r.json.last_sequence +
      ", answered after " + took, "fresh");
  } catch (e) {
    setRead("read-ryw", e.message, "stale");
    showError("read-your-writes", e.message);
  }
}

function showOptimistic(account_id, amount, currency) {
  const known = state.balances.get(account_id);
  const entry = { account_id, amount, currency, known, shownAt: now() };
  setRead("read-optimistic", "pending: +" + amount + " " + currency + " to " + account_id +
    (known !== undefined ? " (expected balance " + expected(known, amount, currency) + ")" : "") + ", shown before any answer", "pending");
  return entry;
}

function expected(knownMinor, amount, currency) {
  const exponent = currency === "JPY" ? 0 : 2;
  const minor = Math.round(Number(amount) * Math.pow(10, exponent));
  return Number.isFinite(minor) ? money(knownMinor + minor, currency) : "?";
}

function acceptOptimistic(d) {
  if (d !== state.latest || d.applied.account !== undefined) return;
  setRead("read-optimistic", "pending: +" + d.amount + " " + d.currency + " accepted as #" + d.sequence +
    ", waiting for the account service to apply it", "pending");
}

function confirmOptimistic(d) {
  if (d !== state.latest) return;
  setRead("read-optimistic", "confirmed: +" + d.amount + " " + d.currency + " #" + d.sequence + " applied by account " +
    ms(d.applied.account) + " after the POST (pending for that long)", "fresh");
}

function rollBackOptimistic(entry, why) {
  setRead("read-optimistic", "rolled back: +" + entry.amount + " " + entry.currency + " to " + entry.account_id + " failed: " + why, "stale");
}

// The account's change stream, opened once per account and kept.
function accountStream(account_id) {
  const existing = state.streams.get(account_id);
  if (existing) return existing.open;
  const url = state.config.account + "/accounts/" + encodeURIComponent(account_id) + "/stream";
  const es = new EventSource(url);
  let opened;
  const open = new Promise((resolve) => { opened = resolve; });
  // Never wait long: a deposit must not hang on a stream that does not open.
  const timer = setTimeout(() => {
    opened();
    setRead("read-pushed", "the stream did not open within 2 s: " + url, "stale");
  }, 2000);
  es.onopen = () => { clearTimeout(timer); opened(); };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      clearTimeout(timer);
      opened();
      state.streams.delete(account_id);
      showError("pushed completion", "GET " + url + " failed (no such account?)");
    }
  };
  const onState = (e) => {
    try {
      const data = JSON.parse(e.data);
      state.balances.set(account_id, data.balance_minor);
    } catch (_) {
      showError("pushed completion", "an event that is not JSON on " + url);
    }
  };
  es.addEventListener("state", onState);
  es.addEventListener("deposited", (e) => {
    let data;
    try {
      data = JSON.parse(e.data);
    } catch (_) {
      showError("pushed completion", "an event that is not JSON on " + url);
      return;
    }
    state.balances.set(account_id, data.balance_minor);
    const arrived = now();
    const d = state.deposits.get(data.deposit_id);
    if (d) pushed(d, arrived, data);
    else state.pushedEarly.set(data.deposit_id, { arrived, data });
  });
  state.streams.set(account_id, { es, open });
  return open;
}

function pushed(d, arrived, data) {
  d.balanceAfter = data.balance_minor;
  if (d !== state.latest) return;
  setRead("read-pushed", "pushed: #" + data.sequence + " applied, balance " + data.balance + " " + data.currency + ", " +
    ms(arrived - d.sentAt) + " after the POST, on a response opened before it", "fresh");
}

// ---- email and compliance ------------------------------------------------------------------

async function loadEmail(d) {
  try {
    const r = await request("GET", state.config.email + "/emails/" + d.event_id);
    if (!r.ok) {
      $("email-meta").textContent = problemText(r);
      showError("email", problemText(r));
      return;
    }
    const m = r.json;
    $("email-meta").textContent = "To " + m.to_name + " <" + m.to + ">: \u201c" + m.subject + "\u201d, " + m.status +
      " (attempts " + m.attempts + "), Message-ID " + m.message_id;
    // Sandboxed (no scripts, no navigation): the HTML is shown exactly as rendered.
    $("email-frame").srcdoc = m.body_html;
  } catch (e) {
    $("email-meta").textContent = e.message;
    showError("email", e.message);
  }
}

async function loadCompliance(account_id) {
  const base = state.config.compliance;
  try {
    const query = account_id ? "?account_id=" + encodeURIComponent(account_id) + "&limit=1000" : "?limit=1000";
    const [alerts, verify] = await Promise.all([
      request("GET", base + "/compliance/alerts" + query),
      request("GET", base + "/compliance/verify"),
    ]);
    if (!alerts.ok) throw new Error("alerts: " + problemText(alerts));
    if (!verify.ok) throw new Error("verify: " + problemText(verify));
    const body = $("alerts").querySelector("tbody");
    body.replaceChildren();
    const items = alerts.json.items.slice(-10).reverse();
    if (items.length === 0) body.append(el("tr", {}, el("td", { colSpan: 5 }, "no alerts" + (account_id ? " for " + account_id : ""))));
    for (const a of items) {
      body.append(el("tr", {}, el("td", {}, "#" + a.id), el("td", {}, a.kind), el("td", {}, a.account_id),
        el("td", {}, money(a.amount_minor, a.currency)), el("td", {}, a.created_at.slice(0, 19).replace("T", " "))));
    }
    const v = verify.json;
    const chain = $("chain");
    if (v.ok) {
      chain.textContent = "audit chain intact: " + v.entries + (v.entries === 1 ? " entry" : " entries") + ", head #" + v.head_position + " " + String(v.head_hash).slice(0, 16) + "…";
      chain.className = "result fresh";
    } else {
      chain.textContent = "audit chain BROKEN at entry " + v.first_broken_position + ": " + JSON.stringify(v.reason);
      chain.className = "result stale";
    }
  } catch (e) {
    $("chain").textContent = e.message;
    showError("compliance", e.message);
  }
}

// ---- start ---------------------------------------------------------------------------------

async function start() {
  let r;
  try {
    r = await request("GET", "config.json");
  } catch (e) {
    showError("config", e.message);
    document.body.dataset.ready = "error";
    return;
  }
  if (!r.ok || !r.json) {
    showError("config", "config.json: " + problemText(r));
    document.body.dataset.ready = "error";
    return;
  }
  state.config = r.json;
  buildLanes();
  $("open-form").addEventListener("submit", openAccount);
  $("deposit-form").addEventListener("submit", submitDeposit);
  $("compliance-refresh").addEventListener("click", () => loadCompliance(state.latest ? state.latest.account_id : null));
  setInterval(updateLag, 250);
  updateLag();
  loadCompliance(null);
  document.body.dataset.ready = "1";
}

start();
