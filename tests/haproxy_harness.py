"""A real HAProxy, started by the driver on a reserved port under a test's
tmp_path, as nginx_harness does for nginx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from harness import reserved_port
from zerodown.dataplane.haproxy.driver import HaproxyDataPlane
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.routing import RoutingTable, ServiceSpec


@contextlib.asynccontextmanager
async def haproxy(
    tmp_path: Path, *services: ServiceSpec, **settings: Any
) -> AsyncIterator[HaproxyDataPlane]:
    """A started driver with these services; HAProxy stopped on exit."""
    settings.setdefault("stop_timeout", 2.0)
    plane = HaproxyDataPlane(
        HaproxySettings(state_dir=tmp_path / "state", **settings),
        RoutingTable(services=services),
    )
    await plane.start([f"127.0.0.1:{reserved_port()}"])
    try:
        yield plane
    finally:
        await plane.stop(2.0)


def port_of(plane: HaproxyDataPlane) -> int:
    return plane.addresses[0][1]
