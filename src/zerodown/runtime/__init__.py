"""Runtimes: what starts and stops the instances of a release.

Picked by name from RUNTIMES, as the config names them; `process` (local
processes) is the default.
"""

from __future__ import annotations

from zerodown.runtime.backoff import Backoff
from zerodown.runtime.base import ExitCallback, Runtime
from zerodown.runtime.ports import NoFreePort, PortAllocator, can_listen
from zerodown.runtime.process import ProcessRuntime
from zerodown.runtime.spawn import InstanceExited, RuntimeStartError

RUNTIMES: dict[str, type[Runtime]] = {"process": ProcessRuntime}

__all__ = [
    "RUNTIMES",
    "Backoff",
    "ExitCallback",
    "InstanceExited",
    "NoFreePort",
    "PortAllocator",
    "ProcessRuntime",
    "Runtime",
    "RuntimeStartError",
    "can_listen",
]
