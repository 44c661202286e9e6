"""The events table stays bounded: pruned by age and count (store + control/upkeep.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from harness import run, until
from zerodown.config import parse_config
from zerodown.config.operate import EVENTS_MAX_AGE, EVENTS_MAX_COUNT, EventsConfig
from zerodown.control.upkeep import Upkeep, prune_events
from zerodown.store.sqlite import SqliteStore

DAY = 86400.0


def store_at(now: list[float], path: str | Path = ":memory:") -> SqliteStore:
    return SqliteStore(path, clock=lambda: now[0])


def add(store: SqliteStore, now: list[float], count: int, step: float = 1.0) -> None:
    for _ in range(count):
        store.add_event("web", None, "traffic", "{}")
        now[0] += step


def test_defaults_are_a_month_and_a_hundred_thousand() -> None:
    events = parse_config("").events
    assert (events.max_age, events.max_count) == (EVENTS_MAX_AGE, EVENTS_MAX_COUNT)
    assert EVENTS_MAX_AGE == 30 * DAY
    assert parse_config('[events]\nmax_age = "48h"\nmax_count = 5').events == EventsConfig(
        max_age=2 * DAY, max_count=5
    )


def test_prune_by_age_keeps_the_newer_ones() -> None:
    now = [1_000_000.0]
    with store_at(now) as store:
        add(store, now, 10, step=DAY)  # one a day: ages 9.x .. 0.x days at the end
        removed = store.prune_events(now[0] - 3.5 * DAY, keep=1000)
        assert removed == 7
        ids = [e.id for e in store.events()]
        assert ids == [8, 9, 10]


def test_prune_by_count_keeps_the_newest_and_ids_keep_rising() -> None:
    now = [1000.0]
    with store_at(now) as store:
        add(store, now, 25)
        assert store.prune_events(0.0, keep=10) == 15
        assert [e.id for e in store.events()] == list(range(16, 26))
        assert store.prune_events(0.0, keep=10) == 0  # nothing more
        assert store.last_event_id() == 25
        # a stream resumes by id: a new event never reuses a pruned one's
        assert store.add_event("web", None, "traffic", "{}") == 26
        store.prune_events(now[0] + 1, keep=10)  # everything is old now
        assert store.events() == []
        assert store.last_event_id() == 26
        assert store.add_event("web", None, "traffic", "{}") == 27


def test_last_event_id_of_an_empty_store_is_0() -> None:
    with store_at([0.0]) as store:
        assert store.last_event_id() == 0


def test_prune_events_by_config_counts_what_went(tmp_path: Path) -> None:
    now = [1000.0]
    with store_at(now, tmp_path / "z.sqlite3") as store:
        add(store, now, 8, step=10.0)
        removed = prune_events(store, EventsConfig(max_age=35.0, max_count=2), now[0])
        assert removed == 6
        assert len(store.events()) == 2


class NoControl:
    def events(self, after: int = 0, service: str | None = None) -> Any:
        raise AssertionError("no webhooks configured: the stream is not read")


def test_the_daemons_upkeep_prunes_at_start_and_every_interval(tmp_path: Path) -> None:
    async def scenario() -> None:
        now = [1000.0]
        config = parse_config("[events]\nmax_count = 3")
        with store_at(now, tmp_path / "z.sqlite3") as store:
            add(store, now, 10)
            upkeep = Upkeep(config, store, NoControl(), interval=0.05, clock=lambda: now[0])  # type: ignore[arg-type]
            upkeep.start()
            await until(lambda: len(store.events()) == 3, "pruned at start", 2.0)
            add(store, now, 5)
            await until(lambda: len(store.events()) == 3, "pruned again", 2.0)
            await upkeep.stop()
            assert [e.id for e in store.events()] == [13, 14, 15]
            await asyncio.sleep(0.1)
            add(store, now, 2)  # stopped: no more pruning
            await asyncio.sleep(0.1)
            assert len(store.events()) == 5

    run(scenario())
