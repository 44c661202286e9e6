"""Recreate's gap: with nothing serving, requests are held until a target
appears (or the hold deadline passes), or get a maintenance page."""

from __future__ import annotations

import asyncio

from harness import backends, port_of, proxy, request, run, service
from zerodown.routing import HoldSpec, RoutingTable


def test_held_requests_are_released_to_the_new_target() -> None:
    async def main() -> None:
        async with backends("new") as (new,), proxy(service(hold=HoldSpec(timeout=5.0))) as server:
            port = port_of(server)
            held = [asyncio.create_task(request(port, path=f"/{i}")) for i in range(5)]
            await asyncio.sleep(0.05)
            assert not any(task.done() for task in held)
            await server.apply(RoutingTable(services=(service(new.address, hold=HoldSpec()),)))
            responses = await asyncio.gather(*held)
        assert [r.status for r in responses] == [200] * 5
        assert sorted(r.path for r in new.requests) == [f"/{i}" for i in range(5)]

    run(main())


def test_hold_gives_up_with_503_at_its_deadline() -> None:
    async def main() -> None:
        async with proxy(service(hold=HoldSpec(timeout=0.1))) as server:
            response = await request(port_of(server))
        assert response.status == 503

    run(main())


def test_maintenance_page_answers_at_once_with_retry_after() -> None:
    page = "<h1>Back soon</h1>"

    async def main() -> None:
        spec = service(hold=HoldSpec(maintenance_html=page, retry_after=7))
        async with proxy(spec) as server:
            response = await request(port_of(server))
        assert response.status == 503
        assert response.header("retry-after") == "7"
        assert response.header("content-type") == "text/html; charset=utf-8"
        assert response.body == page.encode()

    run(main())
