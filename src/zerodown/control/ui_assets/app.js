// zerodown dashboard: the admin API's status, stats and event stream, live.
// No build step, no dependency: DOM built with textContent (never innerHTML,
// so nothing the API returns can become markup), charts as inline SVG.
"use strict";

const TOKEN_KEY = "zerodown.token"; // sessionStorage: this tab only, never a URL
const STATS_EVERY = 1000; // ms between /v1/stats polls (rates are their differences)
const STATUS_EVERY = 2000; // ms between /v1/status polls (events also trigger one)
const HISTORY = 300; // seconds of chart history kept
const MIN_SPAN = 60; // seconds: the charts' x axis is never shorter
const RECONNECT = 1000; // ms before the event stream is opened again
const EVENTS_SHOWN = 12;
const PALETTE = ["#2f6fde", "#e8590c", "#2b8a3e", "#9c36b5", "#c2255c", "#0b7285", "#5c940d"];
const SVG = "http://www.w3.org/2000/svg";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  services: new Map(), // name -> StatusView
  releases: new Map(), // name -> [ReleaseView]
  lastDeploy: new Map(), // name -> the latest DeployView seen (kept after it finished)
  events: new Map(), // name -> recent EventViews
  history: new Map(), // name -> [{t, versions: {v: {rps, err, p50, p99}}}]
  previous: null, // the last /v1/stats totals, per service and version
  cards: new Map(), // name -> the card's elements
  colors: new Map(), // version -> color
  lastEventId: 0,
  latestDeploy: new Map(), // name -> the highest deploy id its events named
  looks: new Map(), // name -> the judge's latest "analysis" event (its looks during a pause)
  started: false,
  locked: false, // the token form is up: polls wait
};

