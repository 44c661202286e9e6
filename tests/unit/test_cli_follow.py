"""The CLI's live view follows the event stream (cli/progress.py, cli/feed.py),
against a real admin API whose control plane a test drives from its thread."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from rich.console import Console

from harness import DEADLINE
from integration.test_admin_deploy import TOKEN, FakeControl
from unit.test_cli import serving
from zerodown.cli import feed as feed_module
from zerodown.cli.client import AdminClient
from zerodown.cli.feed import EventFeed, StreamLost
from zerodown.cli.progress import concerns, follow
from zerodown.deploy.contract import EventView
from zerodown.deploy.contract import JsonView as View
from zerodown.errors import NotDeployable


class LiveControl(FakeControl):
    """FakeControl whose event stream is live: events appended from any thread come out.

    `cut_after` ends each stream after that many events (a proxy cutting it);
    `refuse_stream` is raised when a stream is asked for (the route answers it).
    """

    def __init__(self) -> None:
        super().__init__()
        self.outcome = None  # deploys run until a test finishes them
        self.live: list[View] = []
        self.cut_after: int | None = None
        self.refuse_stream: Exception | None = None

    def add(self, kind: str, deploy_id: int | None = 1, **data: Any) -> None:
        self.live.append(
            {
                "id": len(self.live) + 1,
                "service": "web",
                "deploy_id": deploy_id,
                "kind": kind,
                "data": data,
                "at": time.time(),
            }
        )

    def finish(self, outcome: str) -> None:
        self.deploys[1]["outcome"] = outcome
        self.deploys[1]["state"] = outcome
        self.add("finished", outcome=outcome)

    def events(self, after: int = 0, service: str | None = None) -> AsyncIterator[EventView]:
        self.calls.append(("events", after, service))
        if self.refuse_stream is not None:
            raise self.refuse_stream
        return self._stream(after)

    async def _stream(self, after: int) -> AsyncIterator[EventView]:
        sent = 0
        while self.cut_after is None or sent < self.cut_after:
            for event in [e for e in self.live if e["id"] > after]:
                after = event["id"]
                yield EventView.model_validate(event)
                sent += 1
                if self.cut_after is not None and sent >= self.cut_after:
                    return
            await asyncio.sleep(0.01)  # the list is written from the test's thread


def console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120)


def in_thread(target: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target(*args)), daemon=True)
    thread.start()
    return thread, result


@pytest.fixture
def live() -> Iterator[tuple[LiveControl, AdminClient]]:
    control = LiveControl()
    with serving(control) as port:
        control._new("web", "v2", "canary")
        yield control, AdminClient(f"http://127.0.0.1:{port}", TOKEN, DEADLINE)


def calls(control: FakeControl, name: str) -> list[tuple[Any, ...]]:
    return [c for c in control.calls if c[0] == name]


def test_the_live_view_ends_on_the_finished_event_without_polling(
    live: tuple[LiveControl, AdminClient],
) -> None:
    control, client = live
    out = console()
    thread, result = in_thread(follow, client, 1, out)
    time.sleep(0.2)
    control.add("step", index=0, step={"kind": "start", "count": 2})
    time.sleep(0.2)
    began = time.monotonic()
    control.finish("succeeded")
    thread.join(DEADLINE)
    assert result[0]["outcome"] == "succeeded"
    assert time.monotonic() - began < 1.0
    assert calls(control, "wait") == []  # no long polls: the stream said it
    assert calls(control, "events") == [("events", 0, "web")]
    # one fetch at the start, one per event of the deploy (and the first view)
    assert len(calls(control, "deploy_view")) == 4
    assert "v2" in out.file.getvalue()  # type: ignore[attr-defined]


def test_a_cut_stream_is_reopened_after_the_last_event_id(
    live: tuple[LiveControl, AdminClient],
) -> None:
    control, client = live
    control.cut_after = 1
    control.add("step", index=0, step={"kind": "start", "count": 2})
    control.add("traffic", split={"v1": 90, "v2": 10})
    thread, result = in_thread(follow, client, 1, console())
    time.sleep(0.3)
    control.finish("rolled_back")
    thread.join(DEADLINE)
    assert result[0]["outcome"] == "rolled_back"
    asked = [c[1] for c in calls(control, "events")]
    assert asked[:3] == [0, 1, 2]  # each reconnect resumes after the last event seen
    assert calls(control, "wait") == []


def test_a_refused_stream_falls_back_to_polling(live: tuple[LiveControl, AdminClient]) -> None:
    control, client = live
    control.refuse_stream = NotDeployable("no events here")
    out = console()
    thread, result = in_thread(follow, client, 1, out, time.monotonic() + 0.8)
    time.sleep(0.3)
    control.finish("succeeded")
    thread.join(DEADLINE)
    assert result[0]["outcome"] == "succeeded"
    assert calls(control, "wait")  # it polled
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "event stream refused: no events here" in text
    assert "following by polling" in text


def test_a_feed_gives_up_after_its_reconnects(
    monkeypatch: pytest.MonkeyPatch, live: tuple[LiveControl, AdminClient]
) -> None:
    monkeypatch.setattr(feed_module, "RECONNECT_BACKOFF", 0.01)
    control, client = live
    control.cut_after = 0  # every stream ends at once, with nothing
    feed = EventFeed(client, "web")
    try:
        with pytest.raises(StreamLost, match="the event stream ended"):
            feed.next(DEADLINE)  # nothing ever comes: what comes is the loss
        assert feed.connects == feed_module.RECONNECTS + 1
    finally:
        feed.close()


def test_a_feed_closes_from_another_thread_while_its_reader_waits(
    live: tuple[LiveControl, AdminClient],
) -> None:
    _, client = live
    feed = EventFeed(client, "web")
    assert feed.next(0.2) is None
    began = time.monotonic()
    feed.close()
    assert time.monotonic() - began < 1.0
    assert not feed._thread.is_alive()


def test_concerns_the_deploy_and_its_services_instances_since_it_started() -> None:
    view = {"id": 7, "started_at": 100.0}
    assert concerns({"deploy_id": 7, "at": 1.0}, view)
    assert concerns({"deploy_id": None, "at": 150.0}, view)
    assert not concerns({"deploy_id": None, "at": 50.0}, view)  # replayed history
    assert not concerns({"deploy_id": 6, "at": 150.0}, view)
