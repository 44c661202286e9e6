"""The canary judge: is the new release worse than the stable one?

Pure functions over `Sample`s taken from the data plane's pool totals (the
typed stats of `zerodown.stats`; `pool_samples` reads them). The
executor takes one sample per pool when the weight moves and one when it
judges; `since` turns the two into what happened in between.

The verdict is statistical, as Kayenta's: canary and stable are compared
over the same window, each metric with a one-sided question at the
configured confidence and a minimum effect that matters (docs/config.md):

- errors: Newcombe's interval of (canary rate - stable rate). Fail when its
  low bound (at the look's level) is above 0 (significantly worse) and the
  increase is at least `min_error_increase`; pass when its high bound is
  below `min_error_increase` (an increase that matters is ruled out).
- latency: a Mann-Whitney U test on the two histograms says whether the
  canary is slower at all (p-value); the shift of the median says by how
  much. Fail when p < the look's level (`fail_level`: a share of
  1 - confidence) and the shift is at least the one that
  matters, max(`min_latency_shift`, `min_latency_increase` x stable's p50):
  1 ms on a 2 ms service is noise, not a failure. Pass when the shift's
  high bound is below it.
- anything else is "inconclusive": the sample cannot tell yet. It never
  passes (the executor waits for more requests up to deploy_timeout, then
  rolls back). So does a canary with fewer than `min_requests` requests.
- latency is not compared when one side has none (an idle stable pool, a
  data plane without a histogram): the error check decides alone.

A pass thus needs enough requests that the minimum effect would have shown:
the bounds narrow as 1/sqrt(n), which is the power rule in interval form.

A tcp service (`mode = "tcp"`) is judged by the same functions on its
connections (docs/tcp.md): every data plane reports a connection that was
answered (or ended without a fault) as a 2xx with its connect time as its
latency, and a failed connect or a drop before any answer as a failure
(`connect`, `timeout`, `reset`) or a retry; a connection cut at our own
drain deadline is `cancelled`, as an HTTP request is. So the "requests"
of a tcp verdict are connections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import JsonValue

from zerodown.analysis.statistics import (
    Interval,
    bucket_quantile,
    mann_whitney,
    median_shift,
    newcombe,
    z_of,
)
from zerodown.routing import PoolName
from zerodown.stats import BUCKET_LABELS, Counters, PoolStats, Stats, quantile

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

    def counts(self) -> tuple[int, ...]:
        """Latency counts per bucket (not cumulative); () when unknown."""
        return _per_bucket(self.buckets) if self.buckets else ()

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


def _per_bucket(cumulative: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a - b for a, b in zip(cumulative, (0, *cumulative[:-1]), strict=True))


def _p99(cumulative: tuple[int, ...]) -> float:
    """p99 of cumulative bucket counts, by the data plane's own estimator."""
    return quantile(_per_bucket(cumulative), 0.99)


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
class Criteria:
    """What the judge asks of a canary: the `canary` table's keys (docs/config.md)."""

    confidence: float  # of each one-sided bound, 0.5-1
    min_error_increase: float  # a difference of rates (0.01: one percentage point)
    min_latency_increase: float  # a fraction of stable's p50 (0.1: 10 % slower)
    min_latency_shift: float  # seconds; the shift that matters is the larger of the two
    min_requests: int  # canary requests below which there is no verdict at all


@dataclass(frozen=True, slots=True)
class ErrorCheck:
    """Canary error rate minus stable's, with its bounds."""

    verdict: Verdict
    increase: float
    low: float  # at the look's fail level: above 0 is significant
    high: float  # at the confidence: below `matters` rules an increase that matters out
    matters: float  # min_error_increase


@dataclass(frozen=True, slots=True)
class LatencyCheck:
    """Canary median latency minus stable's (seconds), its bounds, and the rank test."""

    verdict: Verdict
    canary_p50: float
    stable_p50: float
    shift: float
    low: float  # the shift's bounds at the confidence
    high: float
    matters: float  # the shift that matters here, seconds
    slower: float  # how often a canary request is the slower of a pair (0.5: alike)
    p_value: float  # Mann-Whitney, one-sided: the canary is slower


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    reason: str  # which check decided, with the numbers
    canary: Sample
    stable: Sample
    confidence: float = 0.0
    alpha: float = 0.0  # the significance a fail needed at this look (fail_level)
    errors: ErrorCheck | None = None  # None: too few requests to judge at all
    latency: LatencyCheck | None = None  # None: no latency to compare (see _check_latency)

    def numbers(self) -> dict[str, JsonValue]:
        """The verdict as JSON: what the `analysis` event and the deploy view carry."""
        pools = {"canary": self.canary, "stable": self.stable}
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "confidence": self.confidence,
            "alpha": round(self.alpha, 6),
            **{name: _pool_numbers(sample) for name, sample in pools.items()},
            "errors": _rounded(self.errors),
            "latency": _rounded(self.latency),
        }


def judge(canary: Sample, stable: Sample, criteria: Criteria) -> Judgement:
    """Compare one window of the canary pool with the same window of the stable pool.

    A stable pool with no traffic is a known 0 % error baseline, and has no
    latency to compare with: only the error check decides then.
    """
    if canary.requests < criteria.min_requests:
        reason = f"{canary.requests} canary requests, {criteria.min_requests} needed for a verdict"
        return Judgement("inconclusive", reason, canary, stable, criteria.confidence)
    z = z_of(criteria.confidence)
    alpha = fail_level(criteria, canary.requests)
    errors = _check_errors(canary, stable, criteria, z, alpha)
    latency = _check_latency(canary, stable, criteria, z, alpha)
    said = [(errors.verdict, _say_errors(canary, stable, errors, criteria.confidence, alpha))]
    if latency is not None:
        said.append((latency.verdict, _say_latency(latency, criteria.confidence)))
    else:
        said.append(("pass", "latency not compared (no histogram on one side)"))
    verdict: Verdict = "pass"
    for wanted in ("inconclusive", "fail"):  # a fail outranks an open question
        if any(v == wanted for v, _ in said):
            verdict = wanted
    # A fail names the failing checks only; any other verdict names both.
    reason = "; ".join(words for v, words in said if v == verdict or verdict != "fail")
    return Judgement(verdict, reason, canary, stable, criteria.confidence, alpha, errors, latency)


