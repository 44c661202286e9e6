"""nginx's access log lines -> per-target counters. Pure: bytes in, counts out.

nginx writes one line per request, at its end. By default (log_transport
"file") the line is tab-separated (render.FILE_LOG_FORMAT) in a buffered
file the driver reads in large chunks (logfile.py); with "udp" or "unix" it
is a JSON object (render.LOG_FORMAT) in one syslog datagram:
`<190>Dec  4 13:52:02 nginx: {json}`.

A chunk of the file is counted by distinct line, not line by line: a line
holds no per-request value but the upstream time, which nginx gives in
milliseconds, so thousands of requests make a few dozen distinct lines.
collections.Counter groups them in C and each distinct line is parsed once
and counted n times: well under a microsecond per request on the
controller, which shares a core with nginx (measured: bench/logcost.py).

Its upstream variables list every try in order, comma-separated ("a, b"),
and a ":" where an internal redirect moved to another upstream group. Each
try counts once on its target, as on the other data planes:

- a try followed by another failed in a way `proxy_next_upstream` retries
  (error or timeout; nginx logs 502 or 504 for it): a try and a retry, not
  a failure. The embedded proxy counts it so (proxy/retrying.py: retry()
  on the target when another is tried next, fail() only on the one whose
  error the client got), and HAProxy (`wretr` + `wredis`; `econ` only for
  a connect that failed for good: haproxy/stats.py). The judge counts a
  retry as an error (analysis/judge.py), so a refused connect that another
  target answered is one error on its target, not two;
- the last try: its response (nginx's own 502 or 504 when it failed too:
  the log does not tell them from the app's); without a status (the client
  left first) a failure, "other".

Requests that never reached a target (`$upstream_addr` "-" or empty: a 404
or 503 of nginx itself) count as rejected by status, except answers from
the cache.

Per service, the requests its rules refused (by kind; each to `on_refusal`
with its rule and client, for the driver's log) and its cache hits
(`$upstream_cache_status` HIT) and misses (every other request of the
service the rules let through, as the embedded proxy counts one);
report.py reports hits and misses for cached services only. A line of
OLD_FILE_FIELDS (an nginx started by an older zerodown, until its next
reload) counts as before: no rule, no cache.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from zerodown.dataplane.accesslog import parse_line
from zerodown.proxy.metrics import LATENCY_BUCKETS, TargetMetrics

__all__ = ["FILE_FIELDS", "AccessCounters", "OnRefusal", "Try", "parse_line", "tries"]

UPSTREAM_PREFIX = "zd_"  # render.upstream_name
# The tab-separated fields of render.FILE_LOG_FORMAT after the key, by their JSON names.
FILE_FIELDS: Final = (
    *("svc", "addr", "ustatus", "urt", "status", "zr", "zsvc"),
    *("rule", "zc", "cache"),
)
OLD_FILE_FIELDS: Final = FILE_FIELDS[:7]
_WIDTHS: Final = {len(FILE_FIELDS) + 1: FILE_FIELDS, len(OLD_FILE_FIELDS) + 1: OLD_FILE_FIELDS}
# nginx's default log escaping: `"`, `\` and bytes outside printable ASCII as \xXX.
_ESCAPED: Final = re.compile(r"\\x([0-9A-Fa-f]{2})")
# (service, kind, rule, client, how many such lines): for the driver's log.
OnRefusal = Callable[[str, str, str, str, int], None]


def _ignore(service: str, kind: str, rule: str, client: str, times: int) -> None:
    pass


def service_of(upstream: str) -> str:
    """The service of `$proxy_host`: "zd_<svc>", or a sticky service's "zd_<svc>.<n>"
    (nginx/sticky.py)."""
    return upstream.removeprefix(UPSTREAM_PREFIX).partition(".")[0]


@dataclass(frozen=True, slots=True)
class Try:
    """One try of one request at one target, as the log tells it."""

    service: str
    address: str
    status: int | None  # None: no status (the connection failed before one)
    seconds: float
    last: bool  # the request's final try: its response is the client's


def tries(entry: dict[str, str]) -> Iterator[Try]:
    """The tries one log entry records, in order."""
    service = service_of(entry.get("svc", ""))
    addresses = _split(entry.get("addr", ""))
    statuses = _split(entry.get("ustatus", ""))
    times = _split(entry.get("urt", ""))
    for index, address in enumerate(addresses):
        if address in ("", "-") or address.startswith("unix:"):
            continue
        yield Try(
            service=service,
            address=address,
            status=_int(statuses[index] if index < len(statuses) else ""),
            seconds=_float(times[index] if index < len(times) else ""),
            last=index == len(addresses) - 1,
        )


@dataclass
class AccessCounters:
    """Counters per (service, address) from the log, plus answers nginx gave itself."""

    key: str = ""  # render.LogTarget.key: lines without it are not this nginx's
    targets: dict[tuple[str, str], TargetMetrics] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    lines: int = 0
    foreign: int = 0  # datagrams ignored: not JSON, or not carrying the key
    # service -> kind (denied, blocked, rate_limited) -> requests its rules refused (guard.py)
    refused: dict[str, dict[str, int]] = field(default_factory=dict)
    # service -> [hits, misses] of its cache
    cache: dict[str, list[int]] = field(default_factory=dict)
    on_refusal: OnRefusal = _ignore
    held: int = 0  # requests held across a recreate's gap and piped by the driver
    # (service, address) the live config routes to only because our checks
    # have every target of its pool out (render._healthy: panic routing):
    # a try there is a panic try, as the embedded proxy counts one.
    in_panic: frozenset[tuple[str, str]] = frozenset()

    def feed(self, datagram: bytes) -> list[Try]:
        """Count one datagram; return its tries (the health checks' proof of answers)."""
        entry = parse_line(datagram)
        if entry is None or entry.get("k", "") != self.key:
            self.foreign += 1
            return []
        return self._entry(entry, 1)

    def feed_lines(self, chunk: bytes) -> list[Try]:
        """Count the whole lines of a chunk of the log file; return their distinct tries."""
        seen: list[Try] = []
        for line, times in Counter(chunk.split(b"\n")).items():
            if not line:
                continue
            words = line.decode(errors="replace").split("\t")
            fields = _WIDTHS.get(len(words))
            if fields is None or words[0] != self.key or not self.key:
                self.foreign += times
                continue
            # nginx logs an empty or unset variable as "-" outside JSON.
            values = ("" if word == "-" else word for word in words[1:])
            entry = dict(zip(fields, values, strict=True))
            if "\\x" in entry.get("rule", ""):
                entry["rule"] = _unescape(entry["rule"])
            seen += self._entry(entry, times)
        return seen

    def _entry(self, entry: dict[str, str], times: int) -> list[Try]:
        self.lines += times
        seen = list(tries(entry))
        kind = entry.get("zr", "")
        hit = entry.get("cache", "") == "HIT"
        if kind:
            self._refused(entry, kind, times)
        elif "cache" in entry:  # not an older nginx's line
            self._cached(service_of(entry.get("svc", "")), hit, times)
        if not seen and "unix:" in entry.get("addr", ""):
            self.held += times  # through the driver's hold socket (hold.py), not nginx's own answer
        elif not seen and not hit:
            status = entry.get("status", "")
            self.rejected[status] = self.rejected.get(status, 0) + times
        for one in seen:
            self._count(one, times)
        return seen

    def _refused(self, entry: dict[str, str], kind: str, times: int) -> None:
        service = entry.get("zsvc", "")
        counts = self.refused.setdefault(service, {})
        counts[kind] = counts.get(kind, 0) + times
        if "rule" in entry:  # not an older nginx's line
            self.on_refusal(service, kind, entry["rule"], entry.get("zc", ""), times)

    def _cached(self, service: str, hit: bool, times: int) -> None:
        if not service:
            return  # nginx answered before any service's location (a 405, a 400)
        counts = self.cache.get(service)
        if counts is None:
            counts = self.cache[service] = [0, 0]
        counts[0 if hit else 1] += times

    def metrics(self, service: str, address: str) -> TargetMetrics:
        # get first: one line per request, and a TargetMetrics is not free to build.
        metrics = self.targets.get((service, address))
        if metrics is None:
            metrics = self.targets[(service, address)] = TargetMetrics()
        return metrics

    def _count(self, one: Try, times: int) -> None:
        # `times` identical tries at once: TargetMetrics' fields added to
        # directly, as its methods would one at a time.
        metrics = self.metrics(one.service, one.address)
        metrics.requests += times
        if (one.service, one.address) in self.in_panic:
            metrics.panics += times
        if not one.last:
            # nginx moved on because this try failed: a retry, and only that,
            # as the embedded proxy and HAProxy count it (see the docstring).
            metrics.retries += times
        elif one.status is not None:
            _responses(metrics, one.status, one.seconds, times)
        else:  # the last try without a status: e.g. the client left before an answer
            metrics.failures["other"] = metrics.failures.get("other", 0) + times


def _responses(metrics: TargetMetrics, status: int, seconds: float, times: int) -> None:
    """TargetMetrics.response, `times` over."""
    index = min(max(status // 100 - 1, 0), len(metrics.responses) - 1)
    metrics.responses[index] += times
    latency = metrics.latency
    latency.counts[bisect_left(LATENCY_BUCKETS, seconds)] += times
    latency.count += times
    latency.sum += seconds * times


def _unescape(text: str) -> str:
    """A field as it was before nginx escaped it (its bytes are UTF-8 again)."""
    raw = _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1", errors="replace").decode("utf-8", errors="replace")


def _split(value: str) -> list[str]:
    # "a, b : c" -> ["a", "b", "c"]: the ":" group separator is a try boundary too.
    if "," not in value and " : " not in value:
        return [value] if value else []  # one try: most lines
    return [part.strip() for part in value.replace(" : ", ", ").split(",")]


def _int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0
