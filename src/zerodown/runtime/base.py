"""The one seam between the orchestrator and whatever runs app processes.

The runtime never talks to the data plane: it starts and stops instances and
reports when one dies; the orchestrator decides what that means for traffic.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zerodown.release import Instance, Release

ExitCallback = Callable[[Instance, int | None], None]  # instance, exit code (None: unknown)
PortOwnerKind = Literal["instance", "other", "nobody", "unknown"]


@dataclass(frozen=True, slots=True)
class ExitReport:
    """How an instance ended on its own: what an operator needs to see first."""

    instance_id: str
    code: int | None  # negative: killed by that signal; None: unknown (adopted)
    log: Path | None  # its output, complete up to the exit
    tail: tuple[str, ...] = ()  # the last lines of `log`

    @property
    def how(self) -> str:
        """In words: "exit 3", "killed by SIGSEGV", …"""
        return exit_text(self.code)

    def output(self) -> str:
        """The log's path and its last lines, indented, for a reason or an event."""
        if self.log is None:
            return "its output was not captured (adopted after a daemon restart)"
        if not self.tail:
            return f"its log {self.log} is empty"
        lines = "".join(f"\n    {line}" for line in self.tail)
        return f"last {len(self.tail)} lines of {self.log}:{lines}"


@dataclass(frozen=True, slots=True)
class PortOwner:
    """Who listens on an instance's port: only its own processes may count as it.

    `instance`: its process group does; `other`: another program does
    (`holder` says which, as far as /proc tells); `nobody`: no one yet (and
    `elsewhere` lists the ports the instance listens on instead); `unknown`:
    this runtime or host cannot tell, so the health check alone decides.
    """

    kind: PortOwnerKind
    holder: str = ""
    elsewhere: tuple[int, ...] = ()


def exit_text(code: int | None) -> str:
    """An exit status in words, signals by name."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        return f"killed by {_signal_name(-code)}"
    if code > 128 and _signal_name(code - 128).startswith("SIG"):
        # A shell (`sh -c ...`) reports a child killed by signal N as 128 + N.
        return f"exit {code}, a shell's way of saying {_signal_name(code - 128)}"
    return f"exit {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


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

    def exit_report(self, instance: Instance) -> ExitReport | None:
        """How `instance` ended, if it exited on its own lately; None if unknown."""
        return None

    def port_owner(self, instance: Instance) -> PortOwner:
        """Who listens on `instance`'s port; a runtime that cannot tell says "unknown"."""
        return PortOwner("unknown")

    async def close(self) -> None:  # noqa: B027 - a no-op unless a runtime holds resources
        """Stop watching; instances keep running (the daemon decides their fate)."""
