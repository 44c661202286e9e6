"""Runtimes: what starts and stops the instances of a release.

`ProcessRuntime` (local processes) is the one runtime today; the daemon
builds it. Another (containers, say) implements `Runtime` and gets a config
key to choose it when it exists.
"""

from __future__ import annotations

from zerodown.runtime.backoff import Backoff
from zerodown.runtime.base import ExitCallback, Runtime
from zerodown.runtime.ports import NoFreePort, PortAllocator, can_listen
from zerodown.runtime.process import ProcessRuntime
from zerodown.runtime.spawn import InstanceExited, RuntimeStartError

__all__ = [
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
