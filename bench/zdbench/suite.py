"""One benchmark run, start to finish: backends, the proxy matrix in both
modes, reconnect bursts, idle connections, large bodies, a deploy under
load; then the report.

Every process is started through one Supervisor, so however the run ends
(error, Ctrl-C, SIGTERM) `procs.guard` stops them all.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from zdbench import clients, deploy, procfs
from zdbench import https as https_row
from zdbench import tcp as tcp_row
from zdbench.machine import loadavg, machine_info
from zdbench.model import OWN_CORE, SHARED, Bursts, DeployLoad, Idle, Run, Transfer, Variant
from zdbench.plan import BURST_GAP_S, Plan, order
from zdbench.procs import RUN_SLACK, StartError, Supervisor, guard
from zdbench.report import Report
from zdbench.servers import (
    Ports,
    free_port,
    proxy_tree,
    start_backend,
    start_demo,
    start_proxy,
    wait_port_free,
)
from zdbench.targets import RECONNECT_CONNS
from zdbench.tcpstats import TcpRun
from zdbench.wrk import WrkOutputError, WrkResult, parse_wrk, wrk_command

PROXY_CPU = "0"  # own core: the proxy here ...
LOAD_CPU = "1"  # ... wrk and the backends here
BUSY_SHARE = 0.1  # a worker that served less than this share of the CPU is not serving
IDLE_CONFIG = 'header_timeout = "300s"'  # idle connections must outlive the whole idle test
FD_MARGIN = 200  # descriptors beyond the idle connections (wrk, logs, upstreams)


@dataclasses.dataclass
class Suite:
    plan: Plan
    sup: Supervisor
    work: Path
    ports: Ports
    backends: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    runs: list[Run] = dataclasses.field(default_factory=list)
    bursts: list[Bursts] = dataclasses.field(default_factory=list)
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)  # variant key -> why
    not_measured: dict[str, str] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)
    _starts: int = 0
    _work_of: dict[int, Path] = dataclasses.field(default_factory=dict)  # proxy pid -> its dir

    # -- the matrix ---------------------------------------------------------------------

    def matrix(self) -> None:
        modes = self.plan.modes
        if OWN_CORE in modes and len(os.sched_getaffinity(0)) < 2:
            self.not_measured["own core mode"] = "needs 2 CPUs, this machine has 1"
            modes = tuple(m for m in modes if m != OWN_CORE)
        for rep in range(self.plan.reps):
            for mode in modes:
                self._pin_backends(mode)
                for variant in order(self.plan.variants_for(mode), rep):
                    if variant.key not in self.unavailable:
                        self._measure(mode, variant, rep)
        self._pin_backends(SHARED)

    def _measure(self, mode: str, variant: Variant, rep: int) -> None:
        proc = self._start(variant, mode)
        if proc is None:
            return
        try:
            if not self._warm_up(proc, mode, variant):
                return
            for conns in self.plan.conns:
                if not self._one_run(proc, mode, variant, conns, rep):
                    return
        finally:
            self._stop(proc)

    def _warm_up(self, proc: subprocess.Popen[bytes], mode: str, variant: Variant) -> bool:
        """A short run first; for zerodown with workers > 1 it also tells if they all serve."""
        before = self._proxy_ticks(proc)
        self._wrk(mode, self.plan.conns[0], self.plan.warmup_s)
        busy = procfs.busy_processes(before, self._proxy_ticks(proc), BUSY_SHARE)
        # Only the embedded proxy's workers are processes; nginx's and HAProxy's
        # (threads) are the proxies' own business, as in their plain rows.
        if variant.proxy == "zerodown" and variant.workers > 1 and len(busy) < variant.workers:
            self.unavailable[variant.key] = (
                f"not available: with `workers = {variant.workers}` only {len(busy)} process"
                f" served the warm-up (each worker must take ≥ {BUSY_SHARE:.0%} of the CPU);"
                " it behaves as 1 worker"
            )
            print(f"  {variant.label}: {self.unavailable[variant.key]}", flush=True)
            return False
        return True

    def _one_run(
        self, proc: subprocess.Popen[bytes], mode: str, variant: Variant, conns: int, rep: int
    ) -> bool:
        before = self._proxy_ticks(proc)
        result = self._wrk(mode, conns, self.plan.duration_s)
        after = self._proxy_ticks(proc)
        where = f"{mode} rep {rep + 1} {variant.label} c={conns}"
        if proc.poll() is not None:
            self.failures.append(f"{where}: the proxy exited with {proc.returncode}")
            return False
        if result is None:
            self.failures.append(f"{where}: wrk did not finish")
            return True
        cpu = procfs.cpu_us_per_request(procfs.ticks_delta(before, after), result.requests)
        self.runs.append(Run(mode, variant, conns, rep, result, cpu))
        print(f"  {where}: {progress(result, cpu)}", flush=True)
        return True

    # -- 1,000 clients reconnecting at once -------------------------------------------------

    def reconnects(self) -> None:
        if self.plan.bursts <= 0:
            self.not_measured["reconnect bursts"] = "BENCH_BURSTS=0"
            return
        for variant in self.plan.burst_variants():
            if variant.key in self.unavailable:
                continue
            proc = self._start(variant, SHARED)
            if proc is None:
                continue
            results: list[WrkResult] = []
            try:
                for _ in range(self.plan.bursts):  # each wrk opens its connections at once
                    result = self._wrk(SHARED, RECONNECT_CONNS, self.plan.burst_s)
                    if result is not None:
                        results.append(result)
                    time.sleep(BURST_GAP_S)
            finally:
                self._stop(proc)
            self.bursts.append(Bursts(variant, RECONNECT_CONNS, tuple(results)))
            p99s = " / ".join(f"{(r.p99_us or 0) / 1000:.1f}" for r in results)
            print(f"  reconnect {variant.label}: p99 {p99s} ms", flush=True)

    # -- idle connections ---------------------------------------------------------------------

    def idle(self) -> Idle | None:
        wanted = self.plan.idle_conns
        if wanted <= 0:
            self.not_measured["idle connections"] = "BENCH_IDLE_CONNS=0"
            return None
        limit = raise_nofile()
        if limit < wanted + FD_MARGIN:
            self.not_measured["idle connections"] = (
                f"{wanted:,} connections need {wanted + FD_MARGIN:,} file descriptors;"
                f" RLIMIT_NOFILE allows {limit:,}"
            )
            return None
        proc = self._start(Variant("zerodown", 1), SHARED, extra=IDLE_CONFIG)
        if proc is None:
            return None
        try:
            pid = proc.pid
            result = uvloop.run(
                clients.idle_connections(
                    self.ports.front,
                    wanted,
                    lambda: procfs.status_kb(pid, "VmRSS"),
                    lambda: count_sockets(pid),
                )
            )
        finally:
            self._stop(proc)
        print(f"  idle: {result}", flush=True)
        return result

    # -- large bodies ------------------------------------------------------------------------

    def stream(self) -> list[Transfer]:
        size = self.plan.stream_bytes
        if size <= 0:
            self.not_measured["large bodies"] = "BENCH_STREAM_MB=0"
            return []
        demo_port = free_port()
        try:
            demo = start_demo(self.sup, demo_port, self.work / "demo")
        except StartError as exc:
            self.failures.append(f"demo app: {exc}")
            return []
        proc = self._start(Variant("zerodown", 1), SHARED, upstreams=(demo_port,))
        if proc is None:
            self.sup.stop(demo)
            return []
        try:
            pid = proc.pid
            base = procfs.status_kb(pid, "VmRSS")
            out: list[Transfer] = []

            def peak() -> int | None:
                return procfs.status_kb(pid, "VmHWM")

            for client in (clients.download, clients.upload):
                t = uvloop.run(client(self.ports.front, size, peak))
                out.append(dataclasses.replace(t, base_rss_kb=base))
                print(f"  {t.direction}: {t}", flush=True)
        finally:
            self._stop(proc)
            self.sup.stop(demo)
        return out

    # -- a deploy under the highest sustained load -------------------------------------------

    def deploys(self) -> list[DeployLoad]:
        conns = self.plan.deploy_conns
        if conns <= 0:
            self.not_measured["deploy under load"] = "BENCH_DEPLOY_CONNS=0"
            return []
        out = []
        for dataplane in self.plan.deploy_dataplanes:
            result = self._deploys_through(dataplane, conns)
            if result is not None:
                out.append(result)
        return out

    def _deploys_through(self, dataplane: str, conns: int) -> DeployLoad | None:
        where = f"deploy under load ({dataplane})"
        try:
            result = deploy.under_load(
                self.sup,
                self.work / f"deploy-{dataplane}",
                self.ports,
                conns=conns,
                threads=self.plan.threads,
                settle_s=self.plan.deploy_settle_s,
                dataplane=dataplane,
            )
        except StartError as exc:
            self.failures.append(f"{where}: `zerodown serve` did not start: {exc}")
            return None
        finally:
            wait_port_free(self.ports.front)
        if result.error:
            self.failures.append(f"{where}: {result.error}")
        if result.daemon_exit != 0:
            how = (
                "had to be killed" if result.daemon_exit is None else f"exited {result.daemon_exit}"
            )
            self.failures.append(f"{where}: `zerodown serve` {how} on SIGTERM")
        if result.leftovers:
            self.failures.append(
                f"{where}: {result.leftovers} app instance(s) outlived `zerodown serve` (killed)"
            )
        return result

    def https(self) -> list[https_row.HttpsRun]:
        """The HTTPS row (zdbench/https.py): zerodown and nginx terminating TLS 1.3."""
        try:
            runs, failures = https_row.measure(
                self.sup,
                self.work,
                self.ports,
                self.plan.conns,
                self.plan.duration_s,
                self.plan.threads,
                self._edge_variants(https_row.VARIANTS),
            )
        except StartError as exc:
            self.failures.append(f"https: a proxy did not start: {exc}")
            return []
        self.failures += failures
        return runs

    def tcp(self) -> list[TcpRun]:
        """The TCP row (zdbench/tcp.py): an echo service through each proxy."""
        try:
            runs, failures = tcp_row.measure(
                self.sup,
                self.work / "tcp",
                self.ports,
                self.plan.conns,
                self.plan.duration_s,
                self._edge_variants(tcp_row.VARIANTS),
            )
        except StartError as exc:
            self.failures.append(f"tcp: a process did not start: {exc}")
            return []
        self.failures += failures
        return runs

    def _edge_variants(self, variants: tuple[Variant, ...]) -> tuple[Variant, ...]:
        """The HTTPS and TCP rows' proxies that BENCH_PROXIES names (all by default)."""
        return tuple(v for v in variants if v in self.plan.variants)

    # -- processes ---------------------------------------------------------------------------

    def start_backends(self) -> None:
        for i, port in enumerate(self.ports.backends):
            self.backends.append(start_backend(self.sup, port, self.work / f"backend{i + 1}"))

    def _start(
        self,
        variant: Variant,
        mode: str,
        *,
        extra: str = "",
        upstreams: tuple[int, ...] | None = None,
    ) -> subprocess.Popen[bytes] | None:
        self._starts += 1
        work = self.work / f"{self._starts:03d}-{variant.key}-{mode}"
        try:
            proc = start_proxy(
                self.sup,
                variant,
                self.ports,
                work,
                cpus=PROXY_CPU if mode == OWN_CORE else None,
                upstreams=upstreams,
                zerodown_extra=extra,
            )
        except StartError as exc:
            if variant.proxy == "zerodown" and variant.workers > 1:
                self.unavailable[variant.key] = (
                    f"not available: `zerodown serve` with `workers = {variant.workers}`"
                    f" did not start: {exc}"
                )
            else:
                self.failures.append(f"{variant.label} ({mode}) did not start: {exc}")
            print(f"  {variant.label}: did not start: {exc}", flush=True)
            return None
        self._work_of[proc.pid] = work
        return proc

    def _proxy_ticks(self, proc: subprocess.Popen[bytes]) -> dict[int, int]:
        """The proxy's CPU ticks by pid: a driven nginx counts, though not proc's child."""
        return proxy_tree(proc.pid, self._work_of[proc.pid])

    def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        self.sup.stop(proc)
        wait_port_free(self.ports.front)

    def _wrk(self, mode: str, conns: int, duration: float) -> WrkResult | None:
        argv = wrk_command(
            f"http://127.0.0.1:{self.ports.front}/",
            connections=conns,
            threads=self.plan.threads,
            duration_s=duration,
        )
        cpus = LOAD_CPU if mode == OWN_CORE else None
        try:
            return parse_wrk(self.sup.run(argv, timeout=duration + RUN_SLACK, cpus=cpus))
        except (subprocess.TimeoutExpired, WrkOutputError):
            return None

    def _pin_backends(self, mode: str) -> None:
        cpus = {int(LOAD_CPU)} if mode == OWN_CORE else os.sched_getaffinity(0)
        for proc in self.backends:
            procfs.set_affinity(procfs.tree(proc.pid), cpus)


