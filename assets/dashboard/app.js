// Berth dashboard: polls the admin API every 2 s and draws what it says. No framework, no
// network beyond this origin. Every string from the API goes in as text (textContent), never
// as markup: the page keeps the operator's token, so it must not run anything it is sent.
"use strict";

const POLL_MS = 2000;
/** A poll that takes longer than this counts as a failure: the page turns stale. */
const TIMEOUT_MS = 3000;
const TOKEN_KEY = "berth-admin-token";
const RCODES = ["NOERROR", "NXDOMAIN", "REFUSED", "SERVFAIL", "FORMERR", "NOTIMP"];
const MAX_EVENTS = 50;
const SVG_NS = "http://www.w3.org/2000/svg";

const STATE_TEXT = {
  healthy: "healthy",
  down: "down",
  "failing-open": "down, failing open",
  draining: "draining",
  disabled: "disabled",
  unknown: "not probed yet",
};

const page = {
  /** The last /api/v1/regions answer. */
  data: null,
  /** The counters of the previous poll and when it was taken, for per-second rates. */
  prev: null,
  /** Rates computed from the last two polls: by region name, and by rcode. */
  rates: { regions: {}, queries: {} },
  /** Per region, the rates of the last polls (oldest first), for the sparklines. */
  history: {},
  /** When the last poll succeeded, and since when polls fail (null while they succeed). */
  lastOk: null,
  failingSince: null,
  /** Events, oldest first, and the sequence number of the newest one. */
  events: [],
  lastSeq: 0,
  lastEventAt: 0,
  /** Regions whose switch has a change in flight: polls must not flip them back meanwhile. */
  pending: new Set(),
  /** The region names the table and map were built for (rebuilt when a reload changes them). */
  builtFor: "",
  routedNames: "",
};

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function s(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    /** The HTTP status, or 0 when there was no answer at all. */
    this.status = status;
  }
}

/** A request to the admin API with the token (if any); JSON back, or an ApiError. */
async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let resp;
  let text;
  try {
    resp = await fetch(path, { ...options, headers, signal: abort.signal, cache: "no-store" });
    text = await resp.text();
  } catch (e) {
    throw new ApiError(0, abort.signal.aborted ? `no answer within ${TIMEOUT_MS / 1000} s` : "cannot connect");
  } finally {
    clearTimeout(timer);
  }
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    body = null;
  }
  if (!resp.ok) throw new ApiError(resp.status, (body && body.error) || `HTTP ${resp.status}`);
  return body;
}

// ---- formatting -----------------------------------------------------------------------------

function clock(ms) {
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  if (new Date().toDateString() === d.toDateString()) return time;
  return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
}

function count(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "–";
}

/** A rate: "–" when the API has no such figure, "…" until two polls gave one. */
function perSecond(present, rate) {
  if (!present) return "–";
  if (rate === null || rate === undefined) return "…";
  if (rate === 0) return "0";
  return rate < 10 ? rate.toFixed(1) : Math.round(rate).toLocaleString("en-US");
}

/** "12.5/s", but a bare "–" or "…" when there is no number. */
function withUnit(text, unit) {
  return /\d/.test(text) ? text + unit : text;
}

function bytesPerSecond(present, rate) {
  if (!present) return "–";
  if (rate === null || rate === undefined) return "…";
  const units = ["B/s", "kB/s", "MB/s", "GB/s"];
  let v = rate;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i += 1;
  }
  return (i === 0 ? Math.round(v) : v.toFixed(1)) + " " + units[i];
}

// ---- state of a region ------------------------------------------------------------------------

/** The regions of routed names that are failing open: answered although they are down. */
function failingOpen(data) {
  const set = new Set();
  for (const n of data.routed_names || []) if (n.fail_open) for (const r of n.regions) set.add(r);
  return set;
}

/** A region's proxy figures as the API serves them (`proxy: {requests: {GET: n, ...},
 * bytes_in, bytes_out, upload_sessions}`), or null from a server without a proxy. */
function proxyOf(r) {
  const p = r.proxy;
  const running = page.data && page.data.proxy && page.data.proxy.running;
  if (!running || !p || typeof p !== "object") return null;
  const requests = Object.values(p.requests || {}).reduce((a, n) => a + n, 0);
  return { requests, bytes: (p.bytes_in || 0) + (p.bytes_out || 0), uploads: p.upload_sessions || 0 };
}

