"""Crash supervision of the current release (deploy/supervision.py): a crash
loop slows the restarts down to once a window, shows in `status` with its
crashes and next retry, and ends by itself (event `crash_loop_ended`,
capacity back) once the cause is gone and a restart stays up. No rollback:
outside a deploy the current release stays current.

The back-off is shortened to a window of WINDOW seconds; the instances are
the fakes' listeners, and a broken version's die as they start (a database
that is down).
"""

from __future__ import annotations

import asyncio

from fakes import Rig, next_event, rig, service_toml
from zerodown.runtime.backoff import Backoff

WINDOW = 0.4  # seconds: the crash-loop window, so a slow retry comes every WINDOW
ONE = service_toml("web", instances="1", stop_grace='"10ms"')


def short_backoff() -> Backoff:
    return Backoff(base=0.01, max=0.02, crash_loop_count=3, crash_loop_window=WINDOW)


def routed(r: Rig) -> int:
    return len(r.dataplane.addresses("web"))


def kinds(r: Rig) -> list[str]:
    return [e.kind for e in r.store.events(0, "web", limit=10_000)]


def test_a_crash_loop_retries_once_a_window_and_ends_when_a_restart_stays_up() -> None:
    async def run() -> None:
        async with rig(ONE, backoff=short_backoff) as r:
            assert (await r.deploy("v1"))["outcome"] == "succeeded"
            (instance,) = r.runtime.of_version("v1")

            r.machine.broken.add("v1")  # the cause: every restart now dies at once
            await r.runtime.crash(instance.id)
            await r.runtime.changes.until(
                lambda: r.status()["crash_loop"] is not None, "a crash loop"
            )
            loop = r.status()["crash_loop"]
            assert (loop["version"], loop["crashes"]) == ("v1", 3)
            assert loop["next_retry"] == loop["since"] + WINDOW
            assert routed(r) == 0  # under capacity, and said so
            began = len(r.runtime.start_times)

            # Slowly: the next two retries come a window apart, each one more crash.
            await r.runtime.changes.until(
                lambda: len(r.runtime.start_times) >= began + 2, "two slow retries"
            )
            gap = r.runtime.start_times[began + 1] - r.runtime.start_times[began]
            assert gap >= WINDOW * 0.9
            assert r.status()["crash_loop"]["crashes"] >= 4

            r.machine.broken.discard("v1")  # the cause went away
            await r.dataplane.changes.until(lambda: routed(r) == 1, "capacity back")
            await next_event(r.orch, "crash_loop_ended")
            status = r.status()
            assert status["crash_loop"] is None
            assert status["current"] == "v1"
            assert [(i["version"], i["state"], i["routed"]) for i in status["instances"]] == [
                ("v1", "ready", True)
            ]
            assert kinds(r).count("crash_loop") == 1  # said once, not per retry
            assert [e["version"] for e in r.events("crash_loop_ended")] == ["v1"]
            # No rollback outside a deploy: one deploy ever, v1 still current.
            assert r.releases() == {"v1": "current"}
            assert r.store.unfinished_deploys() == []

    asyncio.run(run())


def test_a_restart_that_stays_up_before_a_crash_loop_needs_no_ending() -> None:
    async def run() -> None:
        async with rig(ONE, backoff=short_backoff) as r:
            assert (await r.deploy("v1"))["outcome"] == "succeeded"
            (instance,) = r.runtime.of_version("v1")
            await r.runtime.crash(instance.id)

            def replaced() -> bool:
                return routed(r) == 1 and instance.address not in r.dataplane.addresses("web")

            await r.dataplane.changes.until(replaced, "a replacement")
            assert len(r.runtime.starts) == 2
            assert r.status()["crash_loop"] is None
            assert "crash_loop" not in kinds(r)
            assert "crash_loop_ended" not in kinds(r)

    asyncio.run(run())
