"""Outbound notifications against real HTTP receivers on port 0 (control/webhooks.py)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness import DEADLINE, run, until
from zerodown.config.operate import NotifyConfig
from zerodown.control.webhooks import Webhooks, post_json, shown_url
from zerodown.deploy.contract import EventView


class Receiver(ThreadingHTTPServer):
    """Records each POST body; answers 500 to the first `failures`, then 204."""

    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.failures = failures
        self.delay = delay
        self.tries = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers_seen: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook?team=ops"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server = self.server
        server.tries += 1
        if server.delay:
            threading.Event().wait(server.delay)
        if server.tries <= server.failures:
            self.send_response(500)
        else:
            server.bodies.append(json.loads(body))
            server.headers_seen.append({"path": self.path, **dict(self.headers)})
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiver(failures: int = 0, delay: float = 0.0) -> Iterator[Receiver]:
    server = Receiver(failures, delay)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def deploy_events(deploy_id: int, version: str, start: int) -> list[EventView]:
    said: list[tuple[str, dict[str, Any]]] = [
        ("started", {"version": version, "strategy": "canary"}),
        ("step", {"index": 0, "step": {"kind": "start", "count": 1}}),
        ("analysis", {"verdict": "fail", "reason": "errors"}),
        ("finished", {"outcome": "rolled_back", "reason": "canary breach: errors"}),
    ]
    return [
        EventView(id=start + i, service="web", deploy_id=deploy_id, kind=k, data=d, at=1000.0)
        for i, (k, d) in enumerate(said)
    ]


class Source:
    """A live event stream: what is put comes out, to each follower from `after` on."""

    def __init__(self) -> None:
        self.events: list[EventView] = []
        self.changed = asyncio.Event()
        self.asked: list[int] = []

    def put(self, *events: EventView) -> None:
        self.events += events
        self.changed.set()

    async def follow(self, after: int) -> AsyncIterator[EventView]:
        self.asked.append(after)
        while True:
            for event in [e for e in self.events if e.id > after]:
                after = event.id
                yield event
            self.changed.clear()
            await self.changed.wait()


def config(*urls: str, **keys: Any) -> NotifyConfig:
    return NotifyConfig.model_validate(
        {"webhooks": list(urls), "backoff": 0.01, "timeout": 2.0, **keys}
    )


def test_a_receiver_gets_the_events_that_matter_as_json() -> None:
    async def scenario() -> None:
        with receiver() as server:
            source = Source()
            source.put(*deploy_events(6, "v1", start=1))  # before the start: not sent again
            hooks = Webhooks(config(server.url))
            hooks.start(source.follow, after=4)
            source.put(*deploy_events(7, "v2", start=5))
            await until(lambda: len(server.bodies) == 2, "two notifications", DEADLINE)
            await hooks.stop()
        assert [b["event"] for b in server.bodies] == ["started", "rolled_back"]
        last = server.bodies[1]
        assert last["deploy_id"] == 7
        assert last["version"] == "v2"
        assert last["verdict"] == {"verdict": "fail", "reason": "errors"}
        assert "rolled back: canary breach" in last["text"]
        seen = server.headers_seen[0]
        assert seen["path"] == "/hook?team=ops"
        assert seen["Content-Type"] == "application/json"
        assert seen["User-Agent"].startswith("zerodown/")
        assert source.asked == [4]

    run(scenario())


def test_a_receiver_that_fails_twice_gets_it_on_the_third_try() -> None:
    async def scenario() -> None:
        with receiver(failures=2) as server:
            source = Source()
            hooks = Webhooks(config(server.url, retries=3))
            hooks.start(source.follow, after=0)
            source.put(*deploy_events(7, "v2", start=1)[:1])
            await until(lambda: len(server.bodies) == 1, "the notification", DEADLINE)
            await hooks.stop()
            assert server.tries == 3
            assert server.bodies[0]["event"] == "started"
            (sender,) = hooks.receivers
            assert (sender.sent, sender.given_up, sender.dropped) == (1, 0, 0)

    run(scenario())


def test_retries_end_and_a_dead_receiver_does_not_hold_up_another() -> None:
    async def scenario() -> None:
        with receiver(failures=100) as failing, receiver() as good:
            dead = "http://127.0.0.1:1/nobody"
            source = Source()
            hooks = Webhooks(config(dead, failing.url, good.url, retries=2))
            hooks.start(source.follow, after=0)
            source.put(*deploy_events(7, "v2", start=1))
            await until(lambda: len(good.bodies) == 2, "both at the good receiver", DEADLINE)
            await until(lambda: hooks.receivers[1].given_up == 2, "retries over", DEADLINE)
            await hooks.stop()
            assert failing.tries == 6  # 2 notifications x (1 try + 2 retries)
            assert hooks.receivers[0].given_up == 2

    run(scenario())


def test_a_full_queue_drops_the_oldest_and_counts_and_never_blocks() -> None:
    async def scenario() -> None:
        with receiver(delay=0.3) as slow:
            hooks = Webhooks(config(slow.url, queue=2))
            source = Source()
            hooks.start(source.follow, after=0)
            loop = asyncio.get_running_loop()
            began = loop.time()
            for n in range(5):
                source.put(*deploy_events(10 + n, f"v{n}", start=1 + 4 * n))
            sender = hooks.receivers[0]
            # 10 notifications, at most 1 in flight and 2 waiting: the rest are dropped
            await until(lambda: sender.dropped + sender.sent == 10, "all sent or dropped", DEADLINE)
            await hooks.stop()
            assert sender.dropped >= 7
            assert len(slow.bodies) == sender.sent
            assert slow.bodies[-1]["deploy_id"] == 14
            assert slow.bodies[-1]["event"] == "rolled_back"
            assert loop.time() - began < DEADLINE

    run(scenario())


def test_post_json_says_why_it_failed() -> None:
    assert post_json("http://127.0.0.1:1/", {}, 1.0) is not None
    with receiver(failures=1) as server:
        assert post_json(server.url, {"a": 1}, 2.0) == "HTTP 500 Internal Server Error"
        assert post_json(server.url, {"a": 1}, 2.0) is None
        assert server.bodies == [{"a": 1}]


def test_no_receivers_no_tasks() -> None:
    async def scenario() -> None:
        source = Source()
        hooks = Webhooks(config())
        hooks.start(source.follow, after=0)
        assert source.asked == []
        await hooks.stop()

    run(scenario())


def test_logs_show_no_webhook_secret() -> None:
    assert shown_url("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/…"
    assert shown_url("http://user:pw@127.0.0.1:8000/x?token=1") == "http://127.0.0.1:8000/…"
    assert "XXXX" not in repr(Webhooks(config("https://h.example/services/XXXX")).receivers[0])
