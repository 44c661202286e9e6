"""Load through an operation: the proof that a deploy dropped nothing.

`verify(spec, during)` starts the load, lets it settle, runs `during` (a
deploy), keeps the load on a little longer so that requests which arrive
right after the switch are counted too, then stops it and builds the report,
with the start and end of `during` marked on its time axis.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from zerodown.verify.load import LoadResult, LoadSpec, clock, run_load
from zerodown.verify.report import Mark, Report
from zerodown.verify.sessions import tally
from zerodown.verify.users import UserGroup

T = TypeVar("T")

WARMUP = 0.5  # seconds of load before `during`: connections open, a baseline version seen
COOLDOWN = 0.5  # seconds of load after it: the new version's first requests are in the proof
COMMAND_STOP_GRACE = 5.0  # a cancelled command gets this long after SIGTERM, then SIGKILL


async def verify(
    spec: LoadSpec,
    during: Callable[[], Awaitable[T]] | None = None,
    warmup: float = WARMUP,
    cooldown: float = COOLDOWN,
    *,
    bucket: float | None = None,
    label: str = "deploy",
    users: UserGroup | None = None,
) -> tuple[Report, T | None]:
    """Run load around `during()` and return the report with what `during` returned.

    `spec.duration` is normally None here: the load lasts warmup + during +
    cooldown. `bucket` is the report's time bucket (None: chosen from the run's
    length). If `during` raises, the load is cancelled and the error goes up
    (a `during` that wants a report either way returns its failure instead).

    `users` (verify --sessions) log in before the load starts, keep asking who
    they are all through it, and once more after it; the report counts them.
    """
    if users is not None:
        await users.log_in()
        users.start()
    stop = asyncio.Event()
    load = asyncio.create_task(run_load(spec, stop))
    try:
        await asyncio.wait([load], timeout=warmup)  # returns early only if the load ended
        marks: list[tuple[float, str]] = []
        outcome: T | None = None
        if during is not None:
            marks.append((clock(), label))
            outcome = await during()
            marks.append((clock(), f"{label} done"))
        elif spec.duration is not None:
            await asyncio.wait([load])  # load only: it ends at its own duration
        await asyncio.wait([load], timeout=cooldown)
    except BaseException:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        if users is not None:
            await users.cancel()
        raise
    stop.set()
    result = await load
    report = Report.from_result(result, bucket, marks=_marks(result, marks))
    if users is not None:
        deploy_start = marks[0][0] if marks else None
        report = report.with_sessions(tally(await users.finish(), deploy_start))
    return report, outcome


def _marks(result: LoadResult, marks: list[tuple[float, str]]) -> list[Mark]:
    """Clock readings to seconds on the samples' axis."""
    return [Mark(at - result.origin, label) for at, label in marks]


async def run_command(cmd: Sequence[str]) -> int:
    """Run `cmd` (stdio inherited) to its end and return its exit code; a
    `during` for `verify`. Cancelled, it stops the command before returning."""
    proc = await asyncio.create_subprocess_exec(*cmd)
    try:
        return await proc.wait()
    except asyncio.CancelledError:
        await _stop(proc)
        raise


async def _stop(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), COMMAND_STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
