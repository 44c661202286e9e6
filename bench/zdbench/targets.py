"""The issue's targets, checked against the rows of one run. Pure.

Every target is a ratio measured in the same run on the same machine, so a
busy machine slows all proxies alike rather than failing zerodown alone. A
target whose rows are missing (a variant not available, a mode skipped) is
"not measured", never a pass.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from zdbench.model import (
    DRIVEN,
    OWN_CORE,
    SHARED,
    TIMES,
    Bursts,
    DeployLoad,
    Idle,
    LoadedDeploy,
    Row,
    Variant,
    find,
    ratio,
)

PASS = "pass"
FAIL = "fail"
NOT_MEASURED = "not measured"

MAX_KB_PER_IDLE_CONN = 20.0
RECONNECT_CONNS = 1000


@dataclass(frozen=True, slots=True)
class Check:
    target: str
    measured: str
    verdict: str  # PASS, FAIL or NOT_MEASURED


def check_all(
    rows: Sequence[Row],
    bursts: Sequence[Bursts],
    idle: Idle | None,
    conns: Sequence[int],
    unavailable: Collection[str] = (),
) -> list[Check]:
    """Every target; `unavailable` holds the keys of variants that could not run."""
    na = unavailable
    checks = [
        *driven_checks(rows, conns),
        rps_at_least(rows, OWN_CORE, 1, 50, "nginx", 0.9, na),
        p99_at_most(rows, OWN_CORE, 1, 50, "nginx", 1.2, na),
        rps_at_least(rows, SHARED, 1, 50, "nginx", 1.0, na),
    ]
    for c in conns:
        checks.append(rps_at_least(rows, SHARED, 2, c, "nginx", 0.9, na))
        checks.append(rps_at_least(rows, SHARED, 2, c, "haproxy", 0.8, na))
    for mode in (SHARED, OWN_CORE):
        for workers in (1, 2):
            if mode == SHARED or workers == 1:  # own core is the 1-worker comparison
                checks.append(clean_under_load(rows, mode, workers, RECONNECT_CONNS, na))
    for workers in (1, 2):
        checks.append(clean_reconnects(bursts, workers, na))
    checks.append(idle_memory(idle))
    return checks


DRIVEN_FLOOR = 0.95  # zerodown is off the data path: the driven proxy's own speed


def driven_checks(rows: Sequence[Row], conns: Sequence[int]) -> list[Check]:
    """zerodown driving nginx or HAProxy against the plain proxy in the same run,
    where both rows exist (a run without the driven variants checks none)."""
    checks = []
    for mode in (SHARED, OWN_CORE):
        for workers in (1, 2):
            for c in conns:
                for proxy, plain in DRIVEN.items():
                    ours = find(rows, mode, c, Variant(proxy, workers))
                    if ours is not None:
                        checks.append(driven_rps(rows, ours, plain))
    return checks


def driven_rps(rows: Sequence[Row], ours: Row, plain: str) -> Check:
    theirs = find(rows, ours.mode, ours.conns, Variant(plain, ours.variant.workers))
    name = (
        f"{_where(ours.mode, ours.variant.workers, ours.conns)}: {ours.variant.label}"
        f" req/s ≥ {DRIVEN_FLOOR:.2f} {TIMES} {_name(plain)}"
    )
    r = ratio(ours.rps, theirs.rps if theirs else None)
    if r is None:
        return Check(name, "—", NOT_MEASURED)
    return Check(name, f"{r:.2f}{TIMES}", PASS if r >= DRIVEN_FLOOR else FAIL)


def rps_at_least(
    rows: Sequence[Row],
    mode: str,
    workers: int,
    conns: int,
    other: str,
    floor: float,
    unavailable: Collection[str] = (),
) -> Check:
    name = (
        f"{_where(mode, workers, conns)}: req/s ≥ {floor:.1f} {TIMES} {_name(other)}"
        f" {_unit(other, workers)}"
    )
    ours, theirs = _pair(rows, mode, workers, conns, other)
    r = ratio(ours.rps if ours else None, theirs.rps if theirs else None)
    if r is None:
        return Check(name, _absent(workers, unavailable), NOT_MEASURED)
    return Check(name, f"{r:.2f}{TIMES}", PASS if r >= floor else FAIL)


def p99_at_most(
    rows: Sequence[Row],
    mode: str,
    workers: int,
    conns: int,
    other: str,
    ceiling: float,
    unavailable: Collection[str] = (),
) -> Check:
    name = f"{_where(mode, workers, conns)}: p99 ≤ {ceiling:.1f} {TIMES} {_name(other)}"
    ours, theirs = _pair(rows, mode, workers, conns, other)
    r = ratio(ours.p99_us if ours else None, theirs.p99_us if theirs else None)
    if r is None:
        return Check(name, _absent(workers, unavailable), NOT_MEASURED)
    return Check(name, f"{r:.2f}{TIMES}", PASS if r <= ceiling else FAIL)


def clean_under_load(
    rows: Sequence[Row], mode: str, workers: int, conns: int, unavailable: Collection[str] = ()
) -> Check:
    name = f"{_where(mode, workers, conns)}: 0 errors, 0 timeouts, p99 ≤ 1.5 {TIMES} nginx"
    ours, theirs = _pair(rows, mode, workers, conns, "nginx")
    if ours is None or theirs is None:
        return Check(name, _absent(workers, unavailable), NOT_MEASURED)
    return _clean(name, ours.errors, ours.timeouts, ratio(ours.p99_us, theirs.p99_us))


def clean_reconnects(
    bursts: Sequence[Bursts], workers: int, unavailable: Collection[str] = ()
) -> Check:
    name = (
        f"shared · {_workers(workers)} · {RECONNECT_CONNS:,} clients reconnecting at once:"
        f" 0 errors, 0 timeouts, worst p99 ≤ 1.5 {TIMES} nginx"
    )
    ours = _burst(bursts, Variant("zerodown", workers))
    theirs = _burst(bursts, Variant("nginx", workers))
    if ours is None or theirs is None or not ours.results:
        return Check(name, _absent(workers, unavailable), NOT_MEASURED)
    return _clean(name, ours.errors, ours.timeouts, ratio(ours.worst_p99_us, theirs.worst_p99_us))


def idle_memory(idle: Idle | None) -> Check:
    name = f"idle keep-alive connections: < {MAX_KB_PER_IDLE_CONN:g} KB RSS per connection"
    if idle is not None:
        name = f"{idle.wanted:,} " + name
    per_conn = idle.kb_per_conn if idle else None
    if idle is None or per_conn is None:
        return Check(name, "—", NOT_MEASURED)
    measured = f"{per_conn:.1f} KB ({idle.opened:,} open, {idle.served:,} served 200)"
    ok = per_conn < MAX_KB_PER_IDLE_CONN and idle.opened == idle.wanted == idle.served
    return Check(name, measured, PASS if ok else FAIL)


def deploy_under_load(load: DeployLoad | None) -> Check:
    """Every deploy succeeds inside the closed-loop load, and not one request fails
    (connect, read or write error, timeout, non-2xx/3xx)."""
    strategies = ", then ".join(d.strategy for d in load.deploys) if load else ""
    through = f", through {load.dataplane}" if load is not None else ""
    name = (
        f"a deploy under the highest sustained load ({strategies or 'rolling, then blue_green'}"
        f"{through}): it succeeds with 0 failed requests"
    )
    if load is None:
        return Check(name, "—", NOT_MEASURED)
    if not load.deploys:
        return Check(name, load.error or "no deploy ran", FAIL)
    measured = "; ".join(_deploy_measured(d) for d in load.deploys)
    return Check(name, measured, PASS if load.clean else FAIL)


def _deploy_measured(d: LoadedDeploy) -> str:
    took = f" in {d.deploy_s:.1f} s" if d.deploy_s is not None else ""
    outcome = f"{d.outcome or 'no outcome'}{took}"
    if d.wrk is None:
        return f"{d.strategy}: {outcome}, wrk did not finish"
    inside = "" if d.covered else ", outlasted the load"
    return (
        f"{d.strategy}: {outcome}{inside}, {d.failed_requests:,} failed requests"
        f" ({d.wrk.requests:,} answered)"
    )


def _clean(name: str, errors: int, timeouts: int, p99_ratio: float | None) -> Check:
    p99 = f"{p99_ratio:.2f}{TIMES}" if p99_ratio is not None else "—"
    measured = f"errors {errors}, timeouts {timeouts}, p99 {p99}"
    if p99_ratio is None:
        return Check(name, measured, NOT_MEASURED)
    ok = errors == 0 and timeouts == 0 and p99_ratio <= 1.5
    return Check(name, measured, PASS if ok else FAIL)


def _absent(workers: int, unavailable: Collection[str]) -> str:
    zerodown = Variant("zerodown", workers)
    return f"{zerodown.label} not available" if zerodown.key in unavailable else "—"


def _pair(
    rows: Sequence[Row], mode: str, workers: int, conns: int, other: str
) -> tuple[Row | None, Row | None]:
    return (
        find(rows, mode, conns, Variant("zerodown", workers)),
        find(rows, mode, conns, Variant(other, workers)),
    )


def _burst(bursts: Sequence[Bursts], variant: Variant) -> Bursts | None:
    return next((b for b in bursts if b.variant == variant), None)


def _where(mode: str, workers: int, conns: int) -> str:
    mode_name = "own core" if mode == OWN_CORE else "shared"
    return f"{mode_name} · {_workers(workers)} · c={conns:,}"


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n > 1 else ''}"


def _name(proxy: str) -> str:
    return "HAProxy" if proxy == "haproxy" else proxy


def _unit(proxy: str, workers: int) -> str:
    unit = "thread" if proxy == "haproxy" else "worker"
    return f"({workers} {unit}{'s' if workers > 1 else ''})"