// -- the API ---------------------------------------------------------------------

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  // The admin API wants this type on every change, body or not (its CSRF guard).
  if (method !== "GET") headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "omit", redirect: "error",
  });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${method} ${path}: HTTP ${response.status}`);
  return data;
}

// The event stream is Server-Sent Events, read with fetch() because
// EventSource cannot send the Authorization header.
async function followEvents() {
  for (;;) {
    try {
      await readStream();
    } catch (error) {
      if (error instanceof Unauthorized) showLogin(error.message);
    }
    setConnection(false);
    do await sleep(RECONNECT); while (state.locked);
  }
}

async function readStream() {
  const headers = { Accept: "text/event-stream" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const response = await fetch(`/v1/events?after=${state.lastEventId}`, {
    headers, cache: "no-store", credentials: "omit",
  });
  if (response.status === 401) throw new Unauthorized("the token was refused");
  if (!response.ok || !response.body) throw new Error(`events: HTTP ${response.status}`);
  setConnection(true);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim());
      if (data.length) onEvent(JSON.parse(data.join("\n")));
    }
  }
}

function onEvent(event) {
  state.lastEventId = Math.max(state.lastEventId, event.id);
  const list = state.events.get(event.service) || [];
  list.push(event);
  state.events.set(event.service, list.slice(-EVENTS_SHOWN));
  if (event.kind === "analysis") state.looks.set(event.service, event);
  if (event.deploy_id !== null) {
    const id = Math.max(event.deploy_id, state.latestDeploy.get(event.service) || 0);
    state.latestDeploy.set(event.service, id);
    // A replay names every past deploy: only the latest one is fetched.
    if (event.kind === "finished") soon(`deploy:${event.service}`, () => fetchDeploy(event.service, id));
  }
  soon("status", refreshStatus);
}

async function fetchDeploy(service, id) {
  try {
    state.lastDeploy.set(service, await api("GET", `/v1/deploys/${id}`));
    render();
  } catch (error) {
    showError(error);
  }
}

// -- polling -------------------------------------------------------------------------

async function refreshStatus() {
  if (state.locked) return;
  try {
    const views = await api("GET", "/v1/status");
    for (const view of views) {
      state.services.set(view.service, view);
      if (view.deploying) state.lastDeploy.set(view.service, view.deploying);
      const releases = await api("GET", `/v1/services/${encodeURIComponent(view.service)}/releases`);
      state.releases.set(view.service, releases);
    }
    hideError();
    render();
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    showError(error);
  }
}

async function refreshStats() {
  if (state.locked) return;
  try {
    addSample(await api("GET", "/v1/stats"), Date.now() / 1000);
    renderCharts();
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    showError(error);
  }
}

// Counters per service and version: the sum over that version's targets.
function totals(stats) {
  const out = {};
  for (const [service, entry] of Object.entries(stats.services || {})) {
    const versions = (out[service] = {});
    for (const pool of Object.values(entry.pools || {})) {
      for (const target of Object.values(pool.targets || {})) {
        const v = target.version || "?";
        const sum = (versions[v] ||= { requests: 0, errors: 0, buckets: {}, p50: null, p99: null });
        const failures = Object.values(target.failures || {}).reduce((a, b) => a + b, 0);
        sum.requests += target.requests;
        sum.errors += ((target.responses || {})["5xx"] || 0) + failures;
        for (const [le, n] of Object.entries(target.latency.buckets || {})) {
          sum.buckets[le] = (sum.buckets[le] || 0) + n;
        }
        sum.p50 = target.latency.p50; // used only by a data plane without buckets
        sum.p99 = target.latency.p99;
      }
    }
  }
  return out;
}

function addSample(stats, now) {
  const current = { t: now, totals: totals(stats) };
  const before = state.previous;
  state.previous = current;
  if (!before) return;
  const dt = now - before.t;
  for (const [service, versions] of Object.entries(current.totals)) {
    const point = { t: now, versions: {} };
    for (const [v, sum] of Object.entries(versions)) {
      const old = (before.totals[service] || {})[v];
      if (!old || sum.requests < old.requests) continue; // new, or its counters restarted
      const requests = sum.requests - old.requests;
      const buckets = {};
      for (const le of Object.keys(sum.buckets)) buckets[le] = sum.buckets[le] - (old.buckets[le] || 0);
      const hasBuckets = Object.keys(buckets).length > 0;
      point.versions[v] = {
        rps: requests / dt,
        err: requests ? (100 * (sum.errors - old.errors)) / requests : null,
        p50: requests ? (hasBuckets ? quantile(buckets, 0.5) : sum.p50) : null,
        p99: requests ? (hasBuckets ? quantile(buckets, 0.99) : sum.p99) : null,
      };
    }
    const list = (state.history.get(service) || []).filter((p) => p.t > now - HISTORY);
    list.push(point);
    state.history.set(service, list);
  }
}

// A quantile from cumulative buckets ("le" -> count), linear within its
// bucket as Prometheus' histogram_quantile does. Seconds.
function quantile(buckets, q) {
  const bounds = Object.keys(buckets).map((le) => [le === "+Inf" ? Infinity : Number(le), buckets[le]]);
  bounds.sort((a, b) => a[0] - b[0]);
  const total = bounds.length ? bounds[bounds.length - 1][1] : 0;
  if (!total) return null;
  const rank = q * total;
  let lowBound = 0, lowCount = 0;
  for (const [bound, count] of bounds) {
    if (count >= rank) {
      if (bound === Infinity) return lowBound;
      return lowBound + ((bound - lowBound) * (rank - lowCount)) / Math.max(count - lowCount, 1);
    }
    lowBound = bound;
    lowCount = count;
  }
  return lowBound;
}

// -- rendering -----------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function colorOf(version) {
  if (!state.colors.has(version)) state.colors.set(version, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(version);
}

function swatch(version) {
  const node = el("span", { class: "swatch" });
  node.style.background = colorOf(version); // CSSOM, which the CSP allows (no style attribute)
  return node;
}

function render() {
  const main = document.getElementById("services");
  for (const [name, view] of state.services) {
    let card = state.cards.get(name);
    if (!card) {
      card = makeCard(name);
      state.cards.set(name, card);
      main.append(card.root);
    }
    fillCard(card, view);
  }
  renderCharts();
}

function makeCard(name) {
  const card = { name, parts: {} };
  const part = (key, tag = "div", attrs = {}) => (card.parts[key] = el(tag, attrs));
  const actions = el("div", { class: "actions" });
  card.buttons = {};
  for (const action of ["promote", "pause", "resume", "abort", "rollback"]) {
    const button = el("button", {
      type: "button", "data-action": action, text: action[0].toUpperCase() + action.slice(1),
      onclick: () => act(card, action),
    });
    card.buttons[action] = button;
    actions.append(button);
  }
  card.said = el("span", { class: "said", "data-role": "said" });
  actions.append(card.said);
  card.root = el("section", { class: "service", "data-service": name },
    el("h2", {}, el("span", { text: name }), part("badges", "span")),
    part("releases", "div", { class: "muted" }),
    el("div", { class: "row" }, el("div", { class: "grow" }, part("split", "div", { class: "split" }),
      part("weights", "div", { class: "weights" }))),
    actions,
    part("charts", "div", { class: "charts" }),
    el("div", { class: "row" }, part("instances", "div"), part("deploy", "div", { class: "deploy" })),
    el("details", {}, el("summary", { text: "recent events" }), part("events", "ol", { class: "events" })),
  );
  card.root.querySelector(".grow").style.flex = "1";
  return card;
}

function fillCard(card, view) {
  const p = card.parts;
  const deploying = view.deploying;
  const badges = [];
  if (deploying) badges.push(el("span", { class: "badge deploying", text: `${deploying.strategy} → ${deploying.version}: ${deploying.state}` }));
  if (view.pause) badges.push(el("span", { class: "badge paused", "data-role": "paused", text: pauseText(view.pause) }));
  if (view.crash_loop) badges.push(el("span", { class: "badge crash", title: view.crash_loop.message, text: `crash loop: ${view.crash_loop.version}` }));
  if (!deploying) badges.push(el("span", { class: "badge", text: "idle" }));
  p.badges.replaceChildren(...badges);

  const previous = (state.releases.get(card.name) || []).find((r) => r.status === "previous");
  p.releases.replaceChildren(`current ${view.current ?? "none"} · previous ${previous ? previous.version : "none"}`);

  const split = Object.entries(view.traffic).sort((a, b) => a[0].localeCompare(b[0]));
  p.split.replaceChildren(...split.map(([v, pct]) => {
    const bar = el("div", { title: `${v}: ${pct}%` });
    bar.style.width = `${pct}%`;
    bar.style.background = colorOf(v);
    return bar;
  }));
  p.weights.replaceChildren(...split.map(([v, pct]) => el("span", {},
    swatch(v), `${v} `, el("b", { class: "weight", "data-version": v, text: `${round(pct)}%` }))));

  p.instances.replaceChildren(el("table", {},
    el("tr", {}, ...["instance", "version", "address", "state", "routed"].map((h) => el("th", { text: h }))),
    ...view.instances.map((i) => el("tr", {},
      el("td", { text: i.id }), el("td", {}, swatch(i.version), i.version), el("td", { text: i.address }),
      el("td", { class: `state-${i.state}`, text: i.state }), el("td", { text: i.routed ? "yes" : "no" })))));

  p.deploy.replaceChildren(...deployTimeline(state.lastDeploy.get(card.name), view));
  p.events.replaceChildren(...(state.events.get(card.name) || []).slice().reverse().map((e) =>
    el("li", { text: `${clock(e.at)} ${e.kind}${e.deploy_id ? " #" + e.deploy_id : ""} ${brief(e.data)}` })));

  const running = Boolean(deploying);
  card.buttons.promote.disabled = !running;
  card.buttons.pause.disabled = !running || Boolean(view.pause && view.pause.by === "operator");
  card.buttons.resume.disabled = !(view.pause && view.pause.by === "operator");
  card.buttons.abort.disabled = !running;
  card.buttons.rollback.disabled = running || !previous;
}

function pauseText(pause) {
  if (pause.by === "promote") return "paused: waiting for promote";
  if (pause.by === "operator") return "paused by operator: resume to go on";
  return `pause: ${Math.ceil(pause.left ?? 0)} s left`;
}

// The deploy's journal as one line per step (its latest phase), each with
// the verdict it ended on.
function deployTimeline(deploy, view) {
  if (!deploy) return [el("p", { class: "muted", text: "no deploy seen yet" })];
  const steps = new Map();
  for (const entry of deploy.steps) steps.set(entry.index, entry);
  const outcome = deploy.outcome
    ? el("span", { class: deploy.outcome === "succeeded" ? "ok" : "bad", "data-role": "outcome", text: deploy.outcome })
    : el("span", { "data-role": "outcome", text: deploy.state });
  const head = el("div", {}, el("b", { text: `deploy #${deploy.id}` }),
    ` ${deploy.version} (${deploy.strategy}) · started ${clock(deploy.started_at)} · `, outcome,
    deploy.reason ? el("span", { class: "bad", text: ` — ${deploy.reason}` }) : null);
  const items = [...steps.values()].map((entry) => {
    const last = entry === [...steps.values()].pop();
    let cls = entry.phase === "failed" ? "failed" : entry.phase === "after" ? "done" : "running";
    if (last && !deploy.outcome && entry.kind === "pause" && view.pause) cls = "paused";
    return el("li", { class: cls, "data-step": entry.kind },
      `${clock(entry.at)} ${stepText(entry.step)}`,
      // A verdict's reason is the step's detail: shown once, in the verdict.
      entry.detail && !entry.verdict ? el("span", { class: "muted", text: ` — ${entry.detail}` }) : null,
      cls === "paused" ? el("span", { class: "warn", text: ` — ${pauseText(view.pause)}` }) : null,
      entry.verdict ? verdictBlock(entry.verdict) : null);
  });
  const parts = [head, el("ol", { class: "timeline" }, ...items)];
  // The journal has a step's verdict once the step ends; the judge's looks
  // during a pause come as events.
  const look = state.looks.get(deploy.service);
  const judged = Math.max(0, ...deploy.steps.filter((e) => e.verdict).map((e) => e.at));
  if (!deploy.outcome && look && look.deploy_id === deploy.id && look.at > judged) {
    parts.push(el("div", { class: "muted", text: `judge, look at ${clock(look.at)}:` }), verdictBlock(look.data));
  } else if (deploy.verdict) parts.push(el("div", { class: "muted", text: "last verdict:" }), verdictBlock(deploy.verdict));
  return parts;
}

