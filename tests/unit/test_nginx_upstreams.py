"""upstreams = "lua" on nginx, pure: the table zerodown_upstreams.lua routes
by, the configuration around it, and the workers' reports (the integration
tests feed the same text to a real nginx)."""

from __future__ import annotations

from pathlib import Path

from harness import service
from zerodown.dataplane.nginx.render import render, table
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.dataplane.nginx.upstreams import lua_missing, parse_reports
from zerodown.routing import (
    HoldSpec,
    PassiveHealthSpec,
    ServiceSpec,
    Split,
    StickySpec,
)

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"
LUA = NginxSettings(state_dir=Path("/srv/zd"), upstreams="lua")


def conf(*services: ServiceSpec, unhealthy: frozenset[tuple[str, str]] = frozenset()) -> str:
    return render(services, ["127.0.0.1:8080"], LUA, generation=7, unhealthy=unhealthy)


def test_the_table_carries_weights_balancer_and_passive_limits() -> None:
    web = service(
        A, B, canary=(C,), split=Split(canary_weight=25), balance="least_conn",
        passive=PassiveHealthSpec(consecutive_errors=4, base_ejection_time=2.5),
    )  # fmt: skip
    api = service("[::1]:9004", name="api", balance="hash", hash_key="header:X-User-Id")
    assert table((web, api), LUA, 7).splitlines() == [
        "zerodown-upstreams 1",
        "generation 7",
        "service api hash 5 10 http_x_user_id 0",  # harness: passive 5 in 10s
        "peer api [::1] 9004 1",
        "service web least_conn 4 2.5 - 1",  # counted: it has a canary
        f"peer web 127.0.0.1 9001 {3}",
        f"peer web 127.0.0.1 9002 {3}",
        f"peer web 127.0.0.1 9003 {2}",
    ]


def test_targets_out_by_health_leave_the_table_and_all_out_routes_to_all() -> None:
    web = service(A, B)
    assert "9002" not in table((web,), LUA, 7, frozenset({("web", B)}))
    everyone = table((web,), LUA, 7, frozenset({("web", A), ("web", B)}))
    assert "peer web 127.0.0.1 9001 1" in everyone  # panic: a busy app is not a dead app
    assert "peer web 127.0.0.1 9002 1" in everyone


def test_ip_hash_hashes_the_client_address_and_path_hash_the_uri() -> None:
    lines = table(
        (service(A, name="a", balance="ip_hash"), service(B, name="b", balance="hash")), LUA, 7
    ).splitlines()
    assert "service a hash 5 10 remote_addr 0" in lines
    assert "service b hash 5 10 uri 0" in lines


def test_a_deploy_step_leaves_the_configuration_text_as_it_was() -> None:
    """What makes a step reload-free: targets, weights, drains and health
    verdicts change the table, never the text nginx would reload."""
    before = conf(service(A, B))
    canary = service(A, B, canary=(C,), split=Split(canary_weight=10))
    switched = service(C)
    assert conf(canary) == before
    assert conf(switched) == before
    assert conf(service(A, B), unhealthy=frozenset({("web", A)})) == before
    assert A not in before
    assert "weight=" not in before
    assert "balancer_by_lua_block { zerodown_upstreams.balance('web') }" in before
    assert "log_by_lua_block { zerodown_upstreams.done() }" in before
    assert before.index("load_module /usr/lib/nginx/modules/ndk_http_module.so;") < before.index(
        "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
    )
    assert "location = /zerodown/upstreams/load {" in before


def test_what_the_table_cannot_carry_still_changes_the_text() -> None:
    before = conf(service(A))
    nothing = conf(service())
    assert "return 503;" in nothing
    assert nothing != before
    sticky = service(A, sticky=StickySpec(cookie="zd"))
    assert conf(sticky) != conf(service(B, sticky=StickySpec(cookie="zd")))
    assert "balancer_by_lua" not in conf(sticky)  # per-target upstreams, as with reloads
    held = service(hold=HoldSpec(timeout=5.0))  # recreate's gap: no target
    assert "balancer_by_lua" not in conf(held)
    assert conf(held) != before


def test_reports_give_each_worker_s_version_and_requests_in_flight() -> None:
    reports = parse_reports(
        b"version 9\n101 9 127.0.0.1:9001=2 [::1]:9004=1\n102 8\n103 9 127.0.0.1:9001=1\njunk\n"
    )
    assert reports.version == 9
    assert reports.caught_up({101, 103}, 9)
    assert not reports.caught_up({101, 102}, 9)
    assert not reports.caught_up({101, 104}, 9)  # no report yet from 104
    assert reports.in_flight("127.0.0.1:9001", {101, 103}) == 3
    assert reports.in_flight("127.0.0.1:9001", {101}) == 2  # 103 is not serving
    assert reports.in_flight("[::1]:9004", {101, 102, 103}) == 1


def test_lua_missing_names_what_is_not_installed(tmp_path: Path) -> None:
    there = tmp_path / "ngx_http_lua_module.so"
    there.touch()
    assert lua_missing([there, tmp_path / "core.lua"]) == [tmp_path / "core.lua"]