def fail_level(criteria: Criteria, requests: int) -> float:
    """The significance level a fail needs at a look at `requests` canary requests.

    A step is looked at again and again as requests come in, and every look
    at a healthy canary is one more chance of a false alarm. So the judge is
    asked once per doubling of the window (the executor's `_judge`), and
    1 - confidence is spent over those looks, half at the first, a quarter
    at the second, ... and split between the two checks: a healthy canary is
    then rolled back with at most about that probability over its whole step
    (the analyze step's own look comes on top). A real regression still
    fails at the first looks, where most is spent.
    """
    looks = max(0, int(math.log2(requests / criteria.min_requests)))
    return (1 - criteria.confidence) / 2 * 0.5 ** (looks + 1)


def _check_errors(
    canary: Sample, stable: Sample, criteria: Criteria, z: float, alpha: float
) -> ErrorCheck:
    def bounds(z: float) -> Interval:
        counts = (canary.errors, canary.requests, stable.errors, stable.requests)
        return newcombe(*counts, z, b_known=stable.requests == 0)

    # The low bound at the fail level (significance), the high one at the
    # confidence (does the interval exclude an increase that matters?).
    low, high = bounds(z_of(1 - alpha)).low, bounds(z).high
    increase = canary.error_rate - stable.error_rate
    matters = criteria.min_error_increase
    verdict: Verdict = "inconclusive"
    if low > 0 and increase >= matters:
        verdict = "fail"
    elif high < matters:
        verdict = "pass"
    return ErrorCheck(verdict, increase, low, high, matters)


def _check_latency(
    canary: Sample, stable: Sample, criteria: Criteria, z: float, alpha: float
) -> LatencyCheck | None:
    """None when one side has no latency: a data plane without a histogram,
    an idle stable pool, or a canary whose every try failed (which the
    error check judges)."""
    a, b = canary.counts(), stable.counts()
    if not (sum(a) and sum(b)):
        return None
    test = mann_whitney(a, b)
    shift = median_shift(a, b, z)
    stable_p50 = bucket_quantile(b, 0.5)
    matters = max(criteria.min_latency_shift, criteria.min_latency_increase * stable_p50)
    verdict: Verdict = "inconclusive"
    if test.p_value < alpha and shift.estimate >= matters:
        verdict = "fail"
    elif shift.high < matters:
        verdict = "pass"
    canary_p50 = bucket_quantile(a, 0.5)
    return LatencyCheck(
        verdict,
        canary_p50,
        stable_p50,
        shift.estimate,
        shift.low,
        shift.high,
        matters,
        test.slower,
        test.p_value,
    )


def _errors(sample: Sample) -> str:
    return f"{sample.error_rate:.2%} ({sample.errors}/{sample.requests})"


def _points(rate: float) -> str:
    return f"{rate * 100:+.2f} points"


def _say_errors(
    canary: Sample, stable: Sample, check: ErrorCheck, confidence: float, alpha: float
) -> str:
    head = f"error rate {_errors(canary)} on canary vs {_errors(stable)} on stable"
    if check.verdict == "fail":
        bound = f"at least {_points(check.low)} at {1 - alpha:.2%} confidence"
    elif check.verdict == "pass":
        bound = f"at most {_points(check.high)} at {confidence:.0%} confidence"
    else:
        bound = f"between {_points(check.low)} and {_points(check.high)}: more requests needed"
    return (
        f"{head}, {_points(check.increase)} ({bound}; min_error_increase {_points(check.matters)})"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _say_latency(check: LatencyCheck, confidence: float) -> str:
    head = (
        f"p50 {_ms(check.canary_p50)} on canary vs {_ms(check.stable_p50)} on stable, "
        f"shift {check.shift * 1000:+.1f} ms"
    )
    test = f"slower in {check.slower:.0%} of pairs, Mann-Whitney p = {check.p_value:.2g}"
    if check.verdict == "fail":
        bound = f"{test}; at least {_ms(check.matters)} matters"
    elif check.verdict == "pass":
        bound = f"at most {check.high * 1000:+.1f} ms at {confidence:.0%} confidence"
        bound += f", under the {_ms(check.matters)} that matters"
    else:
        bound = f"between {check.low * 1000:+.1f} and {check.high * 1000:+.1f} ms, {test}"
        bound += f": more requests needed to rule out {_ms(check.matters)}"
    return f"{head} ({bound})"


def _pool_numbers(sample: Sample) -> dict[str, JsonValue]:
    return {
        "requests": sample.requests,
        "errors": sample.errors,
        "error_rate": round(sample.error_rate, 6),
        "p99": round(sample.p99, 6),
    }


def _rounded(check: ErrorCheck | LatencyCheck | None) -> dict[str, JsonValue] | None:
    # Six places: a millionth of a rate or a microsecond is past any bucket's resolution.
    if check is None:
        return None
    fields = {name: getattr(check, name) for name in check.__dataclass_fields__}
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in fields.items()}
