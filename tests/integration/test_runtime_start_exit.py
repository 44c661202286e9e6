"""A batch of instances stops at its first exit (issue 8, item 11).

`instances = 100000` with a command that exits at once spawned 41,699
processes: each exit freed its port for the next start, and nobody was told
until the batch ended. Real processes, counted by their log files (one per
instance started)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from pathlib import Path

import pytest
import uvloop

from zerodown.config import load_config
from zerodown.control.daemon import Daemon
from zerodown.release import Release
from zerodown.runtime import InstanceExited, ProcessRuntime, RuntimeStartError

DEADLINE = 20.0  # bounds a hang only
WANTED = 400
# Well past the few starts it takes the first exit to be seen, well short of WANTED.
MOST_STARTED = 40


def window(size: int) -> tuple[int, int]:
    first = random.randrange(30000, 32768 - size)
    return first, first + size - 1


def started_count(state_dir: Path) -> int:
    logs = state_dir / "logs" / "web" / "v1"
    return len(list(logs.iterdir())) if logs.exists() else 0


def test_a_command_that_exits_at_once_stops_the_batch_with_its_exit(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    # Fewer ports than instances, as in the report: exits recycle them.
    runtime = ProcessRuntime(state_dir, port_range=window(20))
    release = Release("web", "v1", "sh -c 'exit 3'")

    async def body() -> None:
        with pytest.raises(InstanceExited) as stopped:
            await asyncio.wait_for(runtime.start(release, WANTED), DEADLINE)
        assert isinstance(stopped.value, RuntimeStartError)  # a DeployError: the deploy fails
        assert stopped.value.code == 3
        assert "exit 3" in str(stopped.value)
        assert stopped.value.instance_id.startswith("web-v1-")
        assert runtime.instances() == []
        assert runtime.ports.held == frozenset()
        await runtime.close()

    uvloop.run(body())
    assert 1 <= started_count(state_dir) <= MOST_STARTED, started_count(state_dir)


def test_a_batch_that_stays_up_starts_in_full(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    runtime = ProcessRuntime(state_dir, port_range=window(20))
    release = Release("web", "v1", "sleep 30")

    async def body() -> None:
        started = await asyncio.wait_for(runtime.start(release, 5), DEADLINE)
        assert len(runtime.instances()) == 5 == len({i.port for i in started})
        await asyncio.gather(*(runtime.stop(i, 0) for i in started))
        await runtime.close()

    uvloop.run(body())
    assert started_count(state_dir) == 5


DEPLOY_CONFIG = """
[proxy]
listen = ["127.0.0.1:{listen}"]
admin = "127.0.0.1:0"
state_dir = {state_dir}

[services.web]
route = {{ host = "*", path = "/" }}
command = "sh -c 'exit 3'"
instances = {instances}
ports = "{low}-{high}"
deploy_timeout = "20s"
"""


def test_a_deploy_fails_at_the_first_exit_with_it(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        listen = sock.getsockname()[1]
    low, high = window(2 * WANTED // 4)
    config = tmp_path / "zerodown.toml"
    state_dir = tmp_path / "state"
    config.write_text(
        DEPLOY_CONFIG.format(
            listen=listen,
            state_dir=json.dumps(str(state_dir)),
            instances=WANTED // 8,  # within the ports config allows for it
            low=low,
            high=high,
        )
    )

    async def body() -> None:
        daemon = Daemon(load_config(config))
        await daemon.start()
        try:
            assert daemon.orchestrator is not None
            deploy_id = await daemon.orchestrator.deploy("web", "v1")
            view = await daemon.orchestrator.wait(deploy_id, DEADLINE)
        finally:
            await daemon.stop()
        assert view is not None, view
        assert view.outcome == "failed", view
        assert "exited (exit 3) while its release was starting" in (view.reason or ""), view

    uvloop.run(asyncio.wait_for(body(), DEADLINE * 2))
    assert 1 <= started_count(state_dir) <= MOST_STARTED, started_count(state_dir)