function stepText(step) {
  switch (step.kind) {
    case "set_traffic":
      return step.mode === "split" ? `traffic: ${round(step.new_weight)}% to new` : "traffic: whole pool to new";
    case "pause":
      return step.seconds === null ? "pause until promote" : `pause ${step.seconds} s`;
    case "start": case "drain": case "stop":
      return `${step.kind} ${step.count} ${step.role}`;
    case "wait_healthy":
      return `wait until ${step.role} is healthy`;
    default:
      return `${step.kind} ${brief(Object.fromEntries(Object.entries(step).filter(([k]) => k !== "kind")))}`;
  }
}

function verdictBlock(v) {
  const none = { requests: 0, error_rate: null, p99: null };
  v = { ...v, canary: v.canary || none, stable: v.stable || none };
  const lines = [
    el("b", { text: v.verdict }), ` — ${v.reason}`,
    el("br"),
    `canary ${v.canary.requests} req, ${pct(v.canary.error_rate)} errors, p99 ${ms(v.canary.p99)}; ` +
      `stable ${v.stable.requests} req, ${pct(v.stable.error_rate)} errors, p99 ${ms(v.stable.p99)}`,
  ];
  if (v.errors) {
    lines.push(el("br"), `errors ${v.errors.verdict}: +${pct(v.errors.increase)} ` +
      `[${pct(v.errors.low)}, ${pct(v.errors.high)}], matters ≥ ${pct(v.errors.matters)}`);
  }
  if (v.latency) {
    lines.push(el("br"), `latency ${v.latency.verdict}: p50 ${ms(v.latency.canary_p50)} vs ${ms(v.latency.stable_p50)}, ` +
      `shift ${ms(v.latency.shift)} [${ms(v.latency.low)}, ${ms(v.latency.high)}], p=${num(v.latency.p_value)}`);
  }
  lines.push(el("br"), el("span", { class: "muted", text: `confidence ${v.confidence}, α at this look ${num(v.alpha)}` }));
  return el("div", { class: `verdict ${v.verdict}`, "data-role": "verdict" }, ...lines);
}

