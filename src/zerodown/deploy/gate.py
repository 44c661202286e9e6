"""The health gate: an instance takes traffic only after its own processes
listen on its port and its health check passed `rise` times in a row, before
a deadline.

Whoever answers on the port is not proof: an app that ignores `{port}`
leaves it to any other program, whose answers would pass the check and take
the release's traffic. So the gate asks the runtime who listens first
(`Runtime.port_owner`), probes only what the instance itself listens on, and
fails at once, naming the port, when another program holds it or when the
instance listens elsewhere for LISTEN_ELSEWHERE_GRACE. An instance that
listens nowhere may be starting slowly: that one fails at the deadline, with
the same hint.

The gate probes faster than steady-state checking (GATE_INTERVAL at most):
a deploy waits on it, and each probe is one small request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from zerodown.errors import DeployError, HealthGateTimeout, NotListening
from zerodown.proxy.checker import HealthChecker
from zerodown.release import Instance
from zerodown.routing import HealthSpec
from zerodown.runtime.base import ExitReport, PortOwner

GATE_INTERVAL = 0.2  # seconds between probes of one instance while gating
DEFAULT_GATE_SPEC = HealthSpec(path="/", rise=1, expect_status=())  # no health config: any 2xx/3xx
# An app that listens on other ports but not its own for this long ignores
# `{port}` (its own default, 8000 or 5000); one that opens a metrics port
# first and its main port a little later gets this long to do so.
LISTEN_ELSEWHERE_GRACE = 5.0
# Another program on the port this many probes in a row: not a socket that
# was closing between our two looks at /proc.
OTHER_HOLDER_PROBES = 2
PORT_HINT = "does `command` use {port} (or $PORT)?"


class StartWatch(Protocol):
    """What the gate asks the runtime (Runtime implements it)."""

    def port_owner(self, instance: Instance) -> PortOwner: ...

    def exit_report(self, instance: Instance) -> ExitReport | None: ...


def alive(instance: Instance) -> bool:
    """Still a candidate for the gate: not crashed, not stopped on purpose."""
    return instance.state not in ("crashed", "stopped")


@dataclass
class _Gating:
    """What the gate learned of one instance so far."""

    instance: Instance
    began: float
    owner: PortOwner = field(default_factory=lambda: PortOwner("unknown"))
    listens: bool = False  # its own processes listen on its port (or nobody can tell)
    others_seen: int = 0  # probes in a row that found another program on its port
    passed: bool = False


async def wait_healthy(
    instances: list[Instance],
    spec: HealthSpec | None,
    timeout: float,
    alive: Callable[[Instance], bool],
    watch: StartWatch,
    warmup: float = 0.0,
) -> None:
    """Return when every instance passed; raise HealthGateTimeout at the deadline,
    NotListening when one's port is not its own, DeployError when one exits."""
    spec = spec or DEFAULT_GATE_SPEC
    now = asyncio.get_running_loop().time()
    gatings = [_Gating(instance, now) for instance in instances]
    try:
        async with asyncio.timeout(timeout):
            await _gate_all(gatings, spec, alive, watch)
    except TimeoutError:
        stuck = "; ".join(_why_not(g) for g in gatings if not g.passed)
        raise HealthGateTimeout(f"not healthy within {timeout:g}s: {stuck}") from None
    if warmup > 0:
        await asyncio.sleep(warmup)  # apps that fill caches after their first ready signal


async def _gate_all(
    gatings: list[_Gating], spec: HealthSpec, alive: Callable[[Instance], bool], watch: StartWatch
) -> None:
    # A TaskGroup so that one instance failing cancels the others' probes at once.
    try:
        async with asyncio.TaskGroup() as group:
            for gating in gatings:
                group.create_task(_gate_one(gating, spec, alive, watch))
    except* DeployError as failed:
        raise failed.exceptions[0] from None


async def _gate_one(
    gating: _Gating, spec: HealthSpec, alive: Callable[[Instance], bool], watch: StartWatch
) -> None:
    instance = gating.instance
    checker = HealthChecker(instance.host, instance.port, spec, lambda ok: None)
    loop = asyncio.get_running_loop()
    passes = 0
    interval = min(spec.interval, GATE_INTERVAL)
    while passes < spec.rise:
        if not alive(instance):
            raise DeployError(_exited(instance, watch.exit_report(instance)))
        if gating.listens or _listens(gating, watch.port_owner(instance), loop.time()):
            passes = passes + 1 if await checker.check_once() else 0
        if passes < spec.rise:
            await asyncio.sleep(interval)
    gating.passed = True


def _listens(gating: _Gating, owner: PortOwner, now: float) -> bool:
    """Record `owner`; True once the instance's own processes listen on its port
    (then it stays so: nobody else can bind a port it listens on). Raises
    NotListening when it never will."""
    gating.owner = owner
    port, name = gating.instance.port, gating.instance.id
    if owner.kind in ("instance", "unknown"):
        gating.listens = True
        return True
    if owner.kind == "other":
        gating.others_seen += 1
        if gating.others_seen >= OTHER_HOLDER_PROBES:
            raise NotListening(
                f"port {port} of instance {name} is held by another program, "
                f"{owner.holder or 'which zerodown cannot name'}, not by the instance: "
                f"{PORT_HINT}"
            )
        return False
    gating.others_seen = 0
    if owner.elsewhere and now - gating.began >= LISTEN_ELSEWHERE_GRACE:
        raise NotListening(
            f"instance {name} listens on {_ports(owner.elsewhere)}, not on its port {port}: "
            f"{PORT_HINT}"
        )
    return False


def _why_not(gating: _Gating) -> str:
    """One instance's part of a gate timeout's reason."""
    name, port = gating.instance.id, gating.instance.port
    if gating.listens:
        return f"{name} (port {port}) failed its health check"
    where = f"listens on {_ports(gating.owner.elsewhere)}" if gating.owner.elsewhere else None
    return f"{name} never listened on its port {port}{f' ({where})' if where else ''}: {PORT_HINT}"


def _exited(instance: Instance, report: ExitReport | None) -> str:
    if report is None:  # not an exit the runtime saw (e.g. the deploy was stopped)
        return f"instance {instance.id} exited during its health gate"
    return f"instance {instance.id} exited during its health gate ({report.how}); {report.output()}"


def _ports(ports: tuple[int, ...]) -> str:
    return ("port " if len(ports) == 1 else "ports ") + ", ".join(map(str, ports))
