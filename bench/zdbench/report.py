"""The report of one run: every raw number as JSON, and a markdown summary
with each row's ratios against nginx and the issue's targets. Pure but for
`write`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zdbench.https import HttpsRun, https_table
from zdbench.model import (
    MODE_TITLES,
    MODES,
    OWN_CORE,
    PROXY_ORDER,
    TIMES,
    Bursts,
    DeployLoad,
    Idle,
    LoadedDeploy,
    Row,
    Run,
    Transfer,
    Variant,
    aggregate,
    find,
    ratio,
)
from zdbench.targets import Check, check_all, deploy_under_load
from zdbench.tcpstats import TcpRun, tcp_table
from zdbench.wrk import WrkResult


@dataclass(frozen=True)
class Report:
    date: str
    command: str
    plan: Mapping[str, Any]
    machine: Mapping[str, Any]
    runs: Sequence[Run] = ()
    bursts: Sequence[Bursts] = ()
    idle: Idle | None = None
    transfers: Sequence[Transfer] = ()
    unavailable: Mapping[str, str] = field(default_factory=dict)  # variant key -> why
    not_measured: Mapping[str, str] = field(default_factory=dict)  # what else -> why
    failures: Sequence[str] = ()  # runs that broke (a proxy that would not start, ...)
    deploys: Sequence[DeployLoad] = ()  # the deploy-under-load extra, one per data plane
    https: Sequence[HttpsRun] = ()  # the HTTPS row (https.py)
    tcp: Sequence[TcpRun] = ()  # the TCP row (tcp.py)

    @property
    def rows(self) -> list[Row]:
        return aggregate(self.runs)

    def checks(self) -> list[Check]:
        conns = sorted({r.conns for r in self.runs})
        checks = check_all(self.rows, self.bursts, self.idle, conns, set(self.unavailable))
        if not self.deploys:
            return [*checks, deploy_under_load(None)]
        return [*checks, *(deploy_under_load(d) for d in self.deploys)]


def to_json(report: Report) -> str:
    data = dataclasses.asdict(report)
    data["rows"] = [dataclasses.asdict(r) for r in report.rows]
    data["targets"] = [dataclasses.asdict(c) for c in report.checks()]
    return json.dumps(data, indent=2, default=str) + "\n"


def to_markdown(report: Report) -> str:
    out = [
        f"# zerodown benchmark, {report.date}",
        "",
        f"Made by `{report.command}`.",
        "",
        *_machine_lines(report.machine),
        *_plan_lines(report.plan),
        "",
        "## Targets",
        "",
        *targets_table(report.checks()),
    ]
    rows = report.rows
    missing = [Variant.parse(key) for key in report.unavailable]
    for mode in MODES:
        mode_rows = [r for r in rows if r.mode == mode]
        if mode_rows:
            absent = [v for v in missing if mode != OWN_CORE or v.workers == 1]
            out += ["", f"## {MODE_TITLES[mode]}", "", *matrix_table(mode_rows, rows, absent)]
    if report.bursts:
        out += ["", "## 1,000 clients reconnecting at once (shared)", ""]
        out += bursts_table(report.bursts)
    if report.idle is not None:
        out += ["", f"## {report.idle.wanted:,} idle keep-alive connections (zerodown)", ""]
        out += idle_table(report.idle)
    if report.transfers:
        out += ["", "## Large bodies streamed through zerodown (1 worker)", ""]
        out += transfer_table(report.transfers)
    for d in report.deploys:
        title = f"zerodown ({d.dataplane}), {d.workers} workers"
        out += ["", f"## A deploy under the highest sustained load ({title})", ""]
        out += deploy_lines(d)
    if report.https:
        out += ["", "## HTTPS: TLS 1.3 terminated, keep-alive (shared, 1 worker or thread)", ""]
        out += https_table(report.https)
    if report.tcp:
        out += ["", "## TCP: an echo service through each proxy (shared, 1 worker)", ""]
        out += tcp_table(report.tcp)
    if report.unavailable or report.not_measured or report.failures:
        out += ["", "## Not measured", ""]
        out += [f"- {Variant.parse(k).label}: {why}" for k, why in report.unavailable.items()]
        out += [f"- {what}: {why}" for what, why in report.not_measured.items()]
        out += [f"- failed: {f}" for f in report.failures]
    return "\n".join(out) + "\n"


def write(report: Report, directory: Path, stem: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_text(to_json(report))
    md_path.write_text(to_markdown(report))
    return json_path, md_path


# -- tables ------------------------------------------------------------------------------


def targets_table(checks: Iterable[Check]) -> list[str]:
    lines = _header("target", "measured", "verdict")
    marks = {"pass": "✅ pass", "fail": "❌ fail"}
    for c in checks:
        lines.append(_cells(c.target, c.measured, marks.get(c.verdict, c.verdict)))
    return lines


def matrix_table(
    rows: Sequence[Row], all_rows: Sequence[Row], unavailable: Sequence[Variant] = ()
) -> list[str]:
    """One line per row, ratios against nginx with as many workers, same mode and conns;
    a 'not available' line per conns for each variant that could not run."""
    lines = _header(
        "conns",
        "proxy",
        "req/s",
        "p50",
        "p99",
        "errors",
        "timeouts",
        "CPU µs/req",
        "req/s ÷ nginx",
        "p99 ÷ nginx",
    )
    entries = [(_rank(r.conns, r.variant), _matrix_line(r, all_rows)) for r in rows]
    for conns in sorted({r.conns for r in rows}):
        for v in unavailable:
            cells = [f"{conns:,}", v.label, "not available", *("—" for _ in range(7))]
            entries.append((_rank(conns, v), _cells(*cells)))
    return lines + [line for _, line in sorted(entries)]


def _matrix_line(row: Row, all_rows: Sequence[Row]) -> str:
    nginx = find(all_rows, row.mode, row.conns, Variant("nginx", row.variant.workers))
    return _cells(
        f"{row.conns:,}",
        row.variant.label,
        f"{row.rps:,.0f}",
        fmt_ms(row.p50_us),
        fmt_ms(row.p99_us),
        str(row.errors),
        str(row.timeouts),
        _num(row.cpu_us, ".1f"),
        fmt_ratio(ratio(row.rps, nginx.rps if nginx else None)),
        fmt_ratio(ratio(row.p99_us, nginx.p99_us if nginx else None)),
    )


def _rank(conns: int, v: Variant) -> tuple[int, int, int]:
    return (conns, v.workers, PROXY_ORDER.get(v.proxy, 9))


def bursts_table(bursts: Sequence[Bursts]) -> list[str]:
    lines = _header(
        "proxy", "bursts", "req/s (median)", "p99 per burst", "worst p99", "errors", "timeouts",
        "worst p99 ÷ nginx",
    )  # fmt: skip
    for b in bursts:
        nginx = next((n for n in bursts if n.variant == Variant("nginx", b.variant.workers)), None)
        lines.append(
            _cells(
                b.variant.label,
                f"{len(b.results)} {TIMES} {b.conns:,} conns",
                f"{b.rps:,.0f}",
                " / ".join(fmt_ms(r.p99_us) for r in b.results),
                fmt_ms(b.worst_p99_us),
                str(b.errors),
                str(b.timeouts),
                fmt_ratio(ratio(b.worst_p99_us, nginx.worst_p99_us if nginx else None)),
            )
        )
    return lines


def idle_table(idle: Idle) -> list[str]:
    lines = _header(
        "opened", "served 200", "RSS before", "RSS held idle", "RSS after serving", "per connection"
    )
    lines.append(
        _cells(
            f"{idle.opened:,} / {idle.wanted:,}",
            f"{idle.served:,}",
            fmt_kb(idle.rss_base_kb),
            fmt_kb(idle.rss_held_kb),
            fmt_kb(idle.rss_served_kb),
            _num(idle.kb_per_conn, ".1f", " KB"),
        )
    )
    if idle.error:
        lines += ["", f"Error: {idle.error}"]
    return lines


def transfer_table(transfers: Sequence[Transfer]) -> list[str]:
    lines = _header("direction", "size", "received", "seconds", "MB/s", "RSS before", "peak RSS")
    for t in transfers:
        lines.append(
            _cells(
                t.direction + ("" if t.ok else f" ❌ {t.error or f'status {t.status}'}"),
                fmt_bytes(t.size),
                fmt_bytes(t.received),
                f"{t.seconds:.1f}",
                _num(t.mb_per_s, ".0f"),
                fmt_kb(t.base_rss_kb),
                fmt_kb(t.peak_rss_kb),
            )
        )
    return lines


def deploy_lines(load: DeployLoad) -> list[str]:
    """What ran, one line per wrk run (the steady reference, then each deploy), and
    anything that went wrong."""
    out = [
        f"zerodown's demo app as the service ({load.instances} instances of each release),"
        f" `[proxy] workers = {load.workers}`. wrk, {load.threads} threads,"
        f" {load.conns:,} connections in a closed loop (each sends its next request as soon"
        " as it has an answer: as much load as this machine sustains), from"
        f" {load.settle_s:g} s before each deploy to {load.settle_s:g} s after the CLI returned;"
        " the steady run is the same load for as long, with no deploy. Socket errors:"
        " connect / read / write / timeout (no answer within 2 s)."
        + _serving(load.serving_processes, load.workers),
        "",
        *_header(
            "deploy", "outcome", "deploy time", "requests", "req/s", "p50", "p99",
            "socket errors", "non-2xx/3xx", "answered by (X-Version)", "running after",
        ),
    ]  # fmt: skip
    if load.steady is not None:
        out.append(_cells("none (steady load)", "—", "—", *_wrk_cells(load.steady), "—", "—"))
    for d in load.deploys:
        out.append(_deploy_row(d))
    for d in load.deploys:
        odd = {s: n for s, n in d.statuses.items() if not 200 <= s < 400}
        if odd:
            statuses = ", ".join(f"{s}: {n:,}" for s, n in odd.items())
            out += ["", f"{d.strategy} {d.version}: responses by status {statuses}."]
        if d.reason:
            out += ["", f"{d.strategy} {d.version}: {d.reason}"]
    if load.error:
        out += ["", f"Error: {load.error}"]
    if load.daemon_exit != 0 or load.leftovers:
        exit_ = "killed" if load.daemon_exit is None else f"exit {load.daemon_exit}"
        out += ["", f"`zerodown serve` on SIGTERM: {exit_}; instances left: {load.leftovers}."]
    return out


def _serving(processes: int | None, workers: int) -> str:
    if processes is None:
        return ""
    return (
        f" Proxy processes that served the steady run (each ≥ 10 % of the proxy's CPU):"
        f" {processes}{'' if processes >= workers else f' of {workers} workers ❌'}."
    )


def _deploy_row(d: LoadedDeploy) -> str:
    outcome = (d.outcome or "no outcome") + ("" if d.succeeded else f" ❌ (exit {d.exit_code})")
    if d.wrk is not None and not d.covered:
        outcome += " ❌ outlasted the load"
    load = (
        _wrk_cells(d.wrk) if d.wrk is not None else ["wrk did not finish", *("—" for _ in range(5))]
    )
    return _cells(
        f"{d.strategy} {d.previous} → {d.version}",
        outcome,
        _num(d.deploy_s, ".2f", " s"),
        *load,
        " · ".join(f"{v if v != '-' else 'no X-Version'} {n:,}" for v, n in d.versions.items())
        or "—",
        " · ".join(f"{v} {TIMES} {n}" for v, n in d.running_after.items()) or "none",
    )


def _wrk_cells(r: WrkResult) -> list[str]:
    s = r.socket
    return [
        f"{r.requests:,}",
        f"{r.rps:,.0f}",
        fmt_ms(r.p50_us),
        fmt_ms(r.p99_us),
        f"{s.connect} / {s.read} / {s.write} / {s.timeout}",
        f"{r.non_2xx:,}",
    ]


# -- formatting --------------------------------------------------------------------------


def fmt_ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:,.2f} ms"


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}{TIMES}"


def fmt_kb(kb: int | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f} MB"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}" if n % size == 0 else f"{n / size:.2f} {unit}"
    return f"{n} B"


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _header(*names: str) -> list[str]:
    return [_cells(*names), _cells(*("---" for _ in names))]


def _cells(*cells: str) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _machine_lines(m: Mapping[str, Any]) -> list[str]:
    tools = ", ".join(
        f"{name} {m[key]}"
        for name, key in (
            ("nginx", "nginx"),
            ("HAProxy", "haproxy"),
            ("wrk", "wrk"),
            ("Python", "python"),
            ("uvloop", "uvloop"),
            ("httptools", "httptools"),
        )
        if m.get(key)
    )
    zerodown = f"zerodown {m.get('zerodown', '?')} (git {m.get('git', '?')})"
    return [
        f"Machine: {m.get('nproc', '?')} CPUs ({m.get('cpu_model', '?')}), "
        f"Linux {m.get('kernel', '?')}; {zerodown}; {tools}.",
        f"Load average before / after: {m.get('loadavg_before', '?')} / "
        f"{m.get('loadavg_after', '?')} (other work on the machine makes every proxy slower).",
    ]


def _plan_lines(p: Mapping[str, Any]) -> list[str]:
    reps = p.get("reps", "?")
    return [
        f"Each run: wrk {p.get('threads', '?')} threads for {p.get('duration_s', '?')} s "
        f"after a {p.get('warmup_s', '?')} s warm-up per proxy start; "
        f"{reps} repetition{'s' if reps != 1 else ''}, proxies in alternating order; "
        "req/s, p50, p99 and CPU are medians over repetitions, errors and timeouts sums. "
        "Errors: connect/read/write errors and non-2xx/3xx responses; timeouts: "
        "no response within wrk's 2 s. CPU µs/req: the proxy's processes and threads "
        "(user + system) over the requests served.",
    ]
