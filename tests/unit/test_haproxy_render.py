"""haproxy.cfg rendering and the canary split as server weights: pure."""

from __future__ import annotations

import re
from pathlib import Path

from zerodown.dataplane.accesslog import LogTarget
from zerodown.dataplane.haproxy.render import render, route_order, unsupported
from zerodown.dataplane.haproxy.servers import servers
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.routing import (
    CohortRule,
    HealthSpec,
    HoldSpec,
    PoolSpec,
    RoutingTable,
    ServiceSpec,
    Split,
    StickySpec,
    TargetSpec,
)

SETTINGS = HaproxySettings(state_dir=Path("/srv/zd"))


def spec(*stable: str, canary: tuple[str, ...] = (), **fields: object) -> ServiceSpec:
    return ServiceSpec(
        name=str(fields.pop("name", "web")),
        stable=PoolSpec(targets=tuple(TargetSpec(address=a) for a in stable)),
        canary=PoolSpec(targets=tuple(TargetSpec(address=a) for a in canary)),
        **fields,  # type: ignore[arg-type]
    )


def backend(text: str, name: str) -> list[str]:
    block = text.split(f"\nbackend {name}\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines()]


def test_canary_weight_becomes_server_weights_in_proportion() -> None:
    got = servers(spec("a:1", "a:2", canary=("c:1",), split=Split(canary_weight=20)))
    weights = {s.address: s.weight for s in got}
    assert weights == {"a:1": 256, "a:2": 256, "c:1": 128}  # 40:40:20
    assert [s.pool for s in got] == ["stable", "stable", "canary"]


def test_small_canary_share_keeps_a_nonzero_weight_and_empty_pools_give_way() -> None:
    tiny = servers(
        spec(*(f"a:{i}" for i in range(1, 11)), canary=("c:1",), split=Split(canary_weight=0.01))
    )
    assert {s.address: s.weight for s in tiny}["c:1"] == 1
    no_canary = servers(spec("a:1", split=Split(canary_weight=50)))
    assert [s.weight for s in no_canary] == [256]
    only_canary = servers(spec(canary=("c:1",), split=Split(canary_weight=10)))
    assert [s.weight for s in only_canary] == [256]


def test_draining_and_down_targets_get_their_state_and_no_share() -> None:
    pool = PoolSpec(
        targets=(
            TargetSpec(address="a:1"),
            TargetSpec(address="a:2", state="draining"),
            TargetSpec(address="a:3", state="down"),
        )
    )
    got = servers(ServiceSpec(name="web", stable=pool))
    assert [(s.weight, s.state) for s in got] == [(256, "ready"), (0, "drain"), (0, "maint")]


def test_backend_carries_balance_checks_retries_and_passive_health() -> None:
    text = render(
        RoutingTable(
            services=(spec("127.0.0.1:9001", balance="least_conn", tries=3, slow_start=2.0),)
        ),
        ["127.0.0.1:8080"],
        SETTINGS,
    )
    lines = backend(text, "be_web")
    assert lines[:7] == [
        "balance leastconn",
        "retries 2",
        # request_stats = "canary": logged only while the service has a canary.
        "http-request set-log-level silent unless { str(web),map(/srv/zd/haproxy-counted.map) "
        "-m found }",
        "option httpchk GET /health",
        "timeout check 2000ms",
        "http-check expect rstatus ^(200)$",
        "server t_127.0.0.1:9001 127.0.0.1:9001 weight 256 check inter 1000ms rise 2 fall 3 "
        "observe layer7 error-limit 5 on-error mark-down slowstart 2000ms "
        "pool-max-conn -1 pool-purge-delay 5s",
    ]


def test_hashes_are_consistent_so_servers_can_be_added_at_runtime() -> None:
    table = RoutingTable(
        services=(
            spec("a:1", name="h", balance="hash", hash_key="header:X-User"),
            spec("a:2", name="i", path="/i", balance="ip_hash"),
            spec("a:3", name="r", path="/r", balance="random_two", health=None),
        )
    )
    text = render(table, ["127.0.0.1:8080"], SETTINGS)
    assert backend(text, "be_h")[:2] == ["balance hdr(X-User)", "hash-type consistent"]
    assert backend(text, "be_i")[:2] == ["balance source", "hash-type consistent"]
    assert backend(text, "be_r")[0] == "balance random(2)"
    assert "check" not in backend(text, "be_r")[-1]  # no health: no check, no observe


def test_global_and_defaults_keep_every_file_under_state_dir() -> None:
    text = render(RoutingTable(), ["127.0.0.1:8080", "[::1]:8081"], SETTINGS)
    assert "stats socket /srv/zd/haproxy.sock mode 600 level admin expose-fd listeners" in text
    assert "server-state-file /srv/zd/haproxy.state" in text
    assert "retry-on conn-failure\n" in text
    assert "option redispatch 1" in text
    assert "option forwardfor" in text
    assert "bind 127.0.0.1:8080" in text
    assert "bind [::1]:8081" in text
    assert "/etc/" not in text


def test_routes_are_tried_exact_then_wildcard_then_any_longest_path_first() -> None:
    services = [
        spec("a:1", name="any", path="/"),
        spec("a:2", name="any_api", path="/api"),
        spec("a:3", name="wild", host="*.example.com"),
        spec("a:4", name="deep_wild", host="*.eu.example.com"),
        spec("a:5", name="exact", host="shop.example.com"),
    ]
    order = [s.name for s in route_order(services)]
    assert order == ["exact", "deep_wild", "wild", "any_api", "any"]
    text = render(RoutingTable(services=tuple(services)), ["127.0.0.1:8080"], SETTINGS)
    assert "acl r0_host var(txn.host) -m str shop.example.com" in text
    assert "acl r1_host var(txn.host) -m end .eu.example.com" in text
    assert "acl r3_path path -m str /api" in text
    assert "acl r3_path path -m beg /api/" in text
    assert "use_backend be_any\n" in text  # "/" on any host: no condition


def test_unsupported_names_each_key_and_where_it_is_carried() -> None:
    table = RoutingTable(
        services=(
            spec("a:1", balance="least_time", health=HealthSpec()),
            spec(
                "a:2",
                name="c",
                path="/c",
                split=Split(cohorts=(CohortRule(header="X-Beta", values=("1",), pool="canary"),)),
            ),
        )
    )
    problems = unsupported(table)
    assert len(problems) == 2
    assert "services.web.balance = 'least_time'" in problems[0]
    assert "services.c: canary cohorts" in problems[1]
    assert unsupported(RoutingTable(services=(spec("a:1"),))) == []


def test_forwarded_headers_are_kept_only_from_trusted_proxies() -> None:
    plain = render(RoutingTable(), ["127.0.0.1:8080"], SETTINGS)
    # From nobody: the client's are dropped by the identity regex, ours added.
    (dropping,) = [line.split()[2] for line in plain.splitlines() if "del-header" in line]
    for name in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID"):
        assert re.match(dropping, name), name
    assert "unique-id-header X-Request-ID\n" in plain
    assert "http-request add-header X-Forwarded-Proto http\n" in plain
    trusting = HaproxySettings(state_dir=Path("/srv/zd"), trusted_proxies=("10.0.0.0/8", "::1"))
    text = render(RoutingTable(), ["127.0.0.1:8080"], trusting)
    assert "acl trusted src 10.0.0.0/8 ::1" in text
    assert "http-request del-header X-Forwarded-For unless trusted" in text
    assert "http-request set-header X-Request-ID %[unique-id] unless trusted" in text


def test_request_id_and_host_cost_nothing_where_no_rule_reads_them() -> None:
    """Without trusted proxies every id is the request's own: the response
    reads %[unique-id] again, no variable; txn.host only where a route has a host."""
    table = RoutingTable(services=(spec("a:1"),))
    plain = render(table, ["127.0.0.1:8080"], SETTINGS)
    assert "txn.request_id" not in plain
    assert "txn.host" not in plain
    assert "http-after-response set-header X-Request-ID %[unique-id]\n" in plain
    trusting = HaproxySettings(state_dir=Path("/srv/zd"), trusted_proxies=("10.0.0.0/8",))
    text = render(table, ["127.0.0.1:8080"], trusting)
    assert text.count("set-header X-Request-ID %[unique-id]") == 1  # kept, or made
    assert "http-after-response set-header X-Request-ID %[var(txn.request_id)]" in text


def test_sticky_is_a_dynamic_insert_cookie_with_the_key_ttl_and_secure_from_trusted() -> None:
    sticky = StickySpec(cookie="zd_route", ttl=90.5)
    settings = HaproxySettings(
        state_dir=Path("/srv/zd"), sticky_key="ab" * 32, trusted_proxies=("10.0.0.0/8",)
    )
    text = render(RoutingTable(services=(spec("a:1", sticky=sticky),)), ["0:80"], settings)
    lines = backend(text, "be_web")
    assert (
        "cookie zd_route insert indirect nocache dynamic httponly maxlife 91s "
        'attr "SameSite=Lax" attr "Max-Age=91"'
    ) in lines
    assert f"dynamic-cookie-key {'ab' * 32}" in lines
    assert (
        "http-after-response replace-header Set-Cookie ^(zd_route=.*) \\1;\\ Secure "
        "if { var(txn.https) -m bool } || { ssl_fc }"
    ) in lines
    assert (
        "http-request set-var(txn.https) bool(1) if trusted { req.hdr(x-forwarded-proto) -i https }"
    ) in text
    assert unsupported(RoutingTable(services=(spec("a:1", sticky=sticky),))) == []
    plain = render(RoutingTable(services=(spec("a:1"),)), ["0:80"], settings)
    assert "cookie" not in plain


def test_a_hold_is_a_lua_wait_only_while_the_table_asks_for_one() -> None:
    held = spec(hold=HoldSpec(timeout=2.5))
    text = render(RoutingTable(services=(held,)), ["127.0.0.1:8080"], SETTINGS)
    assert "lua-load /srv/zd/zerodown-hold.lua" in text
    lines = backend(text, "be_web")
    wait = "http-request lua.zerodown_hold be_web 2500 if { nbsrv(be_web) eq 0 } !{ stopping }"
    assert wait in lines
    assert any("X-Zerodown-Error hold_timeout" in line for line in lines)
    plain = render(RoutingTable(services=(spec("a:1"),)), ["127.0.0.1:8080"], SETTINGS)
    assert "lua" not in plain
    assert unsupported(RoutingTable(services=(held,))) == []
    page = spec(hold=HoldSpec(maintenance_html="<h1>soon</h1>"))
    assert "maintenance page" in unsupported(RoutingTable(services=(page,)))[0]


def test_the_latency_log_goes_through_a_ring_streamed_to_the_driver() -> None:
    log = LogTarget("tcp:127.0.0.1:5140", "ab12")
    text = render(RoutingTable(services=(spec("a:1"),)), ["127.0.0.1:8080"], SETTINGS, log)
    assert "    log ring@zerodown_log len 1024 local0 info\n" in text
    ring = text.split("\nring zerodown_log\n", 1)[1].split("\n\n", 1)[0]
    assert "    format raw" in ring
    assert "    server zerodown 127.0.0.1:5140" in ring
    assert 'log-format "ab12 %b %s %Tr %[res.cache_hit] %[var(txn.zd_refusal)]"' in text
    assert "log 127.0.0.1:5140" not in text
