"""The proxy's own 503s say which kind they are (issue 9): in one body line,
in the X-Zerodown-Error header, and (test_proxy_access_log.py) in the access
log, as HAProxy's termination states and Envoy's response flags do.

Bodies are compared whole: they are what a user reads in a browser or curl.
"""

from __future__ import annotations

import asyncio

from harness import Action, Backend, Request, ok, port_of, proxy, request, run, service, until
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import HoldSpec


async def hang_on_hold(req: Request) -> bytes | Action:
    return Action(hang=True) if req.path == "/hold" else ok()


def test_a_full_queue_says_so() -> None:
    async def main() -> None:
        backend = await Backend(handler=hang_on_hold).start()
        settings = ProxySettings(max_conns_per_target=1, queue_timeout=0.2)
        try:
            async with proxy(service(backend.address), settings=settings) as server:
                port = port_of(server)
                holder = asyncio.create_task(request(port, path="/hold"))
                await until(lambda: len(backend.requests) == 1, "the slot taken")
                response = await request(port, path="/queued")
                holder.cancel()
        finally:
            await backend.stop()
        assert response.status == 503
        assert response.header("x-zerodown-error") == "queue_timeout"
        assert response.body == (
            b"503 Service Unavailable: target at max connections (1) "
            b"for the whole queue timeout (0.2s)\n"
        )
        assert backend.address.encode() not in response.raw  # no address of the network behind

    run(main())


def test_a_hold_that_times_out_says_so() -> None:
    async def main() -> None:
        async with proxy(service(hold=HoldSpec(timeout=0.1))) as server:
            response = await request(port_of(server))
        assert response.status == 503
        assert response.header("x-zerodown-error") == "hold_timeout"
        assert response.body == (
            b"503 Service Unavailable: no target for web within the hold timeout (0.1s)\n"
        )

    run(main())


def test_a_held_request_at_shutdown_says_so() -> None:
    async def main() -> None:
        server_cm = proxy(service(hold=HoldSpec(timeout=5.0)))
        server = await server_cm.__aenter__()
        try:
            held = asyncio.create_task(request(port_of(server)))
            await until(lambda: bool(server.connections), "the request held")
            await asyncio.sleep(0.02)
            await server.stop(timeout=2.0)
            response = await held
        finally:
            await server_cm.__aexit__(None, None, None)
        assert response.status == 503
        assert response.header("x-zerodown-error") == "shutting_down"
        assert response.body == (
            b"503 Service Unavailable: no target for web: the proxy is shutting down\n"
        )

    run(main())


def test_the_maintenance_page_keeps_its_body_and_says_its_kind() -> None:
    async def main() -> None:
        spec = service(hold=HoldSpec(maintenance_html="<h1>Back soon</h1>"))
        async with proxy(spec) as server:
            response = await request(port_of(server))
        assert (response.status, response.body) == (503, b"<h1>Back soon</h1>")
        assert response.header("x-zerodown-error") == "maintenance"

    run(main())


def test_a_head_request_gets_the_kind_without_a_body() -> None:
    async def main() -> None:
        async with proxy(service()) as server:
            response = await request(port_of(server), "HEAD")
        assert response.status == 503
        assert response.header("x-zerodown-error") == "no_healthy_target"
        assert response.body == b""

    run(main())


def test_an_apps_own_503_is_passed_on_untouched() -> None:
    async def main() -> None:
        async def busy(req: Request) -> bytes:
            return ok(b"app says busy", status=503)

        backend = await Backend(handler=busy).start()
        try:
            async with proxy(service(backend.address)) as server:
                response = await request(port_of(server))
        finally:
            await backend.stop()
        assert (response.status, response.body) == (503, b"app says busy")
        assert response.header("x-zerodown-error") is None

    run(main())