function regionState(r, open) {
  const px = proxyOf(r);
  if (!r.endpoint_enabled) return px && px.uploads > 0 ? "draining" : "disabled";
  if (r.health === "down" || !r.healthy) return open.has(r.name) ? "failing-open" : "down";
  if (r.health === "unknown") return "unknown";
  return "healthy";
}

// ---- rates ------------------------------------------------------------------------------------

function sample(data) {
  const regions = {};
  for (const r of data.regions) {
    const px = proxyOf(r);
    regions[r.name] = { answers: r.answers, proxy_requests: px ? px.requests : undefined, proxy_bytes: px ? px.bytes : undefined };
  }
  return { t: performance.now() / 1000, regions, queries: { ...data.queries } };
}

function rate(cur, prev, dt) {
  if (typeof cur !== "number" || typeof prev !== "number" || dt <= 0 || cur < prev) return null;
  return (cur - prev) / dt;
}

function updateRates(next) {
  const prev = page.prev;
  page.prev = next;
  page.rates = { regions: {}, queries: {} };
  if (!prev) return;
  const dt = next.t - prev.t;
  for (const [name, c] of Object.entries(next.regions)) {
    const p = prev.regions[name] || {};
    page.rates.regions[name] = {
      answers: rate(c.answers, p.answers, dt),
      proxy_requests: rate(c.proxy_requests, p.proxy_requests, dt),
      proxy_bytes: rate(c.proxy_bytes, p.proxy_bytes, dt),
    };
  }
  for (const [code, n] of Object.entries(next.queries)) page.rates.queries[code] = rate(n, prev.queries[code], dt);
  remember(page.rates.regions);
}

// ---- history ----------------------------------------------------------------------------------

/** Samples kept for the sparklines: 150 polls of 2 s, the last 5 minutes. Kept in the page
 * only (a reload starts afresh). */
const HISTORY = 150;

function remember(rates) {
  for (const [name, r] of Object.entries(rates)) {
    const h = page.history[name] || (page.history[name] = []);
    h.push({ answers: r.answers || 0, proxy: r.proxy_requests || 0 });
    if (h.length > HISTORY) h.shift();
  }
}

/** A small SVG line chart of DNS answers/s and proxy requests/s, scaled to its own maximum. */
function sparkline(samples) {
  const W = 120;
  const H = 24;
  const svg = s("svg", { class: "spark", viewBox: `0 0 ${W} ${H}`, width: W, height: H, "aria-hidden": "true" });
  const max = Math.max(1e-9, ...samples.map((x) => Math.max(x.answers, x.proxy)));
  for (const key of ["answers", "proxy"]) {
    const pts = samples.map((x, i) => {
      const px = samples.length > 1 ? (i * W) / (HISTORY - 1) : 0;
      return `${px.toFixed(1)},${(H - 1 - (x[key] / max) * (H - 2)).toFixed(1)}`;
    });
    svg.append(s("polyline", { class: `spark-${key}`, points: pts.join(" ") }));
  }
  return svg;
}

// ---- map --------------------------------------------------------------------------------------

/** Equirectangular: one user unit per degree, x = lon + 180, y = 90 - lat. */
function project(lat, lon) {
  return [lon + 180, 90 - lat];
}

function drawGraticule() {
  const g = $("graticule");
  for (let lon = -150; lon <= 150; lon += 30) {
    const [x] = project(0, lon);
    g.append(s("line", { x1: x, y1: 0, x2: x, y2: 180 }));
  }
  for (let lat = -60; lat <= 60; lat += 30) {
    const [, y] = project(lat, 0);
    g.append(s("line", { x1: 0, y1: y, x2: 360, y2: y, class: lat === 0 ? "equator" : "" }));
  }
}

function buildMarkers(regions) {
  const g = $("markers");
  g.replaceChildren();
  for (const r of regions) {
    const [x, y] = project(r.latitude, r.longitude);
    const m = s("g", { class: "marker", "data-region": r.name, transform: `translate(${x} ${y})`, role: "img" });
    const title = s("title", {});
    // Labels go left of markers near the right edge (room for ~11 px glyphs on phones).
    const right = x + 6 + r.name.length * 6 > 360;
    const label = s("text", { x: right ? -5 : 5, y: 2, "text-anchor": right ? "end" : "start" });
    label.textContent = r.name;
    m.append(title, s("circle", { class: "halo", r: 5.5 }), s("circle", { class: "dot", r: 3.2 }), label);
    g.append(m);
  }
}

