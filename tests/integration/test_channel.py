"""The supervisor-worker control channel over a real socketpair, both ends in one loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness import run, until
from zerodown.dataplane.channel import Channel, ChannelClosed, Handler, Message, RemoteError

WAIT = 5.0  # request deadline; every reply here comes in milliseconds


class Peer:
    """One end's handler: records every message it got, in order; answers by op."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Message]] = []
        self.release = asyncio.Event()
        self.finished: list[str] = []

    def handle(self, op: str, message: Message) -> Any:
        self.seen.append((op, message))
        if op == "echo":
            return {"got": message["value"]}
        if op == "fail":
            raise ValueError(f"cannot {message['what']}")
        if op == "slow":
            return self._slow(message["value"])
        if op == "slow_fail":
            return self._slow_fail()
        if op == "note":
            return None
        raise KeyError(op)

    async def _slow(self, value: int) -> int:
        await self.release.wait()
        self.finished.append("slow")
        return value * 2

    async def _slow_fail(self) -> None:
        await self.release.wait()
        raise RuntimeError("gave up")

    def ops(self) -> list[str]:
        return [op for op, _ in self.seen]


def unanswered(op: str, message: Message) -> Any:
    raise AssertionError(f"this end asks, it is never asked: {op} {message}")


@contextlib.asynccontextmanager
async def pair(
    left: Handler = unanswered, right: Handler = unanswered
) -> AsyncIterator[tuple[Channel, Channel]]:
    """Two channels over a socketpair, each reading until the other end goes away."""
    a, b = socket.socketpair()
    one, two = await Channel.over(a, left), await Channel.over(b, right)
    loop = asyncio.get_running_loop()
    serving = [loop.create_task(one.serve()), loop.create_task(two.serve())]
    try:
        yield one, two
    finally:
        one.close()
        two.close()
        await asyncio.wait(serving, timeout=WAIT)
        for task in serving:
            task.cancel()


def test_request_gets_its_reply() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, _):
            assert await asker.request("echo", WAIT, value=[1, "two", None]) == {
                "got": [1, "two", None]
            }
            assert await asker.request("note", WAIT) is None
            assert peer.seen == [
                ("echo", {"id": 1, "op": "echo", "value": [1, "two", None]}),
                ("note", {"id": 2, "op": "note"}),
            ]

    run(main())


def test_both_ends_ask_and_answer_over_one_socket() -> None:
    async def main() -> None:
        left, right = Peer(), Peer()
        async with pair(left.handle, right.handle) as (one, two):
            replies = await asyncio.gather(
                one.request("echo", WAIT, value="from one"),
                two.request("echo", WAIT, value="from two"),
            )
            assert list(replies) == [{"got": "from one"}, {"got": "from two"}]
            assert left.ops() == ["echo"]
            assert right.ops() == ["echo"]

    run(main())


def test_a_handler_that_raises_is_a_remote_error_with_its_message() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, _):
            with pytest.raises(RemoteError) as raised:
                await asker.request("fail", WAIT, what="obey")
            assert str(raised.value) == "ValueError: cannot obey"
            with pytest.raises(RemoteError, match="KeyError"):
                await asker.request("no_such_op", WAIT)
            # A failure is one reply: the channel carries on.
            assert await asker.request("echo", WAIT, value=3) == {"got": 3}

    run(main())


def test_a_coroutine_that_raises_is_a_remote_error_too() -> None:
    async def main() -> None:
        peer = Peer()
        peer.release.set()
        async with pair(right=peer.handle) as (asker, _):
            with pytest.raises(RemoteError, match=r"^RuntimeError: gave up$"):
                await asker.request("slow_fail", WAIT)
            assert await asker.request("echo", WAIT, value=4) == {"got": 4}

    run(main())


def test_a_coroutine_handler_replies_when_done_and_later_requests_go_first() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, _):
            answered: list[str] = []

            async def ask(op: str, value: int) -> Any:
                result = await asker.request(op, WAIT, value=value)
                answered.append(op)
                return result

            loop = asyncio.get_running_loop()
            slow = loop.create_task(ask("slow", 21))
            await until(lambda: peer.ops() == ["slow"], "the slow request arrived")
            assert await ask("echo", 1) == {"got": 1}
            assert answered == ["echo"]
            assert not slow.done()

            peer.release.set()
            assert await slow == 42
            assert answered == ["echo", "slow"]
            assert peer.finished == ["slow"]

    run(main())


def test_notices_and_requests_arrive_in_the_order_sent() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, _):
            asker.notify("note", n=1)
            first = asyncio.get_running_loop().create_task(asker.request("echo", WAIT, value=2))
            await asyncio.sleep(0)  # the task runs up to its first await: the request is sent
            asker.notify("note", n=3)
            asker.notify("note", n=4)
            assert await asker.request("echo", WAIT, value=5) == {"got": 5}
            assert await first == {"got": 2}
            order = [m.get("n", m.get("value")) for _, m in peer.seen]
            assert order == [1, 2, 3, 4, 5]
            # Notices carry no id and get no reply; requests are numbered.
            assert [("id" in m) for _, m in peer.seen] == [False, True, False, False, True]

    run(main())


def test_a_notice_whose_handler_raises_is_dropped_quietly() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, _):
            asker.notify("fail", what="listen")
            assert await asker.request("echo", WAIT, value=1) == {"got": 1}
            assert peer.ops() == ["fail", "echo"]

    run(main())


def test_the_other_end_closing_fails_pending_requests() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, answerer):
            loop = asyncio.get_running_loop()
            pending = [loop.create_task(asker.request("slow", WAIT, value=i)) for i in range(3)]
            await until(lambda: len(peer.seen) == 3, "three slow requests arrived")

            answerer.close()

            for task in pending:
                with pytest.raises(ChannelClosed):
                    await task
            await until(lambda: asker.closed, "the asking end noticed")
            with pytest.raises(ChannelClosed):
                await asker.request("echo", WAIT, value=1)
            asker.notify("note")  # dropped, not raised
            assert peer.finished == []

    run(main())


def test_closing_this_end_fails_its_own_pending_requests() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, _):
            pending = asyncio.get_running_loop().create_task(asker.request("slow", WAIT, value=1))
            await until(lambda: len(peer.seen) == 1, "the slow request arrived")
            asker.close()
            with pytest.raises(ChannelClosed):
                await pending
            assert asker.closed

    run(main())


def test_a_request_nobody_answers_times_out() -> None:
    async def main() -> None:
        peer = Peer()
        async with pair(right=peer.handle) as (asker, _):
            with pytest.raises(TimeoutError):
                await asker.request("slow", 0.05, value=1)
            # The late reply to a request given up on is ignored; the channel works.
            peer.release.set()
            await until(lambda: peer.finished == ["slow"], "the slow handler ended")
            assert await asker.request("echo", WAIT, value=2) == {"got": 2}

    run(main())
