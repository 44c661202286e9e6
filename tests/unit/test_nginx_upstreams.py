"""upstreams = "lua" on nginx, pure: the table zerodown_upstreams.lua routes
by, the configuration around it, and the workers' reports (the integration
tests feed the same text to a real nginx)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness import service
from zerodown.dataplane.nginx.render import render, table
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.dataplane.nginx.sockets import open_to
from zerodown.dataplane.nginx.upstreams import SOURCE, lua_missing, parse_reports
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


def test_a_target_named_by_host_name_keeps_its_service_on_server_lines() -> None:
    named = conf(service("app.internal:8080"))
    assert "server app.internal:8080" in named
    assert "balancer_by_lua" not in named
    assert "app.internal" not in table((service("app.internal:8080"),), LUA, 7)


def test_ipv6_targets_are_written_as_nginx_writes_them() -> None:
    """The balancer matches its tries against $upstream_addr's spelling."""
    spelled = table((service("[0:0::1]:9001", "[2001:DB8::1]:9002"),), LUA, 7).splitlines()
    assert spelled[-2:] == ["peer web [::1] 9001 1", "peer web [2001:db8::1] 9002 1"]
    assert "balancer_by_lua" not in conf(service("[fe80::1%eth0]:9001"))  # a zone: server line


def test_the_module_s_digest_is_in_the_text_so_a_new_module_reloads() -> None:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    assert f"# zerodown_upstreams.lua {digest}" in conf(service(A))


def test_a_target_on_the_unspecified_address_is_counted_on_the_loopback() -> None:
    row = "0: 0100007F:9C40 0100007F:2329 01 00000000:00000000 00:00000000 00000000 1000 0 11 1"
    assert open_to([row], "0.0.0.0:9001", frozenset()) == 1


def test_reports_give_each_worker_s_version() -> None:
    reports = parse_reports(b"version 9\n101 9\n102 8\n103 9\njunk\n104 x\n")
    assert reports.version == 9
    assert reports.workers == {101: 9, 102: 8, 103: 9}
    assert reports.caught_up({101, 103}, 9)
    assert not reports.caught_up({101, 102}, 9)
    assert not reports.caught_up({101, 105}, 9)  # no report yet from 105


def test_only_balancers_that_weigh_requests_in_flight_hear_each_request_end() -> None:
    hook = "log_by_lua_block { zerodown_upstreams.done() }"
    assert hook not in conf(service(A, B))  # round robin: the balancer alone
    assert hook not in conf(service(A, B, balance="hash"))
    assert hook in conf(service(A, B, balance="least_conn"))
    assert hook in conf(service(A, B, balance="random_two"))
    assert "keepalive_timeout 1s;" in conf(service(A, B))  # a drain's end: sockets.py


def test_open_connections_to_a_target_are_read_from_the_kernel_s_table() -> None:
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid ..."
    rows = [
        # 127.0.0.1:40000 -> 127.0.0.1:9001, ESTABLISHED, inode 11
        "0: 0100007F:9C40 0100007F:2329 01 00000000:00000000 00:00000000 00000000 1000 0 11 1",
        "1: 0100007F:9C41 0100007F:2329 02 00000000:00000000 00:00000000 00000000 1000 0 12 1",
        "2: 0100007F:9C42 0100007F:2329 06 00000000:00000000 00:00000000 00000000 1000 0 0 1",
        "3: 0100007F:9C43 0100007F:232A 01 00000000:00000000 00:00000000 00000000 1000 0 14 1",
        "4: 0100007F:9C44 0100007F:2329 08 00000000:00000000 00:00000000 00000000 1000 0 15 1",
        "5: 0100007F:9C45 0100007F:2329 01 00000000:00000000 00:00000000 00000000 1000 0 16 1",
    ]
    # TIME_WAIT (06) is the kernel's, :9002 another target, inode 16 our own.
    assert open_to([header, *rows], A, frozenset({16})) == 3
    loopback6 = "00000000000000000000000001000000"
    v6 = f"0: {loopback6}:9C40 {loopback6}:2329 01 0 0 0 0 0 21 1"
    assert open_to([v6], "[::1]:9001", frozenset()) == 1


def test_lua_missing_names_what_is_not_installed(tmp_path: Path) -> None:
    there = tmp_path / "ngx_http_lua_module.so"
    there.touch()
    assert lua_missing([there, tmp_path / "core.lua"]) == [tmp_path / "core.lua"]