function updateMarkers(data, open) {
  for (const r of data.regions) {
    const m = document.querySelector(`#markers .marker[data-region="${CSS.escape(r.name)}"]`);
    if (!m) continue;
    const st = regionState(r, open);
    m.setAttribute("data-state", st);
    m.setAttribute("class", `marker state-${st}`);
    m.setAttribute("aria-label", `${r.name}: ${STATE_TEXT[st]}`);
    m.querySelector("title").textContent = `${r.name}: ${STATE_TEXT[st]} (${r.latitude}, ${r.longitude})`;
  }
}

// ---- region table -----------------------------------------------------------------------------

const COLUMNS = [
  "Region", "Enabled", "State", "Health", "Probe latency", "DNS answers/s",
  "Proxy requests/s", "Proxy bytes/s", "Upload sessions", "Last probe error", "Last 5 minutes",
];

function buildRows(regions) {
  const body = $("region-rows");
  body.replaceChildren();
  for (const r of regions) {
    const sw = h("input", {
      type: "checkbox",
      role: "switch",
      class: "switch",
      id: `switch-${r.name}`,
      "data-region": r.name,
      "aria-label": `${r.name}: endpoint enabled`,
    });
    sw.addEventListener("change", () => toggle(r.name, sw));
    const row = h(
      "tr",
      { "data-region": r.name },
      h("th", { scope: "row", "data-label": COLUMNS[0] }, r.name),
      h("td", { "data-label": COLUMNS[1], class: "enabled" }, sw),
      h("td", { "data-label": COLUMNS[2], class: "state" }, h("span", { class: "badge" }), h("small", { class: "flag-note" })),
      h("td", { "data-label": COLUMNS[3], class: "health" }),
      h("td", { "data-label": COLUMNS[4], class: "latency num" }),
      h("td", { "data-label": COLUMNS[5], class: "answers num" }),
      h("td", { "data-label": COLUMNS[6], class: "proxy-requests num" }),
      h("td", { "data-label": COLUMNS[7], class: "proxy-bytes num" }),
      h("td", { "data-label": COLUMNS[8], class: "sessions num" }),
      h("td", { "data-label": COLUMNS[9], class: "error" }),
      h("td", { "data-label": COLUMNS[10], class: "trend" }),
    );
    body.append(row);
  }
}

function updateRows(data, open) {
  for (const r of data.regions) {
    const row = document.querySelector(`#region-rows tr[data-region="${CSS.escape(r.name)}"]`);
    if (!row) continue;
    const st = regionState(r, open);
    const rates = page.rates.regions[r.name] || {};
    row.setAttribute("data-state", st);
    row.className = `state-${st}`;
    const cell = (cls) => row.querySelector(`.${cls}`);
    const sw = cell("enabled").querySelector("input");
    if (!page.pending.has(r.name)) sw.checked = r.endpoint_enabled;
    const badge = cell("state").querySelector(".badge");
    badge.textContent = STATE_TEXT[st];
    badge.className = `badge state-${st}`;
    cell("state").querySelector(".flag-note").textContent = flagNote(r.flag);
    cell("health").textContent = r.health;
    cell("latency").textContent =
      typeof r.probe_latency_ms === "number" ? `${r.probe_latency_ms.toFixed(1)} ms` : "–";
    cell("answers").textContent = perSecond(true, rates.answers);
    cell("answers").title = `${count(r.answers)} routed answers since start`;
    const px = proxyOf(r);
    cell("proxy-requests").textContent = perSecond(px !== null, rates.proxy_requests);
    cell("proxy-requests").title = px ? `${count(px.requests)} proxied requests since start` : "";
    cell("proxy-bytes").textContent = bytesPerSecond(px !== null, rates.proxy_bytes);
    cell("sessions").textContent = px ? count(px.uploads) : "–";
    const hist = page.history[r.name] || [];
    const trend = cell("trend");
    trend.replaceChildren(sparkline(hist));
    trend.title = `DNS answers/s (solid) and proxy requests/s (dashed), last ${Math.round((hist.length * POLL_MS) / 1000)} s`;
    const err = cell("error");
    err.textContent = r.last_error || "–";
    err.title = r.last_error || "";
  }
}

