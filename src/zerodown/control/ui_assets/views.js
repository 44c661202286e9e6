// One card per service: releases, split, actions, charts, instances, and the
// deploy as a timeline of its steps with the judge's verdicts. Each card is
// built once (its buttons stay the same elements) and its parts refilled.
import { brief, clock, colorOf, el, ms, num, pct, round, svg, swatch } from "/ui/dom.js";
import { HISTORY } from "/ui/rates.js";

const MIN_SPAN = 60; // seconds: the charts' x axis is never shorter
export const ACTIONS = ["promote", "pause", "resume", "abort", "rollback"];

// `onAction(card, action)` runs when an action's button is clicked.
export function makeCard(name, onAction) {
  const card = { name, parts: {} };
  const part = (key, tag = "div", attrs = {}) => (card.parts[key] = el(tag, attrs));
  const actions = el("div", { class: "actions" });
  card.buttons = {};
  for (const action of ACTIONS) {
    const button = el("button", {
      type: "button", "data-action": action, text: action[0].toUpperCase() + action.slice(1),
      onclick: () => onAction(card, action),
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

// `state`: the page's releases, last deploys, events and judge's looks per service.
export function fillCard(card, view, state) {
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

  // Health is the data plane's (up, down, ejected), from the last /v1/stats.
  const targets = (state.rates.targets && state.rates.targets.get(card.name)) || {};
  const headings = ["instance", "version", "address", "state", "health", "in flight", "routed"];
  p.instances.replaceChildren(el("table", {},
    el("tr", {}, ...headings.map((h) => el("th", { text: h }))),
    ...view.instances.map((i) => {
      const target = targets[i.address];
      const health = target ? target.health : "–";
      return el("tr", { "data-instance": i.id },
        el("td", { text: i.id }), el("td", {}, swatch(i.version), i.version), el("td", { text: i.address }),
        el("td", { class: `state-${i.state}`, text: i.state }),
        el("td", { class: `health-${health}`, "data-role": "health", text: health }),
        el("td", { text: target ? String(target.in_flight) : "–" }),
        el("td", { text: i.routed ? "yes" : "no" }));
    })));

  p.deploy.replaceChildren(...deployTimeline(state.lastDeploy.get(card.name), view, state.looks.get(card.name)));
  p.events.replaceChildren(...(state.events.get(card.name) || []).slice().reverse().map((e) =>
    el("li", { text: `${clock(e.at)} ${e.kind}${e.deploy_id ? " #" + e.deploy_id : ""} ${brief(e.data)}` })));

  const running = Boolean(deploying);
  card.buttons.promote.disabled = !running;
  card.buttons.pause.disabled = !running || Boolean(view.pause && view.pause.by === "operator");
  card.buttons.resume.disabled = !(view.pause && view.pause.by === "operator");
  card.buttons.abort.disabled = !running;
  card.buttons.rollback.disabled = running || !previous;
}

export function pauseText(pause) {
  if (pause.by === "promote") return "paused: waiting for promote";
  if (pause.by === "operator") return "paused by operator: resume to go on";
  return `pause: ${Math.ceil(pause.left ?? 0)} s left`;
}

// The deploy's journal as one line per step (its latest phase), each with
// the verdict it ended on.
function deployTimeline(deploy, view, look) {
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
  // The journal has a step's verdict once the step ends (the deploy's own
  // `verdict` is the last of them, shown there); the judge's looks during a
  // pause come as events, and show here until a step's verdict is newer.
  const judged = Math.max(0, ...deploy.steps.filter((e) => e.verdict).map((e) => e.at));
  if (!deploy.outcome && look && look.deploy_id === deploy.id && look.at > judged) {
    parts.push(el("div", { class: "muted", text: `judge, look at ${clock(look.at)}:` }), verdictBlock(look.data));
  }
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

// A service nginx does not report request by request (/v1/stats' not_counted):
// its counters stand still, and a chart of them would say 0 requests/s.
const NOT_COUNTED =
  "Not charted: nginx reports this service's requests to zerodown only while it has a canary " +
  '([proxy.nginx] request_stats = "canary"). Set request_stats = "always" to chart it.';

// `cards` and `history`: per service name; `notCounted`: names.
export function renderCharts(cards, history, notCounted = new Set()) {
  for (const [name, card] of cards) {
    if (notCounted.has(name)) {
      card.parts.charts.replaceChildren(el("p", { class: "muted", "data-role": "not-counted", text: NOT_COUNTED }));
      continue;
    }
    const points = history.get(name) || [];
    const versions = [...new Set(points.flatMap((p) => Object.keys(p.versions)))].sort();
    card.parts.charts.replaceChildren(...CHARTS.map(([key, title, format]) =>
      chart(points, versions, key, title, format)));
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
