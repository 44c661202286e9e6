"""What the control plane keeps about what it runs: releases, their
instances, and the states a deploy goes through. Plain values, shared by the
runtime, the store and the orchestrator (so it sits below all three).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

InstanceState = Literal["starting", "ready", "draining", "stopped", "crashed"]
DeployState = Literal[
    "pending",
    "starting",
    "gating",
    "shifting",
    "analyzing",
    "paused",
    "draining",
    "rolling_back",
    "succeeded",
    "rolled_back",
    "failed",
    "aborted",
]
Outcome = Literal["succeeded", "rolled_back", "failed", "aborted"]


@dataclass(frozen=True, slots=True)
class Release:
    """One deployable version of a service: a label and how to run it."""

    service: str
    version: str
    command: str
    cwd: str = "."
    env: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Instance:
    """One running copy of a release."""

    id: str
    service: str
    version: str
    port: int
    host: str = "127.0.0.1"
    pid: int | None = None
    pid_started: float | None = None  # process start time, to tell a reused pid apart
    state: InstanceState = "starting"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