// ---- totals -----------------------------------------------------------------------------------

function updateTotals(data) {
  const rows = RCODES.map((code) => {
    const total = data.queries ? data.queries[code] : undefined;
    return h(
      "tr",
      { "data-rcode": code },
      h("th", { scope: "row" }, code),
      h("td", { class: "num" }, withUnit(perSecond(typeof total === "number", page.rates.queries[code]), "/s")),
      h("td", { class: "num total" }, `${count(total)} total`),
    );
  });
  $("rcodes").replaceChildren(...rows);

  const open = (data.routed_names || []).filter((n) => n.fail_open);
  const fo = $("fail-open");
  fo.className = open.length ? "bad" : "";
  fo.textContent = open.length
    ? `yes: ${open.map((n) => n.name).join(", ")} (no enabled region is healthy; answering as if all were)`
    : "no";

  $("sticky").textContent = `${count(data.sticky_entries)} ${data.sticky_entries === 1 ? "client" : "clients"}`;
  const aff = $("affinity");
  const proxy = data.proxy && data.proxy.running ? data.proxy : null;
  aff.textContent = proxy ? `${count(proxy.affinity_entries)} entries` : "–";
  aff.title = proxy ? "" : "no proxy figures from this server";
  $("generation").textContent = String(data.generation);

  const rl = $("reload");
  const r = data.last_reload;
  rl.replaceChildren();
  rl.className = "";
  if (!r) {
    rl.textContent = "none since start";
  } else if (r.ok) {
    rl.append(`ok at ${clock(r.at_ms)}, generation ${r.generation}`);
  } else {
    rl.className = "bad";
    rl.append(`rejected at ${clock(r.at_ms)}; generation ${r.generation} keeps serving:`, h("br"),
      h("code", { class: "reload-error" }, r.error || "(no error text)"));
  }
}

function updateRoutedNames(data) {
  const names = (data.routed_names || []).map((n) => n.name);
  if (names.join(" ") === page.routedNames) return;
  page.routedNames = names.join(" ");
  const sel = $("why-name");
  const keep = sel.value;
  sel.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  if (names.includes(keep)) sel.value = keep;
}

// ---- events -----------------------------------------------------------------------------------

function renderEvents() {
  const list = $("events");
  const shown = page.events.slice(-MAX_EVENTS).reverse();
  list.replaceChildren(
    ...shown.map((e) =>
      h(
        "li",
        { class: `event kind-${e.kind}`, "data-kind": e.kind },
        h("time", { datetime: new Date(e.at_ms).toISOString() }, clock(e.at_ms)),
        h("span", { class: "kind" }, e.kind.replace(/-/g, " ")),
        e.region ? h("span", { class: "region" }, e.region) : "",
        // [cluster]: which instance saw it (the list is shared by every instance).
        e.instance ? h("span", { class: "instance", title: "seen by instance" }, `@${e.instance}`) : "",
        h("span", { class: "detail" }, e.detail),
      ),
    ),
  );
  $("events-empty").hidden = shown.length > 0;
}

/**
 * New events since the last poll. Asks from one before the newest it has: if that one does not
 * come back unchanged, the server restarted (its numbering began again), so start over.
 */
async function pollEvents() {
  const after = Math.max(0, page.lastSeq - 1);
  const got = (await api(`/api/v1/events?after=${after}`)).events || [];
  let fresh = got;
  if (page.lastSeq > 0) {
    const anchor = got.find((e) => e.seq === page.lastSeq);
    if (anchor && anchor.at_ms === page.lastEventAt) {
      fresh = got.filter((e) => e.seq > page.lastSeq);
    } else {
      page.events = [];
      fresh = (await api("/api/v1/events?after=0")).events || [];
    }
  }
  if (fresh.length === 0 && page.lastSeq > 0) return;
  page.events = page.events.concat(fresh).slice(-200);
  const last = page.events[page.events.length - 1];
  page.lastSeq = last ? last.seq : 0;
  page.lastEventAt = last ? last.at_ms : 0;
  renderEvents();
}

// ---- freshness --------------------------------------------------------------------------------

