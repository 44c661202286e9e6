"""`mode = "tcp"` services in the config (issue 13): their own `listen`, a
connect health check, and every HTTP-only key refused at load, named."""

from __future__ import annotations

import pytest

from zerodown.config import parse_config
from zerodown.config.tcp import HTTP_ONLY
from zerodown.errors import ConfigError

TCP = '[services.db]\nmode = "tcp"\nlisten = "0.0.0.0:6432"\ncommand = "pgbouncer {port}"\n'


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="zerodown.toml")
    return str(caught.value).splitlines()


def test_a_tcp_service_maps_to_a_spec_with_its_listener_and_a_connect_check() -> None:
    config = parse_config(TCP + 'balance = "least_conn"\nhealth = { interval = "2s" }\n')
    spec = config.routing_table().service("db")
    assert spec is not None
    assert (spec.mode, spec.listen, spec.balance) == ("tcp", "0.0.0.0:6432", "least_conn")
    assert spec.health is not None
    assert (spec.health.path, spec.health.interval) == (None, 2.0)


def test_the_embedded_data_plane_listens_on_the_tcp_listener_after_the_http_ones() -> None:
    config = parse_config('[proxy]\nlisten = ["127.0.0.1:8080"]\n' + TCP)
    assert config.listen_addresses() == ["127.0.0.1:8080", "0.0.0.0:6432"]


def test_an_http_service_keeps_its_http_check() -> None:
    spec = parse_config('[services.web]\ncommand = "app {port}"\n').routing_table().services[0]
    assert spec.mode == "http"
    assert spec.listen is None
    assert spec.health is not None
    assert spec.health.path == "/health"


REFUSED = [
    ('route = { path = "/db" }', "route"),
    ('sticky = { cookie = "sid" }', "sticky"),
    ("tries = 2", "tries"),
    ('retry_timeout = "3s"', "retry_timeout"),
    ('hash_key = "ip"', "hash_key"),
    ('websocket_drain = "close"', "websocket_drain"),
    ('block = { methods = ["TRACE"] }', "block"),
    ('rate_limit = { requests = 5, per = "1s", key = "header:X-Key" }', "rate_limit"),
    ('health = { path = "/health" }', "health.path"),
    ("health = { expect_status = [200] }", "health.expect_status"),
    (
        'canary = { cohorts = [{ header = "X-Beta", values = ["1"], pool = "canary" }] }',
        "canary.cohorts",
    ),
    ('canary = { sticky_cookie = "zd" }', "canary.sticky_cookie"),
    ('blue_green = { preview_pause = "10s" }', "blue_green.preview_pause"),
    ('recreate = { max_pause = "5s" }', "recreate.max_pause"),
    ('balance = "least_time"', "balance"),
    ('balance = "hash"', "balance"),
]


@pytest.mark.parametrize(("text", "key"), REFUSED)
def test_an_http_only_key_on_a_tcp_service_is_refused_naming_it(text: str, key: str) -> None:
    lines = problems_of(TCP + text + "\n")
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"zerodown.toml: services.db.{key}: "), lines[0]
    assert "tcp service" in lines[0]


def test_every_http_only_key_but_cache_is_covered_above() -> None:
    # `cache` is refused as soon as the key exists on a service (another change adds it).
    covered = {key for _, key in REFUSED} | {"cache", "recreate.maintenance_page"}
    assert covered == {key for key, _, _ in HTTP_ONLY} | {"balance"}


def test_a_tcp_service_without_listen_and_an_http_one_with_it_are_refused() -> None:
    no_listen = problems_of('[services.db]\nmode = "tcp"\ncommand = "x {port}"\n')
    assert no_listen[0].startswith("zerodown.toml: services.db.listen: ")
    stray = problems_of('[services.web]\nlisten = "0.0.0.0:1"\ncommand = "x {port}"\n')
    assert stray[0].startswith("zerodown.toml: services.web.listen: ")
    assert "tcp" in stray[0]


def test_a_tcp_listener_on_a_port_already_taken_is_refused() -> None:
    lines = problems_of('[proxy]\nlisten = ["0.0.0.0:6432"]\n' + TCP)
    assert lines[0].startswith("zerodown.toml: services.db.listen: port 6432 is also")
    two = TCP + TCP.replace("services.db", "services.db2")
    assert problems_of(two)[0].startswith("zerodown.toml: services.db2.listen: ")


def test_allow_and_deny_reach_a_tcp_service() -> None:
    config = parse_config(TCP + 'allow = ["10.0.0.0/8"]\ndeny = ["10.9.0.0/16"]\n')
    guard = config.routing_table().services[0].guard
    assert guard is not None
    assert (guard.allow, guard.deny) == (("10.0.0.0/8",), ("10.9.0.0/16",))


def test_tcp_services_share_no_route_with_http_ones() -> None:
    # The default route (*, /) of a tcp service is not a route: no clash.
    config = parse_config('[services.web]\ncommand = "app {port}"\n' + TCP)
    assert [s.mode for s in config.routing_table().services] == ["http", "tcp"]
