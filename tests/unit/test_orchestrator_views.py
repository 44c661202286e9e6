"""The orchestrator's views as `zerodown status` and `rollback` meet them, on a
real (in-memory) store with no processes and no data plane: a blue-green
release kept warm shows as standby, and an unknown `--to` version is a 404-class
error (UnknownRelease), which the CLI turns into exit 2."""

from __future__ import annotations

import asyncio

import pytest
from rich.console import Console

from integration.test_admin_deploy import NullDataPlane
from zerodown.cli.progress import status_table
from zerodown.config import ServiceConfig, parse_config
from zerodown.deploy.contract import StatusView
from zerodown.deploy.orchestrator import Orchestrator
from zerodown.errors import UnknownRelease, UnknownService
from zerodown.release import Instance, Release
from zerodown.runtime.base import ExitCallback, Runtime
from zerodown.store.sqlite import SqliteStore

CONFIG = '[services.web]\ncommand = "app --port {port}"\ninstances = 1\nstrategy = "blue_green"\n'


class IdleRuntime(Runtime):
    """Runs nothing: these views never start or stop a process."""

    async def start(self, release: Release, n: int) -> list[Instance]:
        raise AssertionError("not in these tests")

    async def stop(self, instance: Instance, grace: float) -> None:
        raise AssertionError("not in these tests")

    def instances(self, service: str | None = None) -> list[Instance]:
        return []

    def on_exit(self, callback: ExitCallback) -> None:
        pass

    async def adopt(self, instances: list[Instance]) -> list[Instance]:
        return []


def orchestrator() -> Orchestrator:
    def runtime_for(name: str, service: ServiceConfig) -> Runtime:
        return IdleRuntime()

    return Orchestrator(parse_config(CONFIG), NullDataPlane(), SqliteStore(":memory:"), runtime_for)


def after_a_switch(orch: Orchestrator) -> None:
    """v2 serves, v1 (blue) drained and kept warm for scale_down_delay, as the
    blue-green plan leaves them."""
    fleet = orch.fleets["web"]
    blue = Instance("web-v1-1", "web", "v1", 9001, state="ready")
    green = Instance("web-v2-1", "web", "v2", 9002, state="ready")
    fleet.instances = [blue, green]
    fleet.routed = {green.id}
    fleet.current = "v2"
    orch.ops.keep_warm(fleet, "v1", 600.0)


def states(view: StatusView) -> list[tuple[str, str, bool]]:
    return [(i.version, i.state, i.routed) for i in view.instances]


def test_a_blue_green_release_kept_warm_shows_as_standby() -> None:
    async def run() -> None:
        orch = orchestrator()
        after_a_switch(orch)
        try:
            view = orch.status("web")[0]
            assert states(view) == [("v1", "standby", False), ("v2", "ready", True)]
            assert view.traffic == {"v2": 100.0}
            console = Console(record=True, width=120, force_terminal=False)
            console.print(status_table([view.model_dump(mode="json")]))
            text = console.export_text()
            assert "v1 127.0.0.1:9001 standby" in text
            assert "v2 127.0.0.1:9002 ready" in text
            # Once the window ends (or a rollback takes it back), it is no standby.
            orch.ops.cancel_warm(orch.fleets["web"], "v1")
            assert states(orch.status("web")[0])[0] == ("v1", "ready", False)
        finally:
            orch.ops.cancel_warm(orch.fleets["web"], "v1")

    asyncio.run(run())


def test_a_routed_instance_of_a_warm_version_is_not_standby() -> None:
    # Rolled back within the window: v1 is routed again and serves.
    async def run() -> None:
        orch = orchestrator()
        after_a_switch(orch)
        fleet = orch.fleets["web"]
        fleet.routed = {"web-v1-1"}
        try:
            assert states(orch.status("web")[0])[0] == ("v1", "ready", True)
        finally:
            orch.ops.cancel_warm(fleet, "v1")

    asyncio.run(run())


def test_rollback_to_an_unknown_version_is_an_unknown_release() -> None:
    async def run() -> None:
        orch = orchestrator()
        with pytest.raises(UnknownRelease, match="web has no release v9"):
            await orch.rollback("web", "v9")

    asyncio.run(run())
    assert issubclass(UnknownRelease, UnknownService)  # the admin API's 404