function markFresh() {
  page.lastOk = Date.now();
  page.failingSince = null;
  document.body.classList.remove("is-stale");
  document.title = "Berth dashboard";
  $("stale").hidden = true;
  $("freshness").textContent = `Live: updated ${clock(page.lastOk)}, every ${POLL_MS / 1000} s`;
}

function markStale(err) {
  if (page.failingSince === null) page.failingSince = Date.now();
  document.body.classList.add("is-stale");
  document.title = "(stale) Berth dashboard";
  const banner = $("stale");
  const since = clock(page.failingSince);
  let problem;
  if (err.status === 401) problem = `The admin API wants the admin token from this address (${err.message}).`;
  else if (err.status === 0) problem = `The admin API is unreachable (${err.message}) since ${since}.`;
  else problem = `The admin API answers with an error (${err.message}) since ${since}.`;
  const shown = page.lastOk
    ? `The figures below are from ${clock(page.lastOk)}; retrying every ${POLL_MS / 1000} s.`
    : `Nothing to show yet; retrying every ${POLL_MS / 1000} s.`;
  banner.replaceChildren(h("strong", {}, "Stale."), ` ${problem} ${shown}`);
  if (err.status === 401) {
    const b = h("button", { type: "button", class: "link" }, "Enter the admin token");
    b.addEventListener("click", () => askToken("Reading the API from this address needs the admin token."));
    banner.append(" ", b);
  }
  banner.hidden = false;
  $("freshness").textContent = page.lastOk ? `Stale: last update ${clock(page.lastOk)}` : "Stale: no data yet";
}

// ---- the poll loop ----------------------------------------------------------------------------

function render() {
  const data = page.data;
  const names = data.regions.map((r) => r.name).join(" ");
  if (names !== page.builtFor) {
    page.builtFor = names;
    buildMarkers(data.regions);
    buildRows(data.regions);
  }
  const open = failingOpen(data);
  updateMarkers(data, open);
  updateRows(data, open);
  updateTotals(data);
  updateRoutedNames(data);
  updateWorkers(data.workers);
  updateInstance(data.instance);
}

/** Which Berth this page talks to: its host name, version and commit. */
function updateInstance(i) {
  const e = $("instance");
  if (!i) {
    e.textContent = "";
    return;
  }
  e.textContent = `${i.host} · berth ${i.version} (${i.commit})`;
  e.title = `build from a commit of ${i.build_date}`;
}

/** A warning while a DNS worker is down or once any worker has panicked (it was replaced,
 * but a panic is a bug to report). Servers without the field show nothing. */
function updateWorkers(w) {
  const banner = $("workers");
  if (!w || (w.ready && !w.panics)) {
    banner.hidden = true;
    return;
  }
  const parts = [];
  if (!w.ready) parts.push(`Not ready: ${w.not_ready}.`);
  if (w.panics) {
    const kinds = Object.entries(w.panics_by_worker || {})
      .filter(([, n]) => n > 0)
      .map(([k, n]) => `${k} ${n}`)
      .join(", ");
    parts.push(`${count(w.panics)} worker ${w.panics === 1 ? "panic" : "panics"} since start (${kinds}); ` +
      "each worker was replaced, see the server log.");
    if (w.last_panic) parts.push(`Last: ${w.last_panic}`);
  }
  banner.replaceChildren(h("strong", {}, "Workers."), ` ${parts.join(" ")}`);
  banner.hidden = false;
}

/** Who set a region's flag, when, why, and until when: "disabled by ana 14:02: upgrade (until 16:02)". */
function flagNote(f) {
  if (!f) return "";
  let t = f.endpoint_enabled ? "enabled" : "disabled";
  if (f.by) t += ` by ${f.by}`;
  if (f.at_ms) t += ` ${clock(f.at_ms)}`;
  if (f.reason) t += `: ${f.reason}`;
  if (f.until_ms) t += ` (until ${clock(f.until_ms)})`;
  return t;
}

/** [cluster]: a banner while etcd is unreachable (last shared state, changes refused) or
 * while members run different configs. Servers without [cluster] show nothing. */
