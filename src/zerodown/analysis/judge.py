"""The canary judge: is the new release worse than the stable one?

Pure functions over `Sample`s taken from the data plane's pool totals (the
typed stats of `zerodown.stats`; `pool_samples` reads them). The
executor takes one sample per pool when the weight moves and one when it
judges; `since` turns the two into what happened in between.

The rules are the ones docs/config.md promises:
- `error_rate_threshold`: fail when the canary's error rate exceeds the
  stable pool's by more than this (a difference of rates, 0-1);
- `p99_threshold`: fail when the canary's p99 latency exceeds this multiple
  of the stable pool's, and by at least P99_NOISE_FLOOR: at millisecond
  latencies one histogram bucket of scheduling noise doubles a p99, which is
  not evidence of a slower release;
- `min_requests`: with fewer canary requests there is no verdict
  ("inconclusive"), never "pass" (and never "fail": a few unlucky requests
  are not evidence either).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

from zerodown.routing import PoolName
from zerodown.stats import BUCKET_LABELS, Counters, PoolStats, Stats, quantile

# Seconds the canary p99 must exceed the stable p99 by, on top of the ratio.
P99_NOISE_FLOOR = 0.05

Verdict = Literal["pass", "fail", "inconclusive"]

# Failures that count against a release. "cancelled" is left out: it is a
# request cut at our own drain deadline, which says nothing about the app.
ERROR_FAILURES: Final = ("connect", "timeout", "reset", "protocol", "other")


@dataclass(frozen=True, slots=True)
class Sample:
    """What one pool did: tries with a known outcome, how many failed, p99 latency.

    Counters are cumulative when read from the data plane and per window
    after `since`. `buckets` holds cumulative latency counts in
    `metrics.BUCKET_LABELS` order, kept so a window's p99 can be estimated
    from its own requests; () when unknown.
    """

    requests: int
    errors: int  # 5xx responses + tries that failed at the target
    p99: float  # seconds; 0.0 with no responses
    buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.buckets and len(self.buckets) != len(BUCKET_LABELS):
            raise ValueError(f"{len(self.buckets)} buckets, expected {len(BUCKET_LABELS)}")

    @classmethod
    def from_pool(cls, totals: Counters) -> Sample:
        """A sample from a pool's totals (or any counters)."""
        # A retried try failed here too, though the client saw the next one;
        # counting it keeps a canary that refuses connections from looking clean.
        failed = sum(totals.failures.get(kind, 0) for kind in ERROR_FAILURES) + totals.retries
        answered = sum(totals.responses.values())
        latency = totals.latency
        raw = latency.buckets
        buckets = tuple(raw[label] for label in BUCKET_LABELS) if raw else ()
        p99 = _p99(buckets) if buckets else latency.p99  # no histogram: the data plane's own
        # Tries still in flight or cut by a drain have no outcome: in neither count.
        requests = answered + failed
        return cls(requests, totals.responses.get("5xx", 0) + failed, p99, buckets)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def since(self, earlier: Sample) -> Sample:
        """What happened between `earlier` and this sample of the same pool.

        p99 is re-estimated from the bucket differences, because a quantile of
        the whole history cannot be subtracted. When a counter went backwards
        the totals were reset (a target left the pool, the proxy restarted);
        as Prometheus's rate() does, the later sample is then taken whole.
        """
        if self._reset_since(earlier):
            return self
        buckets: tuple[int, ...] = ()
        if self.buckets and earlier.buckets:
            buckets = tuple(a - b for a, b in zip(self.buckets, earlier.buckets, strict=True))
        p99 = _p99(buckets) if buckets else self.p99  # no buckets: the best we know
        return Sample(self.requests - earlier.requests, self.errors - earlier.errors, p99, buckets)

    def _reset_since(self, earlier: Sample) -> bool:
        if self.requests < earlier.requests or self.errors < earlier.errors:
            return True
        if not (self.buckets and earlier.buckets):
            return False
        return any(a < b for a, b in zip(self.buckets, earlier.buckets, strict=True))


