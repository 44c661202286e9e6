"""Active health checks for nginx, which has none in its open-source build.

The driver runs them: one proxy/checker.HealthChecker per target (the I/O)
feeding one proxy/health.TargetHealth (the verdict), as the embedded proxy
does. Real responses seen in the access log call `answered`, so a check that
times out on a busy app is excused (health.py: a busy app is not a dead
app). When a verdict changes, `on_change` is called once: the driver
re-renders and reloads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from zerodown.proxy.checker import CheckResult, HealthChecker
from zerodown.proxy.health import TargetHealth
from zerodown.routing import RoutingTable, parse_address

__all__ = ["ActiveHealth"]

Key = tuple[str, str]  # (service, address)


class ActiveHealth:
    """Checkers for every routable target of a table; knows which are down."""

    def __init__(
        self, on_change: Callable[[], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._on_change = on_change
        self._clock = clock
        self._checks: dict[Key, tuple[HealthChecker, TargetHealth]] = {}

    def __repr__(self) -> str:
        return f"<ActiveHealth targets={len(self._checks)} down={sorted(self.unhealthy())}>"

    def unhealthy(self) -> frozenset[Key]:
        return frozenset(k for k, (_, h) in self._checks.items() if not h.serving)

    async def follow(self, table: RoutingTable) -> None:
        """Check exactly the ready targets of services that ask for checks."""
        wanted = {
            (s.name, t.address): s
            for s in table.services
            if s.health is not None
            for t in (*s.stable.targets, *s.canary.targets)
            if t.state == "ready"
        }
        for key in set(self._checks) - set(wanted):
            checker, _ = self._checks.pop(key)
            await checker.stop()
        for key, spec in wanted.items():
            if key not in self._checks and spec.health is not None:
                health = TargetHealth(spec.health)
                host, port = parse_address(key[1])
                checker = HealthChecker(host, port, spec.health, self._reporter(key))
                self._checks[key] = (checker, health)
                checker.start()

    def answered(self, key: Key) -> None:
        """A real response from this target (below 500) arrived just now."""
        entry = self._checks.get(key)
        if entry is not None:
            entry[1].answered(self._clock())

    async def stop(self) -> None:
        for checker, _ in self._checks.values():
            await checker.stop()
        self._checks.clear()

    def _reporter(self, key: Key) -> Callable[[CheckResult], None]:
        def report(result: CheckResult) -> None:
            entry = self._checks.get(key)
            if entry is None:
                return
            health = entry[1]
            before = health.serving
            health.on_check(result == "pass", self._clock(), timed_out=result == "timeout")
            if health.serving != before:
                self._on_change()

        return report
