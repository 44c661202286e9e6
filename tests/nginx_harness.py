"""A real nginx driven by NginxDataPlane on a reserved port, state under tmp_path."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from harness import reserved_port
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings
from zerodown.routing import RoutingTable, ServiceSpec


@contextlib.asynccontextmanager
async def nginx(
    state_dir: Path, *services: ServiceSpec, **settings: Any
) -> AsyncIterator[NginxDataPlane]:
    """A started driver with these services; nginx stopped on exit."""
    settings.setdefault("reload_timeout", 5.0)
    # Every request logged, so tests read nginx's per-target counts without a
    # canary; "canary" (the default) has tests of its own (test_request_stats).
    settings.setdefault("request_stats", "always")
    plane = NginxDataPlane(NginxSettings(state_dir=state_dir, **settings))
    await plane.start([f"127.0.0.1:{reserved_port()}"])
    try:
        if services:
            await plane.apply(RoutingTable(services=services))
        yield plane
    finally:
        await plane.stop(timeout=2.0)


def port_of(plane: NginxDataPlane) -> int:
    return plane.addresses[0][1]
