"""The health gate: an instance takes traffic only after its health check
passed `rise` times in a row, before a deadline.

The gate probes faster than steady-state checking (GATE_INTERVAL at most):
a deploy waits on it, and each probe is one small request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from zerodown.errors import DeployError, HealthGateTimeout
from zerodown.proxy.checker import HealthChecker
from zerodown.release import Instance
from zerodown.routing import HealthSpec

GATE_INTERVAL = 0.2  # seconds between probes of one instance while gating
DEFAULT_GATE_SPEC = HealthSpec(path="/", rise=1, expect_status=())  # no health config: any 2xx/3xx


async def wait_healthy(
    instances: list[Instance],
    spec: HealthSpec | None,
    timeout: float,
    alive: Callable[[Instance], bool],
    warmup: float = 0.0,
) -> None:
    """Return when every instance passed; raise HealthGateTimeout at the deadline
    or DeployError as soon as one of them exits."""
    spec = spec or DEFAULT_GATE_SPEC
    try:
        async with asyncio.timeout(timeout):
            await _gate_all(instances, spec, alive)
    except TimeoutError:
        names = ", ".join(i.id for i in instances)
        raise HealthGateTimeout(f"not healthy within {timeout:g}s: {names}") from None
    if warmup > 0:
        await asyncio.sleep(warmup)  # apps that fill caches after their first ready signal


async def _gate_all(
    instances: list[Instance], spec: HealthSpec, alive: Callable[[Instance], bool]
) -> None:
    # A TaskGroup so that one instance dying cancels the others' probes at once.
    try:
        async with asyncio.TaskGroup() as group:
            for instance in instances:
                group.create_task(_gate_one(instance, spec, alive))
    except* DeployError as failed:
        raise failed.exceptions[0] from None


async def _gate_one(
    instance: Instance, spec: HealthSpec, alive: Callable[[Instance], bool]
) -> None:
    checker = HealthChecker(instance.host, instance.port, spec, lambda ok: None)
    passes = 0
    interval = min(spec.interval, GATE_INTERVAL)
    while passes < spec.rise:
        if not alive(instance):
            raise DeployError(f"instance {instance.id} exited during its health gate")
        passes = passes + 1 if await checker.check_once() else 0
        if passes < spec.rise:
            await asyncio.sleep(interval)