async function pollCluster() {
  const banner = $("cluster");
  const c = await api("/api/v1/cluster");
  const parts = [];
  if (c.enabled && !c.connected) {
    parts.push(`etcd is unreachable from ${c.instance}: serving the last shared state; changes are refused until it returns.`);
  }
  if (c.enabled && c.config_hashes_differ) {
    const hashes = (c.members || []).map((m) => `${m.instance} ${m.config_hash}`).join(", ");
    parts.push(`Members run different configs (${hashes}).`);
  }
  if (!parts.length) {
    banner.hidden = true;
    return;
  }
  banner.replaceChildren(h("strong", {}, "Cluster."), ` ${parts.join(" ")}`);
  banner.hidden = false;
}

/** Seconds as the replication panel shows them: "–" when there is no figure yet. */
function seconds(x) {
  return typeof x === "number" ? `${x < 10 ? x.toFixed(2) : x.toFixed(0)} s` : "–";
}

/** [replication]: backlog and lag per destination region from /api/v1/replication. Hidden
 * when replication is off (the endpoint answers 404). */
async function pollReplication() {
  const card = $("replication-card");
  let r;
  try {
    r = await api("/api/v1/replication");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) throw err;
    card.hidden = true;
    return;
  }
  const rows = Object.entries(r.regions || {}).map(([name, g]) =>
    h("tr", { "data-region": name },
      h("th", { scope: "row" }, name),
      h("td", { class: "queued" }, count(g.queued_jobs || 0)),
      h("td", { class: "present" }, count(g.present || 0)),
      h("td", { class: "pending" }, count(g.pending || 0)),
      h("td", { class: "failed" }, count(g.failed || 0)),
      h("td", { class: "lag-p50" }, seconds(g.lag_p50_seconds)),
      h("td", { class: "lag-p99" }, seconds(g.lag_p99_seconds))));
  $("replication-rows").replaceChildren(...rows);
  const failures = (r.failures || []).length;
  $("replication-summary").textContent =
    `${count(r.queued_jobs || 0)} jobs queued, ${count(r.copied_bytes || 0)} bytes copied` +
    (failures ? `, ${failures} failed` : "") + ".";
  card.hidden = false;
}

async function poll() {
  try {
    const data = await api("/api/v1/regions");
    page.data = data;
    updateRates(sample(data));
    render();
    await pollReplication();
    await pollCluster();
    await pollEvents();
    markFresh();
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    markStale(err);
  }
}

let timer = null;
let polling = false;
let again = false;
/** Poll now, then every POLL_MS; a call while a poll is in flight asks for one more after it. */
async function loop() {
  clearTimeout(timer);
  if (polling) {
    again = true;
    return;
  }
  polling = true;
  try {
    await poll();
  } finally {
    polling = false;
    if (again) {
      again = false;
      loop();
    } else {
      timer = setTimeout(loop, POLL_MS);
    }
  }
}

// ---- changes: the switches and the token --------------------------------------------------------

let tokenResolve = null;

/** Ask for the admin token in a dialog; resolves to it (kept for this tab), or null. */
function askToken(why) {
  const dlg = $("token-dialog");
  if (dlg.open) return Promise.resolve(null);
  $("token-why").textContent = why;
  $("token-input").value = "";
  dlg.returnValue = "";
  dlg.showModal();
  $("token-input").focus();
  return new Promise((resolve) => {
    tokenResolve = resolve;
  });
}

function tokenDialogClosed() {
  const dlg = $("token-dialog");
  const value = $("token-input").value.trim();
  $("token-input").value = "";
  const resolve = tokenResolve;
  tokenResolve = null;
  if (dlg.returnValue === "ok" && value) {
    sessionStorage.setItem(TOKEN_KEY, value);
    if (resolve) resolve(value);
    if (page.failingSince !== null) loop();
  } else if (resolve) {
    resolve(null);
  }
}

function showMessage(text, kind) {
  $("message-text").textContent = text;
  $("message").className = `banner message ${kind}`;
  $("message").hidden = false;
}

