"""nginx's JSON access log lines -> per-target counters. Pure: bytes in, counts out.

nginx writes one line per request, at its end (render.LOG_FORMAT), as a
syslog datagram: `<190>Dec  4 13:52:02 nginx: {json}`. Its upstream
variables list every try in order, comma-separated ("a, b"), and a ":"
where an internal redirect moved to another upstream group. A try that was
followed by another failed in a way `proxy_next_upstream` retries (error
or timeout): it counts as a try, a retry and a failure on its target; the
last try counts its response. Requests that never reached a target
(`$upstream_addr` "-" or empty: a 404 or 503 of nginx itself) count as
rejected by status.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from zerodown.dataplane.accesslog import parse_line
from zerodown.proxy.metrics import TargetMetrics

__all__ = ["AccessCounters", "Try", "parse_line", "tries"]

UPSTREAM_PREFIX = "zd_"  # render.upstream_name


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
    # A sticky service's per-target upstreams are "zd_<svc>.<n>" (nginx/sticky.py).
    service = entry.get("svc", "").removeprefix(UPSTREAM_PREFIX).partition(".")[0]
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
        self.lines += 1
        seen = list(tries(entry))
        if not seen and "unix:" in entry.get("addr", ""):
            self.held += 1  # through the driver's hold socket (hold.py), not nginx's own answer
        elif not seen:
            status = entry.get("status", "")
            self.rejected[status] = self.rejected.get(status, 0) + 1
            kind = entry.get("zr", "")
            if kind:
                counts = self.refused.setdefault(entry.get("zsvc", ""), {})
                counts[kind] = counts.get(kind, 0) + 1
        for one in seen:
            self._count(one)
        return seen

    def metrics(self, service: str, address: str) -> TargetMetrics:
        # get first: one line per request, and a TargetMetrics is not free to build.
        metrics = self.targets.get((service, address))
        if metrics is None:
            metrics = self.targets[(service, address)] = TargetMetrics()
        return metrics

    def _count(self, one: Try) -> None:
        metrics = self.metrics(one.service, one.address)
        metrics.request()
        if (one.service, one.address) in self.in_panic:
            metrics.panic()
        if one.last:
            if one.status is None:
                metrics.fail("other")  # e.g. the client left before an answer
            else:
                metrics.response(one.status, one.seconds)
            return
        # Not the last try: nginx moved on because this one failed. 504 is
        # nginx's mark for a timeout; anything else is a connection error.
        metrics.retry()
        metrics.fail("timeout" if one.status == 504 else "connect")


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