const CHARTS = [
  ["rps", "requests/s", (x) => x.toFixed(1)],
  ["err", "error rate %", (x) => x.toFixed(1) + "%"],
  ["p50", "p50", ms],
  ["p99", "p99", ms],
];

function renderCharts() {
  for (const [name, card] of state.cards) {
    const history = state.history.get(name) || [];
    const versions = [...new Set(history.flatMap((p) => Object.keys(p.versions)))].sort();
    card.parts.charts.replaceChildren(...CHARTS.map(([key, title, format]) =>
      chart(history, versions, key, title, format)));
  }
}

function chart(history, versions, key, title, format) {
  const width = 220, height = 70, now = Date.now() / 1000;
  // The x axis spans the history there is (a minute at least), up to HISTORY.
  const span = Math.min(HISTORY, Math.max(MIN_SPAN, history.length ? now - history[0].t : 0));
  const values = history.flatMap((p) => versions.map((v) => (p.versions[v] || {})[key])).filter((x) => x !== null && x !== undefined);
  const top = Math.max(...values, key === "err" ? 1 : 1e-9) * 1.1;
  const graph = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img", "aria-label": title });
  for (const y of [0.25, 0.5, 0.75]) graph.append(svg("line", { class: "grid", x1: 0, x2: width, y1: height * y, y2: height * y }));
  const latest = [];
  for (const v of versions) {
    const points = history.filter((p) => p.versions[v] && p.versions[v][key] !== null)
      .map((p) => `${(((p.t - (now - span)) / span) * width).toFixed(1)},${(height - (p.versions[v][key] / top) * height).toFixed(1)}`);
    if (points.length) graph.append(svg("polyline", { points: points.join(" "), stroke: colorOf(v) }));
    const last = history.length ? (history[history.length - 1].versions[v] || {})[key] : null;
    if (last !== null && last !== undefined) latest.push(el("span", {}, swatch(v), format(last)));
  }
  return el("div", { class: "chart", "data-chart": key },
    el("div", { class: "title" }, el("span", { text: `${title}, last ${Math.round(span / 60)} min` }), el("span", {}, ...latest)), graph);
}

