"""The data plane `[proxy] dataplane` names, built for the daemon."""

from __future__ import annotations

from pathlib import Path

from zerodown.config import Config
from zerodown.dataplane.base import ManagedDataPlane
from zerodown.dataplane.detached import DetachedDataPlane


def managed_dataplane(config: Config, state_dir: Path) -> ManagedDataPlane:
    """The data plane of `config`, not started yet (its start adopts a running one)."""
    proxy = config.proxy
    if proxy.dataplane == "embedded":
        return DetachedDataPlane(
            config.proxy_settings(), config.routing_table(), proxy.worker_count(), state_dir
        )
    raise NotImplementedError(proxy.dataplane)  # the drivers of issue 11 land here