def _p99(cumulative: tuple[int, ...]) -> float:
    """p99 of cumulative bucket counts, by the data plane's own estimator."""
    return quantile([a - b for a, b in zip(cumulative, (0, *cumulative[:-1]), strict=True)], 0.99)


# A pool the data plane does not report has served nothing: no canary pool in
# the table yet, or a service the table does not have. The judge calls a
# canary without requests inconclusive and takes a stable pool without them
# as a 0 % baseline with no p99.
NO_TRAFFIC: Final = Sample(0, 0, 0.0)


def pool_samples(stats: Stats, service: str) -> tuple[Sample, Sample]:
    """The (canary, stable) samples of `service` from the data plane's stats."""
    entry = stats.services.get(service)
    if entry is None:
        return NO_TRAFFIC, NO_TRAFFIC
    return _pool_sample(entry.pools, "canary"), _pool_sample(entry.pools, "stable")


def _pool_sample(pools: dict[PoolName, PoolStats], name: PoolName) -> Sample:
    pool = pools.get(name)
    if pool is None:
        return NO_TRAFFIC
    return Sample.from_pool(pool.totals)


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str  # which rule decided, with the numbers
    canary: Sample
    stable: Sample


def judge(
    canary: Sample,
    stable: Sample,
    *,
    error_rate_threshold: float,
    p99_threshold: float,
    min_requests: int,
) -> Judgement:
    """Compare one window of the canary pool with the same window of the stable pool.

    A stable pool with no traffic is a 0 % error baseline, and its latency
    rule is skipped (no p99 to multiply). Ties at a threshold pass: the
    docs say "more than".
    """
    if canary.requests < min_requests:
        reason = f"{canary.requests} canary requests, {min_requests} needed for a verdict"
        return Judgement("inconclusive", reason, canary, stable)
    breaches = [
        breach
        for breach in (
            _error_breach(canary, stable, error_rate_threshold),
            _latency_breach(canary, stable, p99_threshold),
        )
        if breach
    ]
    if breaches:
        return Judgement("fail", "; ".join(breaches), canary, stable)
    return Judgement("pass", f"within thresholds: {_summary(canary, stable)}", canary, stable)


def _rate(sample: Sample) -> Fraction:
    # Exact, so a difference of exactly the threshold is a tie, not a float accident.
    return Fraction(sample.errors, sample.requests) if sample.requests else Fraction(0)


def _error_breach(canary: Sample, stable: Sample, threshold: float) -> str | None:
    if _rate(canary) - _rate(stable) <= Fraction(threshold):
        return None
    return (
        f"error rate {_errors(canary)} on canary vs {_errors(stable)} on stable, "
        f"more than {threshold:.2%} above (error_rate_threshold)"
    )


def _latency_breach(canary: Sample, stable: Sample, threshold: float) -> str | None:
    if stable.p99 <= 0 or Fraction(canary.p99) <= Fraction(threshold) * Fraction(stable.p99):
        return None
    if canary.p99 - stable.p99 < P99_NOISE_FLOOR:
        return None
    return (
        f"p99 {canary.p99:.3f}s on canary vs {stable.p99:.3f}s on stable, "
        f"{canary.p99 / stable.p99:.2f}x, more than {threshold:g}x (p99_threshold)"
    )


def _errors(sample: Sample) -> str:
    return f"{sample.error_rate:.2%} ({sample.errors}/{sample.requests})"


def _summary(canary: Sample, stable: Sample) -> str:
    p99 = f"{stable.p99:.3f}s" if stable.p99 > 0 else "none"
    return (
        f"error rate {_errors(canary)} on canary vs {_errors(stable)} on stable; "
        f"p99 {canary.p99:.3f}s vs {p99}"
    )