// -- actions -------------------------------------------------------------------------

async function act(card, action) {
  if ((action === "abort" || action === "rollback") && !confirm(`${action} ${card.name}?`)) return;
  const path = `/v1/services/${encodeURIComponent(card.name)}/${action}`;
  card.said.textContent = `${action}…`;
  try {
    const answer = await api("POST", path, action === "rollback" ? {} : undefined);
    card.said.textContent = answer.deploy_id ? `${action}: deploy #${answer.deploy_id}` : `${action}: done`;
    soon("status", refreshStatus);
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    card.said.textContent = `${action} refused: ${error.message}`;
  }
}

// -- small things --------------------------------------------------------------------

function round(x) {
  return Math.round(x * 10) / 10;
}
function pct(x) {
  return x === null || x === undefined ? "–" : `${round(x * 100)}%`;
}
function ms(s) {
  if (s === null || s === undefined) return "–";
  return s < 0.01 ? `${(s * 1000).toFixed(2)} ms` : `${Math.round(s * 1000)} ms`;
}
function num(x) {
  return typeof x === "number" ? x.toPrecision(2) : "–";
}
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString();
}
function sleep(millis) {
  return new Promise((resolve) => setTimeout(resolve, millis));
}
function brief(data) {
  return Object.entries(data || {})
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
}

const pending = new Map();
function soon(key, fn) {
  // Many events at once (a replay) ask for one refresh, not one each; the last asker's fn runs.
  const waiting = pending.has(key);
  pending.set(key, fn);
  if (!waiting) setTimeout(() => { const run = pending.get(key); pending.delete(key); run(); }, 150);
}

function setConnection(live) {
  const node = document.getElementById("conn");
  node.className = live ? "conn live" : "conn down";
  node.textContent = live ? "live" : "reconnecting…";
}

function showError(error) {
  const node = document.getElementById("error");
  node.textContent = String(error.message || error);
  node.hidden = false;
}

function hideError() {
  document.getElementById("error").hidden = true;
}

function showLogin(message) {
  if (state.locked) return;
  state.locked = true;
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  document.getElementById("login").hidden = false;
  document.getElementById("services").hidden = true;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("token").focus();
}

async function login(event) {
  event.preventDefault();
  state.token = document.getElementById("token").value.trim();
  document.getElementById("token").value = "";
  try {
    await api("GET", "/v1/status");
  } catch (error) {
    state.locked = false; // showLogin again, with the reason
    return showLogin(error instanceof Unauthorized ? "wrong token" : error.message);
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  state.locked = false;
  begin();
}

function begin() {
  document.getElementById("login").hidden = true;
  document.getElementById("services").hidden = false;
  document.getElementById("forget").hidden = !state.token;
  if (state.started) return refreshStatus();
  state.started = true;
  refreshStatus();
  refreshStats();
  setInterval(refreshStatus, STATUS_EVERY);
  setInterval(refreshStats, STATS_EVERY);
  followEvents();
}

async function main() {
  document.getElementById("login").addEventListener("submit", login);
  document.getElementById("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });
  try {
    await api("GET", "/v1/status"); // open without a token (loopback), or the stored one works
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("");
    showError(error);
  }
  begin();
}

main();
