"""What the TCP load client (zdbench/tcpload.py) measured, as plain values. Pure.

Each client process prints one JSON line (`to_line`); the suite reads every
process's line (`parse_line`) and adds them up (`combine`). Latencies are kept
as a histogram of logarithmic buckets (5 % wide), so that the processes'
histograms add up exactly and a percentile is read off the sum, not averaged
from per-process percentiles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from zdbench.model import PROXY_ORDER, TIMES, Variant, ratio

GROWTH = 1.05  # a bucket is 5 % wider than the one below: percentiles to ±2.5 %
ROUND_TRIPS = "round_trips"  # N persistent connections, one 64-byte echo after another
CONNECTIONS = "connections"  # connect, one 64-byte echo, close; as fast as it goes
BULK = "bulk"  # bytes streamed both ways over a few connections
KINDS = (ROUND_TRIPS, CONNECTIONS, BULK)


class TcpLoadError(ValueError):
    """A client's output that is not a result line."""


def bucket(us: float) -> int:
    """The histogram bucket of a latency in microseconds (below 1 µs: bucket 0)."""
    return round(math.log(us) / math.log(GROWTH)) if us > 1 else 0


def percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The q-th percentile (0-100) of a histogram, in µs; None when it is empty."""
    total = sum(hist.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(total * q / 100))
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return float(GROWTH**b)
    return float(GROWTH ** max(hist))  # not reached: seen ends at total ≥ rank


@dataclass(frozen=True, slots=True)
class TcpLoad:
    """One load run by one or more client processes."""

    kind: str  # one of KINDS
    conns: int  # persistent connections, or connections in flight at once
    seconds: float  # the longest of the processes' measured times
    count: int  # round trips, or connections completed (connect, echo, close)
    bytes: int = 0  # bulk: payload bytes echoed back to the clients
    errors: int = 0  # refused, reset or closed early, or a wrong echo
    timeouts: int = 0  # no echo within the client's timeout
    hist: Mapping[int, int] = field(default_factory=dict)  # bucket -> count

    @property
    def rate(self) -> float:
        """Round trips or connections per second."""
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def p50_us(self) -> float | None:
        return percentile(self.hist, 50)

    @property
    def p99_us(self) -> float | None:
        return percentile(self.hist, 99)


def to_line(load: TcpLoad) -> str:
    return json.dumps(
        {
            "kind": load.kind,
            "conns": load.conns,
            "seconds": load.seconds,
            "count": load.count,
            "bytes": load.bytes,
            "errors": load.errors,
            "timeouts": load.timeouts,
            "hist": {str(b): n for b, n in sorted(load.hist.items())},
        }
    )


def parse_line(text: str) -> TcpLoad:
    """The last line of a client's output that is a result; TcpLoadError if none is."""
    for line in reversed(text.strip().splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("kind") in KINDS:
            try:
                return TcpLoad(
                    kind=str(data["kind"]),
                    conns=int(data["conns"]),
                    seconds=float(data["seconds"]),
                    count=int(data["count"]),
                    bytes=int(data.get("bytes", 0)),
                    errors=int(data.get("errors", 0)),
                    timeouts=int(data.get("timeouts", 0)),
                    hist={int(b): int(n) for b, n in dict(data.get("hist", {})).items()},
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise TcpLoadError(f"a malformed result line: {exc}") from None
    raise TcpLoadError(f"no result line in the client's output: {text[-200:]!r}")


def combine(loads: Iterable[TcpLoad]) -> TcpLoad:
    """The processes of one run as one: counts and histograms summed, the longest time."""
    items = list(loads)
    if not items:
        raise TcpLoadError("no client result to combine")
    if len({load.kind for load in items}) != 1:
        raise TcpLoadError("results of different kinds")
    hist: dict[int, int] = {}
    for load in items:
        for b, n in load.hist.items():
            hist[b] = hist.get(b, 0) + n
    return TcpLoad(
        kind=items[0].kind,
        conns=sum(load.conns for load in items),
        seconds=max(load.seconds for load in items),
        count=sum(load.count for load in items),
        bytes=sum(load.bytes for load in items),
        errors=sum(load.errors for load in items),
        timeouts=sum(load.timeouts for load in items),
        hist=dict(sorted(hist.items())),
    )


def split(total: int, parts: int) -> list[int]:
    """`total` connections over `parts` processes, as evenly as can be, none empty."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


@dataclass(frozen=True, slots=True)
class TcpRun:
    """One load run through one proxy (None: straight to the echoes, the ceiling);
    CPU per round trip or connection (bulk: per MB)."""

    variant: Variant | None
    load: TcpLoad
    cpu_us: float | None

    @property
    def summary(self) -> str:
        errors = f"errors {self.load.errors}, timeouts {self.load.timeouts}"
        return f"{_rate(self.load)}, p99 {_ms(self.load.p99_us)}, {errors}"


NGINX = Variant("nginx", 1)
NO_PROXY = "no proxy (client straight to the echoes)"
LOAD_NAMES = {
    ROUND_TRIPS: "64 B round trips, {conns:,} persistent conns",
    CONNECTIONS: "new connections (connect, 64 B echo, close), {conns:,} at once",
    BULK: "bulk echo, {conns:,} conns",
}


def tcp_table(runs: Sequence[TcpRun]) -> list[str]:
    """Markdown lines: one per run, its rate against plain nginx's in the same load."""
    names = ["load", "proxy", "rate", "p50", "p99", "errors", "timeouts"]
    names += ["CPU µs/op (bulk: /MB)", "rate ÷ nginx"]
    lines = ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]
    nginx = {(r.load.kind, r.load.conns): r.load for r in runs if r.variant == NGINX}
    for r in sorted(runs, key=_order):
        load = r.load
        base = nginx.get((load.kind, load.conns))
        versus = ratio(_value(load), _value(base) if base else None)
        cells = [
            LOAD_NAMES.get(load.kind, load.kind).format(conns=load.conns),
            r.variant.label if r.variant else NO_PROXY,
            _rate(load),
            _ms(load.p50_us),
            _ms(load.p99_us),
            str(load.errors),
            str(load.timeouts),
            "—" if r.cpu_us is None else f"{r.cpu_us:.1f}",
            "—" if versus is None else f"{versus:.2f}{TIMES}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _order(r: TcpRun) -> tuple[int, int, int]:
    kind = KINDS.index(r.load.kind) if r.load.kind in KINDS else len(KINDS)
    proxy = PROXY_ORDER.get(r.variant.proxy, 9) if r.variant else -1
    return (kind, r.load.conns, proxy)


def _value(load: TcpLoad) -> float:
    return load.mb_per_s if load.kind == BULK else load.rate


def _rate(load: TcpLoad) -> str:
    if load.kind == BULK:
        return f"{load.mb_per_s:,.0f} MB/s"
    unit = "round trips" if load.kind == ROUND_TRIPS else "conns"
    return f"{load.rate:,.0f} {unit}/s"


def _ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:,.2f} ms"
