"""Retries through real sockets (issue 2, point 5).

Ports the ideas of nginx-tests proxy_next_upstream.t (next target on error,
`proxy_next_upstream_tries`, `proxy_next_upstream_timeout`) and
proxy_non_idempotent.t (a POST whose bytes were sent is never repeated).
"Dead" backends either refuse connections (a closed port) or accept, read
the request and reset, so every attempt they got is counted.
"""

from __future__ import annotations

import asyncio
import socket

from harness import (
    DEADLINE,
    Action,
    Backend,
    Request,
    ok,
    parse_responses,
    port_of,
    proxy,
    request,
    run,
    service,
)
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings


def closed_port() -> str:
    """An address nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def resetting(name: str, delay: float = 0.0) -> Backend:
    """Reads each request (after `delay` seconds), then resets the connection."""

    async def handle(req: Request) -> Action:
        if delay:
            await asyncio.sleep(delay)
        return Action(reset=True)

    return Backend(name=name, handler=handle)


def answering(name: str) -> Backend:
    async def handle(req: Request) -> bytes:
        return ok(name.encode(), headers={"X-Backend": name})

    return Backend(name=name, handler=handle)


async def started(*items: Backend) -> list[Backend]:
    return [await b.start() for b in items]


async def stopped(items: list[Backend]) -> None:
    for b in items:
        await b.stop()


def retries_in_stats(server: ProxyServer) -> int:
    return server.stats().services["web"].pools["stable"].totals.retries


async def raw_until_closed(port: int, raw: bytes) -> bytes:
    """Everything the proxy sends back until it closes or resets the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = b""
    try:
        async with asyncio.timeout(DEADLINE):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionError:
        pass  # an abort: what arrived before it is the answer
    finally:
        writer.close()
    return data


# -- connect errors -----------------------------------------------------------------------


def test_a_dead_target_in_the_pool_is_skipped_and_every_get_succeeds() -> None:
    async def main() -> None:
        (live,) = await started(answering("live"))
        try:
            async with proxy(service(closed_port(), live.address)) as server:
                responses = [await request(port_of(server)) for _ in range(20)]
            assert [r.status for r in responses] == [200] * 20
            assert len(live.requests) == 20
        finally:
            await stopped([live])

    run(main())


def test_with_tries_1_a_dead_target_answers_502_for_its_share() -> None:
    async def main() -> None:
        (live,) = await started(answering("live"))
        try:
            # Passive ejection off, so round robin keeps alternating dead, live.
            spec = service(closed_port(), live.address, tries=1, passive=None)
            async with proxy(spec) as server:
                statuses = [(await request(port_of(server))).status for _ in range(20)]
            assert statuses == [502, 200] * 10
            assert len(live.requests) == 10
        finally:
            await stopped([live])

    run(main())


def test_when_every_target_is_dead_the_client_gets_502_not_503() -> None:
    # Each target was tried and refused: that is a bad gateway, not "no target".
    async def main() -> None:
        for addresses in ([closed_port()], [closed_port(), closed_port(), closed_port()]):
            async with proxy(service(*addresses, passive=None)) as server:
                response = await request(port_of(server))
                assert response.status == 502, addresses
                assert retries_in_stats(server) == len(addresses) - 1

    run(main())


def test_a_post_is_retried_when_nothing_was_sent() -> None:
    # Connection refused: no byte of the POST left the proxy, so trying the next
    # target is safe whatever the method (nginx: non_idempotent only matters once sent).
    async def main() -> None:
        (live,) = await started(answering("live"))
        try:
            async with proxy(service(closed_port(), live.address, passive=None)) as server:
                responses = [
                    await request(port_of(server), "POST", body=b"payload") for _ in range(10)
                ]
            assert [r.status for r in responses] == [200] * 10
            assert [r.body for r in live.requests] == [b"payload"] * 10
        finally:
            await stopped([live])

    run(main())


# -- failures after the request was sent ----------------------------------------------------


def test_a_post_sent_to_a_backend_that_resets_is_never_retried() -> None:
    async def main() -> None:
        broken, live = await started(resetting("broken"), answering("live"))
        try:
            async with proxy(service(broken.address, live.address, passive=None)) as server:
                responses = [
                    await request(port_of(server), "POST", body=b"order-%d" % i) for i in range(6)
                ]
            # Round robin alternates; what went to `broken` is a 502, and no
            # POST was seen twice anywhere.
            assert [r.status for r in responses] == [502, 200] * 3
            assert [r.body for r in broken.requests] == [b"order-0", b"order-2", b"order-4"]
            assert [r.body for r in live.requests] == [b"order-1", b"order-3", b"order-5"]
        finally:
            await stopped([broken, live])

    run(main())


def test_a_get_sent_to_a_backend_that_resets_is_retried_on_the_next_target() -> None:
    async def main() -> None:
        broken, live = await started(resetting("broken"), answering("live"))
        try:
            async with proxy(service(broken.address, live.address, passive=None)) as server:
                response = await request(port_of(server), path="/item")
                assert (response.status, response.body) == (200, b"live")
                assert [r.path for r in broken.requests] == ["/item"]
                assert [r.path for r in live.requests] == ["/item"]
                assert retries_in_stats(server) == 1
        finally:
            await stopped([broken, live])

    run(main())