async function toggle(name, sw) {
  const wanted = sw.checked;
  // Show what the server says until it has agreed to the change.
  sw.checked = !wanted;
  if (page.pending.has(name)) return;
  page.pending.add(name);
  sw.setAttribute("aria-busy", "true");
  try {
    if (!token()) {
      const given = await askToken(`${wanted ? "Enabling" : "Disabling"} ${name} needs the admin token.`);
      if (!given) {
        showMessage(`${name} was not changed: no admin token given.`, "error");
        return;
      }
    }
    sw.disabled = true;
    const r = await api(`/api/v1/regions/${encodeURIComponent(name)}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ endpoint_enabled: wanted }),
    });
    sw.checked = r.endpoint_enabled;
    showMessage(`${name} ${r.endpoint_enabled ? "enabled" : "disabled"}.`, "ok");
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    if (err.status === 401) {
      // Forget it, so the next switch asks again.
      sessionStorage.removeItem(TOKEN_KEY);
      showMessage(`Wrong admin token: ${name} was not changed (${err.message}).`, "error");
    } else {
      showMessage(`${name} was not changed: ${err.message}.`, "error");
    }
  } finally {
    page.pending.delete(name);
    sw.disabled = false;
    sw.removeAttribute("aria-busy");
    loop();
  }
}

// ---- the "why" box ------------------------------------------------------------------------------

/** "team/app:1.0" -> ["team/app", "1.0"]; "team/app@sha256:…" -> digest; no tag: "latest". */
function splitImage(image) {
  const at = image.indexOf("@");
  if (at > 0) return [image.slice(0, at), image.slice(at + 1)];
  const colon = image.lastIndexOf(":");
  if (colon > image.lastIndexOf("/")) return [image.slice(0, colon), image.slice(colon + 1)];
  return [image, "latest"];
}

/** One region's presence as the box says it: "present (lag 0.61 s)", "pending (attempt 2: …)". */
function presenceText(p) {
  if (p.state === "present") {
    return typeof p.lag_seconds === "number" ? `present (lag ${seconds(p.lag_seconds)})` : "present";
  }
  const detail = [p.attempts ? `attempt ${p.attempts}` : null, p.last_error].filter(Boolean).join(": ");
  return detail ? `${p.state} (${detail})` : p.state;
}

/** Per-region presence of an image (GET /api/v1/replication/{repo}?reference=), with the
 * region the client is sent to marked: does it hold the image yet? */
async function presence(image, chosen) {
  const [repo, reference] = splitImage(image);
  const path = repo.split("/").map(encodeURIComponent).join("/");
  let d;
  try {
    d = await api(`/api/v1/replication/${path}?${new URLSearchParams({ reference })}`);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    return h("p", { class: "hint presence-none" }, `${repo}:${reference}: ${err.message}`);
  }
  const items = Object.entries(d.regions || {}).map(([region, p]) =>
    h("li", { "data-region": region, "data-state": p.state, class: p.state === "failed" ? "bad" : null },
      h("strong", {}, region), region === chosen ? " (this client's region)" : "", `: ${presenceText(p)}`));
  return h("div", { class: "presence-box" },
    h("p", { class: "why-answer" }, `${repo}:${reference} `, h("code", {}, d.digest)),
    h("ul", { class: "presence" }, ...items));
}

async function explain(ev) {
  ev.preventDefault();
  const client = $("why-client").value.trim();
  const name = $("why-name").value;
  const out = $("why-result");
  out.replaceChildren(h("p", { class: "hint" }, "Asking…"));
  const q = new URLSearchParams({ client });
  if (name) q.set("name", name);
  try {
    const d = await api(`/api/v1/route?${q}`);
    const loc = d.location
      ? [d.location.city, d.location.country].filter(Boolean).join(", ") || d.location.network
      : "no location";
    const facts = [`client key ${d.client_key}`, loc];
    if (d.sticky) facts.push(`remembered: ${d.sticky}`);
    if (d.fail_open) facts.push("failing open");
    out.replaceChildren(
      h("p", { class: "why-answer" }, `${d.name} for ${d.client}: `,
        h("strong", { class: "why-region" }, d.region || "no region")),
      h("p", { class: "hint" }, facts.join(" · ")),
      h("pre", { class: "explanation" }, d.explanation),
    );
    const image = $("why-image").value.trim();
    if (image) out.append(await presence(image, d.region));
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    out.replaceChildren(h("p", { class: "bad", role: "alert" }, `Cannot explain: ${err.message}`));
  }
}

// ---- start --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  drawGraticule();
  $("token-dialog").addEventListener("close", tokenDialogClosed);
  $("token-cancel").addEventListener("click", () => $("token-dialog").close(""));
  $("message-close").addEventListener("click", () => {
    $("message").hidden = true;
  });
  $("why-form").addEventListener("submit", explain);
  loop();
});
