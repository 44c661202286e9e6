"""The one seam between the orchestrator and whatever runs app processes.

The runtime never talks to the data plane: it starts and stops instances and
reports when one dies; the orchestrator decides what that means for traffic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from zerodown.release import Instance, Release

ExitCallback = Callable[[Instance, int | None], None]  # instance, exit code (None: unknown)


class Runtime(ABC):
    @abstractmethod
    async def start(self, release: Release, n: int) -> list[Instance]:
        """Start n instances of `release` on free ports; return at once (no health wait)."""

    @abstractmethod
    async def stop(self, instance: Instance, grace: float) -> None:
        """SIGTERM, wait `grace`, then SIGKILL; returns when the port is free again."""

    @abstractmethod
    def instances(self, service: str | None = None) -> list[Instance]:
        """Instances this runtime started and believes alive."""

    @abstractmethod
    def on_exit(self, callback: ExitCallback) -> None:
        """Call `callback` as soon as an instance exits without being asked to."""

    @abstractmethod
    async def adopt(self, instances: list[Instance]) -> list[Instance]:
        """After a restart: take back instances still alive (pid and start time
        match); return those adopted. The caller stops or forgets the rest."""

    async def close(self) -> None:  # noqa: B027 - a no-op unless a runtime holds resources
        """Stop watching; instances keep running (the daemon decides their fate)."""
