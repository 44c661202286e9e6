"""The downtime report: what a load run saw, aggregated. Pure, no I/O but `write`.

"ok" is every request that got a response below 500 (a 404 is the app's
answer, not a dropped request); everything else is a failure of one kind.
Latency percentiles are over answered requests that are not long ones: a
long request measures the app's sleep, and a few of them would be the p99.
"""

from __future__ import annotations

import json
import math
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from zerodown.verify import chart
from zerodown.verify.load import FAILURE_KINDS, LoadResult, Sample
from zerodown.verify.sessions import SessionsTally
from zerodown.verify.story import During, Mark, deploy_marks, deploy_told

__all__ = ["Bucket", "During", "Latency", "Mark", "Report", "VersionSeen", "bucket_for"]

# Bucket widths the chart may use, in seconds: round numbers on a time axis.
BUCKET_WIDTHS = (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)
BUCKETS_WANTED = 40  # enough to see a 2 s switch as several bars, few enough to read
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds; all 0.0 when nothing was answered."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, latencies: Iterable[float]) -> Latency:
        ordered = sorted(latencies)
        if not ordered:
            return cls()
        p50, p90, p99 = (percentile(ordered, p) for p in PERCENTILES)
        return cls(p50, p90, p99, ordered[-1])

    def items(self) -> list[tuple[str, float]]:
        return [("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("max", self.max)]


@dataclass(frozen=True, slots=True)
class Bucket:
    """The requests that started in [start, start + width). Every bucket is the
    report's width but the last, which ends with the run."""

    start: float
    width: float
    ok: Mapping[str, int]  # successful requests per version
    failed: int = 0
    p50: float = 0.0  # seconds, over the bucket's answered short requests (0.0: none)
    p99: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + self.failed

    @property
    def rate(self) -> float:
        """Requests started per second in this bucket."""
        return self.total / self.width if self.width > 0 else 0.0

    def share(self, version: str) -> float:
        return self.ok.get(version, 0) / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class VersionSeen:
    """One version over the whole run: how many successes, first and last start."""

    requests: int
    first: float
    last: float


@dataclass(frozen=True, slots=True)
class Report:
    url: str
    duration: float  # seconds the load ran
    total: int
    ok: int
    failures: Mapping[str, int]  # every kind of FAILURE_KINDS, 0 included
    reconnects: int
    statuses: Mapping[int, int]  # responses per status code
    latency: Latency
    versions: Mapping[str, VersionSeen]  # in the order they first answered
    bucket: float
    buckets: tuple[Bucket, ...]  # contiguous from 0, empty ones included
    marks: tuple[Mark, ...] = ()
    started_at: float = 0.0  # wall clock at the origin: places journal times on the axis
    during: During | None = None
    sessions: SessionsTally | None = None  # verify --sessions N: the users' fates

    @property
    def failed(self) -> int:
        return self.total - self.ok

    @property
    def rate(self) -> float:
        return self.total / self.duration if self.duration > 0 else 0.0

    @property
    def end(self) -> float:
        """Seconds the time axis covers: to the end of the last bucket."""
        last = self.buckets[-1] if self.buckets else None
        return last.start + last.width if last else self.duration

    @classmethod
    def from_result(
        cls, result: LoadResult, bucket: float | None = None, marks: Sequence[Mark] = ()
    ) -> Report:
        """`bucket` seconds per time bucket; None chooses one from the run's length."""
        bucket = bucket_for(result.elapsed) if bucket is None else bucket
        if bucket <= 0:
            raise ValueError("bucket must be positive")
        samples = sorted(result.samples, key=lambda s: s.start)
        failures = Counter(s.failure for s in samples if s.failure is not None)
        return cls(
            url=result.spec.url,
            duration=result.elapsed,
            total=len(samples),
            ok=len(samples) - failures.total(),
            failures={kind: failures[kind] for kind in FAILURE_KINDS},
            reconnects=result.reconnects,
            statuses=dict(sorted(Counter(s.status for s in samples if s.answered).items())),
            latency=Latency.of(_timed(samples)),
            versions=versions_seen(samples),
            bucket=bucket,
            buckets=bucketed(samples, bucket, result.elapsed),
            marks=tuple(marks),
            started_at=result.started_at,
        )

    def with_deploy(self, view: Mapping[str, Any]) -> Report:
        """This report told as the deploy `view` (a DeployView): title and step marks."""
        version = str(view.get("version"))
        previous = next((v for v in self.versions if v not in (version, "-")), None)
        marks = deploy_marks(view, self.started_at)
        return replace(self, during=deploy_told(view, previous), marks=tuple(marks) or self.marks)

    def with_command(self, command: Sequence[str], code: int) -> Report:
        """This report told as `command`, which exited with `code`."""
        what = f"`{shlex.join(command)}`"
        return replace(self, during=During(what, f"exit {code}", ok=code == 0, kind="command"))

    def with_sessions(self, sessions: SessionsTally) -> Report:
        return replace(self, sessions=sessions)

    def to_json(self) -> dict[str, Any]:
        ms = {name: round(seconds * 1000, 3) for name, seconds in self.latency.items()}
        return {
            "url": self.url,
            "duration": round(self.duration, 3),
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "failures": dict(self.failures),
            "reconnects": self.reconnects,
            "rate": round(self.rate, 1),
            "statuses": {str(code): n for code, n in self.statuses.items()},
            "latency_ms": ms,
            "versions": {
                name: {
                    "requests": seen.requests,
                    "share": round(seen.requests / self.total, 4) if self.total else 0.0,
                    "first": round(seen.first, 3),
                    "last": round(seen.last, 3),
                }
                for name, seen in self.versions.items()
            },
            "bucket": self.bucket,
            "buckets": [
                {
                    "start": round(b.start, 3),
                    "width": round(b.width, 3),
                    "ok": dict(b.ok),
                    "failed": b.failed,
                    "p50_ms": round(b.p50 * 1000, 3),
                    "p99_ms": round(b.p99 * 1000, 3),
                }
                for b in self.buckets
            ],
            "marks": [{"at": round(m.at, 3), "label": m.label, "tone": m.tone} for m in self.marks],
            "started_at": round(self.started_at, 3),
            "during": None if self.during is None else asdict(self.during),
            "sessions": None if self.sessions is None else self.sessions.to_json(),
        }

    def summary(self) -> str:
        """A few lines for a terminal; the first says how what ran under load ended."""
        told = [] if self.during is None else [_during_line(self.during)]
        return "\n".join(
            [
                *told,
                f"{self.url}: {self.total} requests in {self.duration:.1f} s "
                f"({self.rate:.1f}/s), {self.failed} failed, {self.reconnects} reconnects",
                f"failures: {_failure_text(self.failures)}",
                "latency: " + " · ".join(f"{n} {_ms(v)}" for n, v in self.latency.items()),
                f"versions: {self._versions_text()}",
                *self._sessions_text(),
            ]
        )

    def _sessions_text(self) -> list[str]:
        """The sessions line, and why any were not kept (each reason on its own line)."""
        if self.sessions is None:
            return []
        said = self.sessions
        errors = (
            [f"  {said.errors} of {said.checks} checks were errors: {'; '.join(said.errors_said)}"]
            if said.errors
            else []
        )
        return [said.line(), *errors, *(f"  {why}" for why in said.why)]

    def chart_svg(self) -> str:
        return chart.render(self)

    def write(self, path_prefix: str | Path) -> tuple[Path, Path]:
        """Write `<prefix>.json` and `<prefix>.svg`; return both paths."""
        json_path = Path(f"{path_prefix}.json")
        svg_path = Path(f"{path_prefix}.svg")
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        svg_path.write_text(self.chart_svg(), encoding="utf-8")
        return json_path, svg_path

    def _versions_text(self) -> str:
        if not self.versions:
            return "none answered"
        return " · ".join(
            f"{name} {seen.requests / self.total:.1%} ({seen.first:.1f} to {seen.last:.1f} s)"
            for name, seen in self.versions.items()
        )


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values: a value that was measured,
    never an interpolation between two."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def versions_seen(samples: Sequence[Sample]) -> dict[str, VersionSeen]:
    """Successes per version, with first and last start; samples sorted by start."""
    seen: dict[str, VersionSeen] = {}
    for s in samples:
        if s.failure is None:
            old = seen.get(s.version)
            first = old.first if old else s.start
            seen[s.version] = VersionSeen((old.requests if old else 0) + 1, first, s.start)
    return seen


def bucket_for(duration: float) -> float:
    """The bucket width for a run of `duration` seconds: the narrowest round
    width giving at most BUCKETS_WANTED buckets (0.1 s for a few seconds)."""
    wanted = duration / BUCKETS_WANTED
    return next((w for w in BUCKET_WIDTHS if w >= wanted), BUCKET_WIDTHS[-1])


def bucketed(samples: Sequence[Sample], width: float, elapsed: float) -> tuple[Bucket, ...]:
    """Samples by start time into buckets of `width` seconds covering the whole run;
    the last one ends with the run (or just after its last sample), not at a whole width."""
    last = max((s.start for s in samples), default=0.0)
    # `//` both here and for each sample: float division may put 2.0 / 0.1 at 20
    # but 2.0 // 0.1 at 19, and a sample must land in a bucket that exists.
    count = max(math.ceil(elapsed / width), int(last // width) + 1 if samples else 0)
    groups: list[list[Sample]] = [[] for _ in range(count)]
    for s in samples:
        groups[int(s.start // width)].append(s)
    # A sample may start a hair after `elapsed` (the stop races the last sends):
    # its bucket then ends at that sample, so no request falls outside the axis.
    end = max(elapsed, math.nextafter(last, math.inf) if samples else 0.0)
    return tuple(
        _bucket(i * width, min(width, end - i * width), group) for i, group in enumerate(groups)
    )


def _bucket(start: float, width: float, samples: Sequence[Sample]) -> Bucket:
    ok = Counter(s.version for s in samples if s.failure is None)
    timed = sorted(_timed(samples))
    p50, p99 = (percentile(timed, p) for p in (50, 99)) if timed else (0.0, 0.0)
    return Bucket(start, width, dict(ok), len(samples) - ok.total(), p50, p99)


def _timed(samples: Sequence[Sample]) -> list[float]:
    answered = [s for s in samples if s.answered]
    short = [s.latency for s in answered if s.kind != "long"]
    return short or [s.latency for s in answered]  # only long requests: better than nothing


def _during_line(during: During) -> str:
    """ "deploy web v1 → v3, blue_green: rolled back: <why>": never only the load's counts,
    which read as a success when the deploy did not succeed."""
    line = f"{during.kind} {during.what}: {during.outcome}"
    return f"{line}: {during.reason}" if during.reason and not during.ok else line


def _failure_text(failures: Mapping[str, int]) -> str:
    seen = [f"{kind} {n}" for kind, n in failures.items() if n]
    return " · ".join(seen) if seen else "none"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
