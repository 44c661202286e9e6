"""What one `make bench` runs, from the environment. Pure.

BENCH_QUICK=1           smoke run: 3 s runs, 1 repetition, fewer bursts (~2 min)
BENCH_DURATION=10       seconds per wrk run
BENCH_WARMUP=2          seconds of the warm-up run after each proxy start
BENCH_REPS=2            repetitions of the whole matrix
BENCH_CONNS=50,200,1000 wrk connections
BENCH_PROXIES=...       variants, e.g. zerodown-1,nginx-1,zerodown-nginx-1 (default: all twelve)
BENCH_MODES=shared,own_core
BENCH_BURSTS=4          reconnect bursts per proxy (0: skip)
BENCH_IDLE_CONNS=10000  idle keep-alive connections (0: skip)
BENCH_STREAM_MB=1024    size of the streamed upload and download (0: skip)
BENCH_DEPLOY_CONNS=200  wrk connections during the deploys under load (0: skip)
BENCH_DEPLOY_SETTLE=5   seconds of that load before and after each deploy (quick: 2)
BENCH_DEPLOY_DATAPLANES=embedded,haproxy,nginx  the deploys' data planes (nginx-reload too)
BENCH_STEPS=...         the steps to run (default: all), e.g. https,tcp
BENCH_OUT=bench/results where the JSON and markdown go
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from zdbench.model import MODES, OWN_CORE, PROXIES, Variant

ALL_VARIANTS = tuple(Variant(p, w) for p in PROXIES for w in (1, 2))
DATAPLANES = ("embedded", "haproxy", "nginx")
# Also allowed in BENCH_DEPLOY_DATAPLANES: nginx taking each step by a reload
# (`upstreams = "reload"`), to set beside its default, the Lua balancer's table.
DEPLOY_DATAPLANES = (*DATAPLANES, "nginx-reload")
STEPS = ("matrix", "bursts", "idle", "stream", "deploy", "https", "tcp")
ENV_KEYS = (
    "BENCH_QUICK",
    "BENCH_DURATION",
    "BENCH_WARMUP",
    "BENCH_REPS",
    "BENCH_CONNS",
    "BENCH_PROXIES",
    "BENCH_MODES",
    "BENCH_BURSTS",
    "BENCH_IDLE_CONNS",
    "BENCH_STREAM_MB",
    "BENCH_DEPLOY_CONNS",
    "BENCH_DEPLOY_SETTLE",
    "BENCH_DEPLOY_DATAPLANES",
    "BENCH_STEPS",
    "BENCH_OUT",
)
START_S = 2.0  # a proxy start, readiness and stop, for the time estimate
GAP_S = 0.5  # between wrk runs
BURST_GAP_S = 1.0  # between two reconnect bursts: the last burst's connections close
DEPLOY_FIXED_S = 4.0  # deploy extra: serve's start, the first deploy, its stop
DEPLOY_EACH_S = 2.0  # one deploy of the demo app under load, for the time estimate
DEPLOYS = 2  # rolling, then blue_green
EDGE_PROXIES = 5  # the HTTPS and TCP rows: zerodown on each data plane, nginx, HAProxy
TCP_EXTRA_LOADS = 2  # new connections and bulk, beside a round-trip run per concurrency


@dataclass(frozen=True, slots=True)
class Plan:
    quick: bool
    duration_s: float
    warmup_s: float
    reps: int
    conns: tuple[int, ...]
    threads: int
    modes: tuple[str, ...]
    variants: tuple[Variant, ...]
    bursts: int
    burst_s: float
    idle_conns: int
    stream_bytes: int
    deploy_conns: int
    deploy_settle_s: float
    deploy_dataplanes: tuple[str, ...] = DATAPLANES
    steps: tuple[str, ...] = STEPS

    def variants_for(self, mode: str) -> tuple[Variant, ...]:
        """Own core is the per-core comparison: one worker, on one CPU."""
        if mode == OWN_CORE:
            return tuple(v for v in self.variants if v.workers == 1)
        return self.variants

    def burst_variants(self) -> tuple[Variant, ...]:
        if self.quick:
            return tuple(v for v in self.variants if v.workers == 1)
        return self.variants

    def estimate_s(self) -> float:
        """Rough wall time of the whole plan, to print before it starts."""
        per_start = START_S + self.warmup_s + len(self.conns) * (self.duration_s + GAP_S)
        starts = sum(len(self.variants_for(m)) for m in self.modes) * self.reps
        bursts = len(self.burst_variants()) * (
            START_S + self.bursts * (self.burst_s + BURST_GAP_S) if self.bursts else 0
        )
        run = self.duration_s + GAP_S
        parts = {
            "matrix": starts * per_start,
            "bursts": bursts,
            "idle": 15.0 if self.idle_conns else 0.0,
            "stream": self.stream_bytes / 150e6 + 3 if self.stream_bytes else 0.0,
            "deploy": self.deploy_estimate_s(),
            "https": EDGE_PROXIES * (START_S + len(self.conns) * run),
            "tcp": EDGE_PROXIES * (START_S + (len(self.conns) + TCP_EXTRA_LOADS) * run),
        }
        return sum(seconds for step, seconds in parts.items() if step in self.steps)

    def deploy_estimate_s(self) -> float:
        """The deploy extra: a steady run, then each deploy with its load before and after."""
        if self.deploy_conns <= 0:
            return 0.0
        load = 2 * self.deploy_settle_s
        each = DEPLOY_FIXED_S + load + DEPLOYS * (load + DEPLOY_EACH_S)
        return each * len(self.deploy_dataplanes)


def order(variants: tuple[Variant, ...], rep: int) -> tuple[Variant, ...]:
    """A B C on even repetitions, C B A on odd ones, so no proxy always runs first or last."""
    return variants if rep % 2 == 0 else variants[::-1]


def plan_from_env(env: Mapping[str, str]) -> Plan:
    """The plan; ValueError naming the variable when one is malformed."""
    quick = env.get("BENCH_QUICK", "") not in ("", "0")
    modes = _list(env, "BENCH_MODES", ",".join(MODES))
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"BENCH_MODES: {mode!r} is not one of {', '.join(MODES)}")
    try:
        keys = _list(env, "BENCH_PROXIES", ",".join(v.key for v in ALL_VARIANTS))
        variants = tuple(Variant.parse(k) for k in keys)
    except ValueError as exc:
        raise ValueError(f"BENCH_PROXIES: {exc}") from None
    dataplanes = _list(env, "BENCH_DEPLOY_DATAPLANES", ",".join(DATAPLANES))
    for dataplane in dataplanes:
        if dataplane not in DEPLOY_DATAPLANES:
            raise ValueError(
                f"BENCH_DEPLOY_DATAPLANES: {dataplane!r} is not one of "
                f"{', '.join(DEPLOY_DATAPLANES)}"
            )
    steps = _list(env, "BENCH_STEPS", ",".join(STEPS))
    for step in steps:
        if step not in STEPS:
            raise ValueError(f"BENCH_STEPS: {step!r} is not one of {', '.join(STEPS)}")
    return Plan(
        quick=quick,
        duration_s=_number(env, "BENCH_DURATION", 3 if quick else 10, low=1),
        warmup_s=_number(env, "BENCH_WARMUP", 1 if quick else 2, low=1),
        reps=int(_number(env, "BENCH_REPS", 1 if quick else 2, low=1)),
        conns=_counts(env, "BENCH_CONNS", "50,200,1000"),
        threads=2,
        modes=tuple(modes),
        variants=variants,
        bursts=int(_number(env, "BENCH_BURSTS", 2 if quick else 4, low=0)),
        burst_s=2.0 if quick else 3.0,
        idle_conns=int(_number(env, "BENCH_IDLE_CONNS", 10_000, low=0)),
        stream_bytes=int(_number(env, "BENCH_STREAM_MB", 1024, low=0)) << 20,
        deploy_conns=int(_number(env, "BENCH_DEPLOY_CONNS", 200, low=0)),
        deploy_settle_s=_number(env, "BENCH_DEPLOY_SETTLE", 2 if quick else 5, low=1),
        deploy_dataplanes=tuple(dataplanes),
        steps=tuple(steps),
    )


def _list(env: Mapping[str, str], key: str, default: str) -> list[str]:
    items = [i.strip() for i in env.get(key, default).split(",") if i.strip()]
    if not items:
        raise ValueError(f"{key}: empty")
    return items


def _number(env: Mapping[str, str], key: str, default: float, *, low: float) -> float:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}: not a number: {raw!r}") from None
    if value < low:
        raise ValueError(f"{key}: must be ≥ {low:g}, got {raw!r}")
    return value


def _counts(env: Mapping[str, str], key: str, default: str) -> tuple[int, ...]:
    items = _list(env, key, default)
    for item in items:
        if not item.isdigit() or int(item) <= 0:
            raise ValueError(f"{key}: not a positive whole number: {item!r}")
    return tuple(int(i) for i in items)
