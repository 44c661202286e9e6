// zerodown dashboard: the admin API's status, stats and event stream, live.
// No build step, no dependency: ES modules from this origin (the CSP allows
// nothing else), DOM built with textContent, charts as inline SVG.
//   app.js    this: the token, the API and its event stream, polling, actions
//   views.js  a service's card; rates.js  rates from counters; dom.js  helpers
import { addSample } from "/ui/rates.js";
import { fillCard, makeCard, renderCharts } from "/ui/views.js";

const TOKEN_KEY = "zerodown.token"; // sessionStorage: this tab only, never a URL
const STATS_EVERY = 1000; // ms between /v1/stats polls (rates are their differences)
const STATUS_EVERY = 2000; // ms between /v1/status polls (events also trigger one)
const RECONNECT = 1000; // ms before the event stream is opened again
const EVENTS_SHOWN = 12;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  services: new Map(), // name -> StatusView
  releases: new Map(), // name -> [ReleaseView]
  lastDeploy: new Map(), // name -> the latest DeployView seen (kept after it finished)
  events: new Map(), // name -> recent EventViews
  rates: { previous: null, history: new Map() }, // rates.js: the last totals, chart points
  notCounted: new Set(), // services a driven proxy does not report request by request
  cards: new Map(), // name -> the card's elements
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
    const stats = await api("GET", "/v1/stats");
    addSample(state.rates, stats, Date.now() / 1000);
    state.notCounted = new Set(stats.not_counted || []);
    renderCharts(state.cards, state.rates.history, state.notCounted);
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    showError(error);
  }
}

// -- rendering -----------------------------------------------------------------------

function render() {
  const main = document.getElementById("services");
  for (const [name, view] of state.services) {
    let card = state.cards.get(name);
    if (!card) {
      card = makeCard(name, act);
      state.cards.set(name, card);
      main.append(card.root);
    }
    fillCard(card, view, state);
  }
  renderCharts(state.cards, state.rates.history, state.notCounted);
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

function sleep(millis) {
  return new Promise((resolve) => setTimeout(resolve, millis));
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
