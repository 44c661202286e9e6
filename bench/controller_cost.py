"""The controller's CPU per request while nginx or HAProxy carries load.

    PYTHONPATH=src:bench python bench/controller_cost.py [SECONDS] [CONNS] [VARIANTS]

VARIANTS: comma-separated, of nginx-file, nginx-udp, haproxy (those three by
default) and haproxy-nolog (the same HAProxy config without the per-request
log line: the log's share of HAProxy's own CPU).

Runs each driver (nginx with each log transport, HAProxy) in this process,
in front of two nginx backends, with wrk (2 threads) for SECONDS at CONNS
connections, and prints this process's CPU time (the driver: its log
reading, its health checks, its event loop) over the requests wrk
completed, and apart the proxy's (its master and workers, /proc).
Compare figures from the same run; a busy machine inflates all.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from zdbench.procs import Supervisor, guard
from zdbench.servers import free_port, start_backend
from zdbench.wrk import parse_wrk

from zerodown.dataplane.base import ManagedDataPlane
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings
from zerodown.routing import HealthSpec, PoolSpec, RoutingTable, ServiceSpec, TargetSpec

if TYPE_CHECKING:
    from zerodown.dataplane.nginx.settings import NginxLogTransport


def table(backends: list[int]) -> RoutingTable:
    targets = tuple(TargetSpec(address=f"127.0.0.1:{port}") for port in backends)
    health = HealthSpec(path="/health", interval=1.0)
    spec = ServiceSpec(name="bench", stable=PoolSpec(targets=targets), health=health)
    return RoutingTable(services=(spec,))


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (their exited children's too)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


async def measure(plane: ManagedDataPlane, label: str, seconds: int, conns: int) -> None:
    port = free_port()
    await plane.start([f"127.0.0.1:{port}"])
    try:
        await asyncio.sleep(1.0)  # health checks up, config live
        argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
        started, proxy_started = time.process_time(), cpu_seconds(plane.pids)
        wrk = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await wrk.communicate()
        await asyncio.sleep(0.6)  # the last buffered lines: nginx flushes every 250 ms
        await plane.stats()
        spent = time.process_time() - started
        proxy = cpu_seconds(plane.pids) - proxy_started
        result = parse_wrk(out.decode())
        per_request = 1e6 / max(1, result.requests)
        print(
            f"{label:<16} {result.rps:9,.0f} req/s  controller {spent * per_request:6.2f} µs/req"
            f"  proxy {proxy * per_request:6.2f} µs/req",
            flush=True,
        )
    finally:
        await plane.stop(2.0)


async def main(
    seconds: int, conns: int, variants: list[str], backends: list[int], work: Path
) -> None:
    for variant in variants:
        plane: ManagedDataPlane
        if variant.startswith("nginx-"):
            transport: NginxLogTransport = variant.removeprefix("nginx-")  # type: ignore[assignment]
            settings = NginxSettings(state_dir=work / variant, log_transport=transport)
            plane = NginxDataPlane(settings, table(backends))
        else:
            haproxy = HaproxyDataPlane(HaproxySettings(state_dir=work / variant), table(backends))
            if variant == "haproxy-nolog":
                haproxy._open_log = lambda: None  # type: ignore[method-assign]
            plane = haproxy
        await measure(plane, variant, seconds, conns)


if __name__ == "__main__":
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    variants = (sys.argv[3] if len(sys.argv) > 3 else "nginx-file,nginx-udp,haproxy").split(",")
    with tempfile.TemporaryDirectory() as tmp, guard(Supervisor()) as sup:
        work = Path(tmp)
        ports = [free_port(), free_port()]
        for index, port in enumerate(ports):
            start_backend(sup, port, work / f"backend{index}")
        asyncio.run(main(seconds, conns, variants, ports, work))