def test_no_retry_once_a_response_byte_reached_the_client() -> None:
    async def main() -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"

        async def partial(req: Request) -> Action:
            return Action(partial=head + b"first-30-bytes-of-the-body...", reset=True)

        broken = Backend(name="broken", handler=partial)
        broken, live = await started(broken, answering("live"))
        try:
            async with proxy(service(broken.address, live.address, passive=None)) as server:
                raw = b"GET /page HTTP/1.1\r\nHost: example.test\r\n\r\n"
                data = await raw_until_closed(port_of(server), raw)
                assert retries_in_stats(server) == 0
        finally:
            await stopped([broken, live])
        (response,) = parse_responses(data)
        assert response.status == 200
        assert response.header("content-length") == "100"
        # The client got what the backend sent and then a cut connection: a
        # truncated body it can detect, never a second response glued on.
        assert response.body == b"first-30-bytes-of-the-body..."
        assert b"live" not in data
        assert len(broken.requests) == 1
        assert live.requests == []

    run(main())


def test_a_put_is_replayed_with_its_body_on_the_next_target() -> None:
    async def main() -> None:
        body = bytes(range(256)) * 40  # 10 KiB: small enough to keep for a replay
        broken, live = await started(resetting("broken"), answering("live"))
        try:
            async with proxy(service(broken.address, live.address, passive=None)) as server:
                response = await request(port_of(server), "PUT", "/doc", body=body)
        finally:
            await stopped([broken, live])
        assert (response.status, response.body) == (200, b"live")
        assert [r.body for r in broken.requests] == [body]
        assert [r.body for r in live.requests] == [body]

    run(main())


def test_a_put_too_big_to_keep_for_a_replay_is_not_retried_once_sent() -> None:
    async def main() -> None:
        body = b"x" * (256 * 1024)  # beyond the replay buffer: its bytes are gone once sent
        broken, live = await started(resetting("broken"), answering("live"))
        try:
            async with proxy(service(broken.address, live.address, passive=None)) as server:
                response = await request(port_of(server), "PUT", "/doc", body=body)
        finally:
            await stopped([broken, live])
        assert response.status == 502
        assert [len(r.body) for r in broken.requests] == [len(body)]
        assert live.requests == []

    run(main())


def test_a_read_timeout_retries_a_get_but_answers_a_post_with_504() -> None:
    async def main() -> None:
        async def hang(req: Request) -> Action:
            return Action(hang=True)

        slow = Backend(name="slow", handler=hang)
        slow, live = await started(slow, answering("live"))
        settings = ProxySettings(read_timeout=0.1)
        try:
            spec = service(slow.address, live.address, passive=None)
            # A fresh proxy per request: round robin starts at `slow` each time.
            async with proxy(spec, settings=settings) as server:
                get = await request(port_of(server), "GET", "/a")
            async with proxy(spec, settings=settings) as server:
                post = await request(port_of(server), "POST", "/b", body=b"once")
        finally:
            await stopped([slow, live])
        # The GET timed out at slow and was answered by live; the POST was not repeated.
        assert (get.status, get.body) == (200, b"live")
        assert post.status == 504
        assert [(r.method, r.path) for r in slow.requests] == [("GET", "/a"), ("POST", "/b")]
        assert [(r.method, r.path) for r in live.requests] == [("GET", "/a")]

    run(main())


# -- limits: tries, retry_timeout, the budget --------------------------------------------------


def test_tries_limits_the_number_of_targets_tried() -> None:
    async def main() -> None:
        pool = await started(*(resetting(f"r{i}") for i in range(5)))
        try:
            addresses = [b.address for b in pool]
            async with proxy(service(*addresses, tries=3, passive=None)) as server:
                response = await request(port_of(server))
                assert response.status == 502
                assert [len(b.requests) for b in pool] == [1, 1, 1, 0, 0]
                assert retries_in_stats(server) == 2
            async with proxy(service(*addresses, tries=5, passive=None)) as server:
                assert (await request(port_of(server))).status == 502
                assert [len(b.requests) for b in pool] == [2, 2, 2, 1, 1]
        finally:
            await stopped(pool)

    run(main())


def test_retry_timeout_stops_retrying_once_its_deadline_passed() -> None:
    async def main() -> None:
        # r0 fails at once (well inside the 0.1 s deadline), r1 only after 0.25 s
        # (well past it): r2..r4 are never tried although `tries` would allow them.
        pool = await started(
            resetting("r0"), resetting("r1", delay=0.25), *(resetting(f"r{i}") for i in (2, 3, 4))
        )
        try:
            spec = service(*(b.address for b in pool), tries=5, retry_timeout=0.1, passive=None)
            async with proxy(spec) as server:
                assert (await request(port_of(server))).status == 502
            assert [len(b.requests) for b in pool] == [1, 1, 0, 0, 0]
        finally:
            await stopped(pool)

    run(main())


def test_retry_budget_keeps_retries_under_its_ratio() -> None:
    async def main() -> None:
        broken, live = await started(resetting("broken"), answering("live"))
        settings = ProxySettings(retry_budget_ratio=0.2, retry_budget_min=0)
        requests = 100
        try:
            spec = service(broken.address, live.address, passive=None)
            async with proxy(spec, settings=settings) as server:
                statuses = [(await request(port_of(server))).status for _ in range(requests)]
                stats_retries = retries_in_stats(server)
        finally:
            await stopped([broken, live])
        attempts = len(broken.requests) + len(live.requests)
        retries = attempts - requests
        assert stats_retries == retries
        assert set(statuses) == {200, 502}
        # Every success is one answer from `live`; every failure is a try at
        # `broken` the budget did not let go further.
        assert statuses.count(200) == len(live.requests)
        assert statuses.count(502) == len(broken.requests) - retries
        # Half the first tries fail; without a budget ~50 would be retried.
        assert 1 <= retries <= 0.2 * requests + 1, retries

    run(main())
