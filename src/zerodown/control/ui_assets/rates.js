// Rates from counters: /v1/stats is cumulative, so each poll's difference
// from the last one is a window: requests/s, error rate and latency
// quantiles per service and version. No DOM here.

export const HISTORY = 300; // seconds of history kept for the charts

// `store` holds {previous, history, targets}: the last poll's totals, per
// service the points of the last HISTORY seconds, each {t, versions: {v:
// {rps, err, p50, p99}}}, and the data plane's view of each target now.
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

export function addSample(store, stats, now) {
  store.targets = targetsOf(stats);
  const current = { t: now, totals: totals(stats) };
  const before = store.previous;
  store.previous = current;
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
    const list = (store.history.get(service) || []).filter((p) => p.t > now - HISTORY);
    list.push(point);
    store.history.set(service, list);
  }
}

export // A quantile from cumulative buckets ("le" -> count), linear within its
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

// service -> address -> {health, in_flight}: how the data plane sees each target.
function targetsOf(stats) {
  const out = new Map();
  for (const [service, entry] of Object.entries(stats.services || {})) {
    const targets = {};
    for (const pool of Object.values(entry.pools || {})) Object.assign(targets, pool.targets || {});
    out.set(service, targets);
  }
  return out;
}
