"""The controller's CPU per request while nginx or HAProxy carries load.

    PYTHONPATH=src:bench python bench/controller_cost.py [SECONDS] [CONNS] [VARIANTS]

VARIANTS: comma-separated, of nginx-file, nginx-udp, haproxy (all three by default).

Runs each driver (nginx with each log transport, HAProxy) in this process,
in front of two nginx backends, with wrk (2 threads) for SECONDS at CONNS
connections, and prints this process's CPU time (the driver: its log
reading, its health checks, its event loop) over the requests wrk
completed. The proxy's own CPU is not in it: nginx and HAProxy are other
processes. Compare figures from the same run; a busy machine inflates all.
"""

from __future__ import annotations

import asyncio
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


async def measure(plane: ManagedDataPlane, label: str, seconds: int, conns: int) -> None:
    port = free_port()
    await plane.start([f"127.0.0.1:{port}"])
    try:
        await asyncio.sleep(1.0)  # health checks up, config live
        argv = ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
        started = time.process_time()
        wrk = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
        out, _ = await wrk.communicate()
        await asyncio.sleep(0.6)  # the last buffered lines: nginx flushes every 250 ms
        await plane.stats()
        spent = time.process_time() - started
        result = parse_wrk(out.decode())
        print(
            f"{label:<28} {result.rps:9,.0f} req/s  controller "
            f"{spent / max(1, result.requests) * 1e6:6.2f} µs/req",
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
            plane = HaproxyDataPlane(HaproxySettings(state_dir=work / variant), table(backends))
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
