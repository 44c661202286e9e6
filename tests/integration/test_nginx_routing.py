"""A real nginx routes by host and path, splits canary traffic, keeps the old
config when a new one fails `nginx -t`, and coalesces concurrent applies."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from harness import KeepAliveClient, backends, request, run, service
from nginx_harness import nginx, port_of
from zerodown.dataplane.nginx import NginxDataPlane, NginxSettings, process
from zerodown.dataplane.nginx.render import render
from zerodown.dataplane.nginx.settings import Paths
from zerodown.errors import DataPlaneError
from zerodown.routing import (
    BalanceName,
    PoolSpec,
    RoutingTable,
    Split,
    TargetSpec,
    with_target_state,
)


def test_routes_by_host_then_longest_path_prefix(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("web", "api", "admin") as (web, api, admin):
            routes = (
                service(web.address, name="web"),
                service(api.address, name="api", path="/api", strip_prefix=True),
                service(admin.address, name="admin", host="admin.test"),
            )
            async with nginx(tmp_path, *routes) as plane:
                port = port_of(plane)
                assert (await request(port, path="/x")).body == b"web"
                assert (await request(port, path="/api/users")).body == b"api"
                assert (await request(port, path="/apix")).body == b"web"  # segments only
                assert (await request(port, path="/", host="admin.test")).body == b"admin"
                forged = {
                    "X-Request-ID": "abc",
                    "X-Forwarded-For": "6.6.6.6",
                    "X-Forwarded-Host": "evil.test",
                }
                sent = await request(port, path="/y", headers=forged)
        assert api.requests[0].path == "/users"  # the prefix was stripped
        assert [r.path for r in web.requests] == ["/x", "/apix", "/y"]
        assert web.requests[0].header("X-Forwarded-For") == "127.0.0.1"
        generated = web.requests[0].header("X-Request-ID")
        assert generated is not None
        # prefix-generation-connection-request (render.request_id)
        assert re.fullmatch(r"[0-9a-f]{8}-\d+-\d+-1", generated), generated
        ids = [r.header("X-Request-ID") for r in (*web.requests, *api.requests, *admin.requests)]
        assert len(set(ids)) == len(ids) == 5
        # From a client that is not a trusted proxy, identity headers are replaced.
        assert web.requests[2].header("X-Forwarded-For") == "127.0.0.1"
        replaced = web.requests[2].header("X-Request-ID")
        assert replaced != "abc"
        assert sent.header("X-Request-ID") == replaced
        assert [r.header("X-Forwarded-Host") for r in web.requests] == ["example.test"] * 3

    run(main())


def test_request_ids_are_unique_on_a_connection_and_across_a_reload(tmp_path: Path) -> None:
    """render.request_id: prefix (kept in state.json, so that an adopting
    driver renders the same text: test_nginx_lua_upstreams), generation, the
    connection's serial, the request's number on it."""

    async def ids(port: int, count: int) -> list[str]:
        async with KeepAliveClient(port) as client:
            return [str((await client.request()).header("X-Request-ID")) for _ in range(count)]

    async def main() -> None:
        async with (
            backends("old", "new") as (old, new),
            nginx(tmp_path, service(old.address)) as plane,
        ):
            first = await ids(port_of(plane), 3)
            await plane.apply(RoutingTable(services=(service(new.address),)))  # a reload
            second = await ids(port_of(plane), 2)
            saved = json.loads(plane.paths.state.read_text())
        parts = [i.split("-") for i in (*first, *second)]
        assert len({*first, *second}) == 5
        assert {p[0] for p in parts} == {saved["request_id_prefix"]}
        assert re.fullmatch("[0-9a-f]{8}", parts[0][0])
        assert [p[3] for p in parts] == ["1", "2", "3", "1", "2"]
        assert len({p[2] for p in parts[:3]}) == 1  # one connection
        assert int(parts[3][1]) == int(parts[0][1]) + 1  # the reload's generation

    run(main())


def test_a_trusted_proxy_s_identity_headers_pass(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            backends("web") as (web,),
            nginx(tmp_path, service(web.address), trusted_proxies=("127.0.0.0/8",)) as plane,
        ):
            headers = {
                "X-Request-ID": "abc",
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Host": "shop.example",
            }
            sent = await request(port_of(plane), path="/", headers=headers)
        assert web.requests[0].header("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"
        assert web.requests[0].header("X-Request-ID") == "abc"
        assert web.requests[0].header("X-Forwarded-Host") == "shop.example"
        assert sent.header("X-Request-ID") == "abc"

    run(main())


def test_canary_weight_splits_traffic_as_asked(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("stable", "canary") as (stable, canary):
            spec = service(stable.address, canary=(canary.address,), split=Split(canary_weight=20))
            async with nginx(tmp_path, spec) as plane, KeepAliveClient(port_of(plane)) as client:
                seen = Counter([(await client.request()).body for _ in range(200)])
        # Smooth weighted round robin: 20% is 40 of 200, give or take the phase.
        assert 36 <= seen[b"canary"] <= 44, seen
        assert seen[b"stable"] + seen[b"canary"] == 200

    run(main())


def test_a_config_nginx_rejects_fails_apply_and_the_old_one_serves(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            backends("old", "new") as (old, new),
            nginx(tmp_path, service(old.address)) as plane,
        ):
            live = plane.paths.conf.read_text()
            # Owner-only: it holds the access-log key.
            assert plane.paths.conf.stat().st_mode & 0o777 == 0o600
            assert plane.paths.state.stat().st_mode & 0o777 == 0o600
            plane.settings = replace(plane.settings, extra_http="no_such_directive on;")
            with pytest.raises(DataPlaneError, match='unknown directive "no_such_directive"'):
                await plane.apply(RoutingTable(services=(service(new.address),)))
            assert plane.paths.conf.read_text() == live
            assert not plane.paths.pending.exists()
            assert plane.routing().services[0].stable.targets[0].address == old.address
            assert (await request(port_of(plane))).body == b"old"
        assert new.requests == []

    run(main())


def test_concurrent_applies_coalesce_into_one_reload_of_the_last(tmp_path: Path) -> None:
    async def main() -> None:
        async with backends("a", "b", "c", "d") as group, nginx(tmp_path) as plane:
            before = plane._generation
            tables = [RoutingTable(services=(service(b.address),)) for b in group]
            await asyncio.gather(*(plane.apply(t) for t in tables))
            assert plane._generation - before == 2  # the first, then the last for the rest
            assert plane.routing() == tables[-1]
            assert (await request(port_of(plane))).body == b"d"

    run(main())


def test_a_missing_binary_names_the_package(tmp_path: Path) -> None:
    async def main() -> None:
        plane = NginxDataPlane(NginxSettings(state_dir=tmp_path, binary="/nonexistent/nginx"))
        with pytest.raises(DataPlaneError, match="apt-get install nginx"):
            await plane.start(["127.0.0.1:1"])

    run(main())


def test_a_listen_address_in_use_fails_start_with_nginx_words(tmp_path: Path) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            plane = NginxDataPlane(NginxSettings(state_dir=tmp_path, reload_timeout=5.0))
            with pytest.raises(DataPlaneError, match=f"127.0.0.1:{port} failed.*in use"):
                await plane.start([f"127.0.0.1:{port}"])
            assert plane.pids == []

    run(main())


@pytest.mark.parametrize(
    "balance", ["round_robin", "least_conn", "ip_hash", "hash", "random_two", "least_time"]
)
def test_nginx_accepts_every_balancer_with_a_canary_and_a_draining_target(
    tmp_path: Path, balance: BalanceName
) -> None:
    stable = PoolSpec(
        targets=(TargetSpec(address="127.0.0.1:9001"), TargetSpec(address="127.0.0.1:9002"))
    )
    spec = service("127.0.0.1:9003", canary=("127.0.0.1:9004",), balance=balance)
    spec = spec.model_copy(update={"stable": stable, "split": Split(canary_weight=10)})
    drained = with_target_state(RoutingTable(services=(spec,)), "web", "127.0.0.1:9002", "draining")
    settings = NginxSettings(state_dir=tmp_path, user="root")
    paths = Paths(tmp_path)
    paths.temp.mkdir()
    paths.conf.write_text(render(drained.services, ["127.0.0.1:1"], settings, generation=1))
    run(process.test_config(process.find_binary("nginx"), paths, paths.conf, timeout=5.0))
