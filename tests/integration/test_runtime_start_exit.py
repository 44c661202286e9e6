"""A batch of instances stops at its first exit (issue 8, item 11).

`instances = 100000` with a command that exits at once spawned 41,699
processes: each exit freed its port for the next start, and nobody was told
until the batch ended. Real processes, counted by their log files (one per
instance started)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
import uvloop

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
        assert "exit 3" in str(stopped.value) and stopped.value.instance_id.startswith("web-v1-")
        assert runtime.instances() == [] and runtime.ports.held == frozenset()
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