def run_suite(plan: Plan, command: str) -> Report:
    """Everything the plan asks for; the report even when parts failed."""
    machine = machine_info()
    ports = Ports(free_port(), free_port(), (free_port(), free_port()))
    print(f"zdbench: about {plan.estimate_s() / 60:.0f} min; front port {ports.front}", flush=True)
    with tempfile.TemporaryDirectory(prefix="zdbench-") as tmp, guard(Supervisor()) as sup:
        suite = Suite(plan, sup, Path(tmp), ports)
        suite.start_backends()
        steps: list[tuple[str, str, Callable[[], Any]]] = [
            ("matrix", "matrix", suite.matrix),
            ("bursts", "reconnect bursts", suite.reconnects),
            ("idle", "idle connections", suite.idle),
            ("stream", "large bodies", suite.stream),
            ("deploy", "deploy under load", suite.deploys),
            ("https", "https", suite.https),
            ("tcp", "tcp", suite.tcp),
        ]
        results: dict[str, Any] = {}
        for key, name, step in steps:
            if key not in plan.steps:
                suite.not_measured[name] = f"not in BENCH_STEPS={','.join(plan.steps)}"
                continue
            print(f"zdbench: {name}", flush=True)
            results[name] = step()
    return Report(
        date=time.strftime("%Y-%m-%d"),
        command=command,
        plan=dataclasses.asdict(plan),
        machine={**machine, "loadavg_after": loadavg()},
        runs=suite.runs,
        bursts=suite.bursts,
        idle=results.get("idle connections"),
        transfers=results.get("large bodies", []),
        deploys=results.get("deploy under load", []),
        https=results.get("https", []),
        tcp=results.get("tcp", []),
        unavailable=suite.unavailable,
        not_measured=suite.not_measured,
        failures=suite.failures,
    )


def progress(result: WrkResult, cpu_us: float | None) -> str:
    cpu = f"{cpu_us:.0f} µs/req" if cpu_us is not None else "— µs/req"
    p99 = f"{result.p99_us / 1000:.2f} ms" if result.p99_us is not None else "—"
    return (
        f"{result.rps:,.0f} req/s, p99 {p99}, errors {result.errors},"
        f" timeouts {result.socket.timeout}, {cpu}"
    )


def raise_nofile() -> int:
    """Lift the descriptor limit as far as allowed (children inherit it); the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(hard, 1 << 20), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            continue
    return soft


def count_sockets(pid: int) -> int:
    """Sockets a process holds open."""
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    try:
        for fd in fd_dir.iterdir():
            try:
                if os.readlink(fd).startswith("socket:"):
                    count += 1
            except OSError:
                continue
    except OSError:
        return 0
    return count


def command_line(env: dict[str, str], keys: tuple[str, ...]) -> str:
    """How this run was made, to quote under the table."""
    settings = " ".join(f"{k}={env[k]}" for k in keys if env.get(k))
    how = "make bench" if env.get("MAKELEVEL") else f"{Path(sys.executable).name} bench/run.py"
    return f"{settings} {how}".strip()
