"""What a benchmark run measured, as plain values, and how repetitions fold
into one row per (mode, connections, proxy). Pure: no I/O, no clock.

A row's req/s, p50, p99 and CPU per request are medians over repetitions (so
one disturbed repetition moves a row less); errors and timeouts are summed,
since a target of "no errors" means none in any repetition.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from zdbench.wrk import WrkResult

TIMES = "\N{MULTIPLICATION SIGN}"  # ratios read "0.93" TIMES; spelt out for the linter
SHARED = "shared"
OWN_CORE = "own_core"
MODES = (SHARED, OWN_CORE)
# Within one row group: each driver's row beside the plain proxy it drives.
PROXY_ORDER = {
    "zerodown": 0,
    "nginx": 1,
    "zerodown-nginx": 2,
    "zerodown-nginx-reload": 3,
    "haproxy": 4,
    "zerodown-haproxy": 5,
}
PROXIES = tuple(PROXY_ORDER)
# zerodown driving nginx or HAProxy ([proxy] dataplane): the same program under
# test, off the data path, with the plain proxy's own rows to compare with.
DRIVEN = {
    "zerodown-nginx": "nginx",
    "zerodown-nginx-reload": "nginx",
    "zerodown-haproxy": "haproxy",
}
# A variant's lines in zerodown's [proxy] table beyond `dataplane`: nginx's
# upstreams are the Lua balancer by default (reload-free deploy steps, when
# the module is installed) or, here, a new configuration per step.
EXTRA = {"zerodown-nginx-reload": 'nginx = { upstreams = "reload" }'}
# Where the deploy steps' mechanism makes no difference (the HTTPS and TCP rows).
SAME_AS = {"zerodown-nginx-reload": "zerodown-nginx"}
MODE_TITLES = {
    SHARED: "shared (nothing pinned)",
    OWN_CORE: "own core (proxy on CPU 0; wrk and backends on CPU 1)",
}


@dataclass(frozen=True, slots=True, order=True)
class Variant:
    """One proxy configuration of the matrix: a program and its worker (or thread) count."""

    proxy: str  # one of PROXIES
    workers: int

    @property
    def key(self) -> str:
        return f"{self.proxy}-{self.workers}"

    @property
    def dataplane(self) -> str:
        """zerodown's `[proxy] dataplane`: "embedded", or the proxy it drives."""
        return DRIVEN.get(self.proxy, "embedded")

    @property
    def label(self) -> str:
        unit = "thread" if "haproxy" in self.proxy else "worker"
        name = f"zerodown ({self.dataplane})" if self.proxy in DRIVEN else self.proxy
        if self.proxy in EXTRA:
            name = f"zerodown ({self.dataplane}, {self.proxy.rpartition('-')[2]})"
        return f"{name} {self.workers} {unit}{'s' if self.workers > 1 else ''}"

    @classmethod
    def parse(cls, key: str) -> Variant:
        proxy, _, workers = key.strip().rpartition("-")
        if proxy not in PROXIES or not workers.isdigit():
            raise ValueError(
                f"not a proxy variant: {key!r} (as 'zerodown-1', 'nginx-2', 'zerodown-haproxy-1')"
            )
        return cls(proxy, int(workers))


@dataclass(frozen=True, slots=True)
class Run:
    """One wrk run at one concurrency against one proxy."""

    mode: str
    variant: Variant
    conns: int
    rep: int
    wrk: WrkResult
    cpu_us: float | None  # proxy CPU per request, all its processes and threads


@dataclass(frozen=True, slots=True)
class Row:
    mode: str
    variant: Variant
    conns: int
    reps: int
    rps: float
    p50_us: float | None
    p99_us: float | None
    errors: int  # connect, read and write errors and non-2xx/3xx responses
    timeouts: int
    cpu_us: float | None


@dataclass(frozen=True, slots=True)
class Bursts:
    """1,000 clients connecting at once, several times: one wrk run per burst."""

    variant: Variant
    conns: int
    results: tuple[WrkResult, ...]

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)

    @property
    def timeouts(self) -> int:
        return sum(r.socket.timeout for r in self.results)

    @property
    def worst_p99_us(self) -> float | None:
        p99s = [r.p99_us for r in self.results if r.p99_us is not None]
        return max(p99s) if p99s else None

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.results) if self.results else 0.0


@dataclass(frozen=True, slots=True)
class Idle:
    """Many idle keep-alive client connections held by zerodown, then each served once."""

    wanted: int
    opened: int
    served: int  # connections that then got a 200
    rss_base_kb: int
    rss_held_kb: int  # all connections open, none has sent a byte
    rss_served_kb: int  # after each connection was served once and is idle again
    error: str | None = None

    @property
    def kb_per_conn(self) -> float | None:
        """The larger of the two RSS deltas (held, served) per open connection."""
        if self.opened <= 0:
            return None
        return (max(self.rss_held_kb, self.rss_served_kb) - self.rss_base_kb) / self.opened


@dataclass(frozen=True, slots=True)
class Transfer:
    """One large body streamed through zerodown."""

    direction: str  # "download" (GET /bytes) or "upload" (POST echoed back)
    size: int  # bytes asked for
    received: int  # body bytes the client got back
    seconds: float
    status: int | None
    peak_rss_kb: int | None  # the proxy's VmHWM after the transfer
    base_rss_kb: int | None  # its VmRSS before the first transfer
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.received == self.size

    @property
    def mb_per_s(self) -> float | None:
        return self.received / self.seconds / 1e6 if self.seconds > 0 else None


@dataclass(frozen=True, slots=True)
class LoadedDeploy:
    """One `zerodown deploy`, with wrk as fast as it goes from before it starts to after it ends."""

    strategy: str  # "rolling", "blue_green"
    version: str  # the new release
    previous: str  # the release it replaces
    exit_code: int | None  # the CLI's: 0 when the new release serves all traffic
    outcome: str | None  # the deploy's, as the daemon tells: "succeeded", "rolled_back", ...
    reason: str | None
    deploy_s: float | None  # the daemon's started_at to finished_at
    started_s: float  # when the CLI was called, seconds into the wrk run
    returned_s: float  # when it returned, idem
    wrk: WrkResult | None  # None: wrk did not finish
    versions: dict[str, int]  # X-Version -> responses ('-': none)
    statuses: dict[int, int]  # status -> responses
    running_after: dict[str, int]  # app instances per version when the load stopped

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.outcome == "succeeded"

    @property
    def failed_requests(self) -> int | None:
        """Errors (connect, read, write, non-2xx/3xx) and timeouts; None without wrk."""
        return None if self.wrk is None else self.wrk.errors + self.wrk.socket.timeout

    @property
    def covered(self) -> bool:
        """The deploy ran wholly inside the load."""
        return self.wrk is not None and self.returned_s < self.wrk.duration_s


@dataclass(frozen=True, slots=True)
class DeployLoad:
    """zerodown (its demo app as the service) deploying under a closed-loop wrk."""

    dataplane: str  # [proxy] dataplane: "embedded", "haproxy", "nginx"
    conns: int
    threads: int  # wrk's
    workers: int  # [proxy] workers
    instances: int  # of each release
    settle_s: float  # load before and after each deploy
    steady: WrkResult | None = None  # the same load, no deploy: the reference
    serving_processes: int | None = None  # of the proxy, each ≥ 10 % of its CPU in `steady`
    deploys: tuple[LoadedDeploy, ...] = ()
    daemon_exit: int | None = None  # `zerodown serve` on SIGTERM; None: it had to be killed
    leftovers: int = 0  # app instances still running once it exited (then killed)
    error: str | None = None  # what stopped the extra before its deploys

    @property
    def clean(self) -> bool:
        """Every deploy succeeded, inside the load, without one failed request."""
        return bool(self.deploys) and all(
            d.succeeded and d.covered and d.failed_requests == 0 for d in self.deploys
        )


def aggregate(runs: Iterable[Run]) -> list[Row]:
    """One row per (mode, conns, variant), in the order the groups first appear sorted."""
    groups: dict[tuple[str, int, Variant], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.mode, run.conns, run.variant), []).append(run)
    return [_row(key, group) for key, group in sorted(groups.items(), key=_order)]


def find(rows: Sequence[Row], mode: str, conns: int, variant: Variant) -> Row | None:
    for row in rows:
        if (row.mode, row.conns, row.variant) == (mode, conns, variant):
            return row
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def _row(key: tuple[str, int, Variant], runs: list[Run]) -> Row:
    mode, conns, variant = key
    return Row(
        mode=mode,
        variant=variant,
        conns=conns,
        reps=len(runs),
        rps=statistics.median(r.wrk.rps for r in runs),
        p50_us=_median(r.wrk.p50_us for r in runs),
        p99_us=_median(r.wrk.p99_us for r in runs),
        errors=sum(r.wrk.errors for r in runs),
        timeouts=sum(r.wrk.socket.timeout for r in runs),
        cpu_us=_median(r.cpu_us for r in runs),
    )


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _order(item: tuple[tuple[str, int, Variant], list[Run]]) -> tuple[int, int, int, int]:
    (mode, conns, variant), _ = item
    mode_rank = MODES.index(mode) if mode in MODES else len(MODES)
    return (mode_rank, conns, variant.workers, PROXY_ORDER.get(variant.proxy, 9))
