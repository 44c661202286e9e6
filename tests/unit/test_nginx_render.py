"""nginx.conf rendering from a RoutingTable: pure, no nginx (the integration
tests feed the same text to a real one)."""

from __future__ import annotations

from pathlib import Path

from harness import service
from zerodown.dataplane.nginx.render import (
    Server,
    in_panic,
    render,
    server_weights,
    unsupported,
)
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.proxy.sticky import token
from zerodown.routing import (
    CohortRule,
    HoldSpec,
    PassiveHealthSpec,
    PoolSpec,
    RoutingTable,
    ServiceSpec,
    Split,
    StickySpec,
    TargetSpec,
)

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"
SETTINGS = NginxSettings(state_dir=Path("/srv/zd"))


def conf(*services: ServiceSpec, **settings: object) -> str:
    chosen = NginxSettings(state_dir=Path("/srv/zd"), **settings)  # type: ignore[arg-type]
    return render(services, ["127.0.0.1:8080"], chosen, generation=7)


def server_block(text: str, name: str) -> str:
    """The body of the server block with this server_name."""
    start = text.index(f"server_name {name};")
    end = text.find("\n    server {", start)
    return text[start:end]


# -- weights ---------------------------------------------------------------------


def test_canary_split_becomes_integer_weights_in_one_upstream() -> None:
    spec = service(A, B, canary=(C,), split=Split(canary_weight=10))
    assert server_weights(spec) == [
        Server(A, 9, "stable"),
        Server(B, 9, "stable"),
        Server(C, 2, "canary"),
    ]


def test_target_weights_divide_their_pool_share() -> None:
    stable = PoolSpec(targets=(TargetSpec(address=A, weight=1), TargetSpec(address=B, weight=3)))
    spec = ServiceSpec(name="web", stable=stable)
    assert [s.weight for s in server_weights(spec)] == [1, 3]


def test_a_canary_at_zero_percent_is_listed_down() -> None:
    assert server_weights(service(A, canary=(B,))) == [
        Server(A, 1, "stable"),
        Server(B, None, "canary"),
    ]


def test_draining_down_and_weightless_targets_take_no_new_requests() -> None:
    targets = (
        TargetSpec(address=A),
        TargetSpec(address=B, state="draining"),
        TargetSpec(address=C, weight=0),
        TargetSpec(address="127.0.0.1:9004", state="down"),
    )
    spec = ServiceSpec(name="web", stable=PoolSpec(targets=targets))
    assert [s.weight for s in server_weights(spec)] == [1, None, None, None]


def test_health_takes_a_target_out_but_never_the_whole_pool() -> None:
    spec = service(A, B)
    assert [s.weight for s in server_weights(spec, frozenset({A}))] == [None, 1]
    # Panic: with every target failing its checks, all of them take traffic.
    assert [s.weight for s in server_weights(spec, frozenset({A, B}))] == [1, 1]


def test_the_canary_takes_everything_when_no_stable_target_can() -> None:
    spec = service(canary=(C,), split=Split(canary_weight=5))
    assert server_weights(spec) == [Server(C, 1, "canary")]


# -- the file -----------------------------------------------------------------------


def test_upstream_carries_weights_passive_health_and_keepalive() -> None:
    spec = service(A, canary=(B,), split=Split(canary_weight=25))
    text = conf(spec, keepalive=16)
    assert "upstream zd_web {" in text
    assert f"server {A} weight=3 max_fails=5 fail_timeout=10s;  # stable" in text
    assert f"server {B} weight=1 max_fails=5 fail_timeout=10s;  # canary" in text
    assert "keepalive 16;" in text
    assert "zone zd_web 64k;" in text


def test_passive_health_off_turns_max_fails_off_and_times_round_up() -> None:
    assert "max_fails=0" in conf(service(A, passive=None))
    slow = PassiveHealthSpec(consecutive_errors=2, base_ejection_time=2.5)
    assert f"server {A} weight=1 max_fails=2 fail_timeout=3s;" in conf(service(A, passive=slow))


def test_only_safe_retries_bounded_by_tries_and_time() -> None:
    text = conf(service(A, tries=2, retry_timeout=1.5))
    assert "proxy_next_upstream error timeout;" in text
    assert "non_idempotent" not in text
    assert "proxy_next_upstream_tries 2;" in text
    assert "proxy_next_upstream_timeout 1500ms;" in text


def test_hosts_get_server_blocks_and_paths_prefix_locations() -> None:
    text = conf(
        service(A, name="web"),
        service(B, name="api", path="/api", strip_prefix=True),
        service(C, name="admin", host="admin.test"),
    )
    admin, catch_all = server_block(text, "admin.test"), server_block(text, "_")
    assert "listen 127.0.0.1:8080 default_server;" in text
    # On a segment boundary: /api and /api/..., never /apix.
    assert "location = /api {" in text
    assert "location ^~ /api/ {" in text
    assert "rewrite ^/api/?(.*)$ /$1 break;" in text
    # admin.test's own "/" covers every path: "*"'s /api is out of its reach.
    assert "proxy_pass http://zd_admin;" in admin
    assert "zd_api" not in admin
    assert "zd_api" in catch_all


def test_a_host_falls_back_to_less_specific_hosts_for_paths_it_lacks() -> None:
    text = conf(
        service(A, name="any"),
        service(B, name="wild", host="*.example.test", path="/app"),
        service(C, name="exact", host="shop.example.test", path="/shop"),
    )
    block = server_block(text, "shop.example.test")
    assert "proxy_pass http://zd_exact;" in block
    assert "proxy_pass http://zd_wild;" in block
    assert "proxy_pass http://zd_any;" in block
    assert "return 404" not in block
    assert "zd_exact" not in server_block(text, "*.example.test")


def test_a_service_no_target_can_serve_answers_503_without_an_upstream() -> None:
    spec = ServiceSpec(name="web", stable=PoolSpec(targets=(TargetSpec(address=A, state="down"),)))
    text = conf(spec)
    quiet = "access_log /srv/zd/access.log zerodown buffer=64k flush=250ms if=$zd_refused;"
    assert f"location ^~ / {{\n            {quiet}\n            return 503;\n        }}" in (
        server_block(text, "_")
    )
    assert "upstream zd_web" not in text


def test_balance_algorithms_map_to_nginx_directives() -> None:
    assert "least_conn;" in conf(service(A, balance="least_conn"))
    assert "ip_hash;" in conf(service(A, balance="ip_hash"))
    assert "random two least_conn;" in conf(service(A, balance="random_two"))
    assert "hash $uri consistent;" in conf(service(A, balance="hash"))
    assert "hash $http_x_user consistent;" in conf(
        service(A, balance="hash", hash_key="header:X-User")
    )
    assert "hash $cookie_sid consistent;" in conf(service(A, balance="hash", hash_key="cookie:sid"))


def test_everything_lives_under_state_dir_and_the_generation_is_served() -> None:
    text = conf(service(A))
    assert "pid /srv/zd/nginx.pid;" in text
    assert "proxy_temp_path /srv/zd/temp/proxy;" in text
    assert "access_log /srv/zd/access.log zerodown buffer=64k flush=250ms;" in text
    assert "access_log syslog:server=unix:/srv/zd/access.sock,nohostname zerodown;" in conf(
        service(A), log_transport="unix"
    )
    assert "listen unix:/srv/zd/control.sock;" in text
    assert 'location = /zerodown/generation { return 200 "7"; }' in text
    assert "location = /zerodown/status { stub_status; }" in text
    assert "user " not in text
    assert "user www-data;" in conf(service(A), user="www-data")


def test_request_ids_forwarded_for_and_shutdown_bound() -> None:
    text = conf(service(A), worker_shutdown_timeout=45.0)
    assert "worker_shutdown_timeout 45000ms;" in text
    # Nobody is trusted by default: nginx's own variables, no map on the way.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text
    assert "proxy_set_header X-Forwarded-Host $http_host;" in text
    # Our own id, not $request_id (RAND_bytes per request): the generation,
    # the connection's serial and the request's number on it.
    ours = '"7-${connection}-${connection_requests}"'
    assert f"proxy_set_header X-Request-ID {ours};" in text
    assert f"add_header X-Request-ID {ours} always;" in text
    assert "$request_id" not in text
    prefixed = conf(service(A), request_id_prefix="0a1b2c3d")
    assert 'proxy_set_header X-Request-ID "0a1b2c3d-7-${connection}-${connection_requests}";' in (
        prefixed
    )
    assert "geo $realip_remote_addr $zd_trusted { default 0; }" in text  # for refusals, sticky
    trusted = conf(service(A), trusted_proxies=("10.0.0.0/8", "::1/128"))
    assert "geo $realip_remote_addr $zd_trusted { default 0; 10.0.0.0/8 1; ::1/128 1; }" in trusted
    assert "proxy_set_header X-Forwarded-For $zd_forwarded_for;" in trusted
    assert "proxy_set_header X-Forwarded-Host $zd_forwarded_host;" in trusted
    assert "proxy_set_header X-Request-ID $zd_request_id;" in trusted
    assert "add_header X-Request-ID $zd_request_id always;" in trusted
    assert f"map $zd_trusted $zd_request_id {{ default {ours}; 1 $zd_request_id_in; }}" in trusted


def test_extra_http_is_appended_verbatim() -> None:
    assert conf(service(A), extra_http="client_max_body_size 1m;").endswith(
        "    client_max_body_size 1m;\n}\n"
    )


def test_what_nginx_cannot_carry_is_named_by_key() -> None:
    assert unsupported(service(A)) == []
    cohort = CohortRule(header="X-Beta", values=("1",), pool="canary")
    spec = service(
        A,
        split=Split(cohorts=(cohort,), sticky_cookie="zd"),
        slow_start=5.0,
        hold=HoldSpec(maintenance_html="<h1>soon</h1>"),
        websocket_drain="close",
        balance="least_time",
    )
    assert [line.split(" ")[0] for line in unsupported(spec)] == [
        "services.web.split.cohorts",
        "services.web.split.sticky_cookie",
        "services.web.slow_start",
        "services.web.hold.maintenance_html",
        "services.web.websocket_drain",
        "services.web.balance",
    ]


def test_targets_come_again_as_panic_backups_where_nginx_allows_backups() -> None:
    text = conf(service(A, canary=(B,), split=Split(canary_weight=25)))
    assert f"server {A} weight=3 max_fails=0 backup;  # panic" in text
    assert f"server {B} weight=1 max_fails=0 backup;  # panic" in text
    assert "backup" not in conf(service(A, balance="hash"))
    assert "backup" not in conf(service(A, passive=None))  # nothing marks them failed
    assert f"{B} weight" not in conf(service(A, canary=(B,)))  # a canary at 0%: not even so


# -- sticky ---------------------------------------------------------------------


def test_sticky_maps_each_live_or_draining_target_to_its_own_upstream() -> None:
    targets = (
        TargetSpec(address=A),
        TargetSpec(address=B, state="draining"),
        TargetSpec(address=C, state="down"),
    )
    sticky = ServiceSpec(
        name="web", stable=PoolSpec(targets=targets), health=None, sticky=StickySpec(ttl=90)
    )
    key = "ab" * 32
    text = conf(sticky, sticky_key=key)
    a, b = (token(bytes.fromhex(key), "web", t) for t in (A, B))
    assert f"{a} zd_web.0;" in text
    assert f"{b} zd_web.1;" in text
    assert "zd_web.2" not in text  # down: its clients are balanced
    assert "default zd_web;" in text
    # The draining target's upstream falls back on the live one, never the reverse.
    upstream = f"upstream zd_web.1 {{\n        server {B} max_fails=0;\n"
    upstream += f"        server {A} max_fails=0 backup;"
    assert upstream in text
    assert f"upstream zd_web.0 {{\n        server {A} max_fails=0;\n        keepalive" in text
    assert "proxy_pass http://$zd_web_upstream;" in text
    assert "add_header Set-Cookie $zd_web_set_cookie;" in text
    assert "Max-Age=90; Path=/; HttpOnly; SameSite=Lax$zd_sticky_secure" in text
    assert "zd_sticky_secure" not in conf(service(A))
    assert unsupported(sticky) == []


def test_sticky_needs_a_cookie_name_nginx_can_read() -> None:
    spec = service(A, sticky=StickySpec(cookie="zd-route"))
    assert unsupported(spec) == [
        "services.web.sticky.cookie (nginx reads a cookie by name: letters, digits and '_' only)"
    ]


def test_a_hold_with_nothing_to_route_sends_to_the_drivers_hold_socket() -> None:
    held = conf(service(hold=HoldSpec(timeout=2.0), path="/api", strip_prefix=True))
    assert "server unix:/srv/zd/hold-web.sock max_fails=0;" in held
    assert "keepalive" not in held.split("upstream zd_web", 1)[1].split("}", 1)[0]
    assert "proxy_read_timeout 62000ms;" in held
    assert "rewrite ^/api/?(.*)$ /$1 break;" in held
    assert "return 503" not in held.split("location = /api", 1)[1].split("}", 1)[0]
    # With a ready target the hold changes nothing: the target takes the requests.
    routed = conf(service(A, hold=HoldSpec()))
    assert "hold-web.sock" not in routed
    assert f"server {A} weight=1" in routed


def test_targets_routed_only_because_their_whole_pool_is_out_are_in_panic() -> None:
    table = RoutingTable(services=(service(A, B, canary=(C,)),))
    assert in_panic(table, frozenset({("web", A)})) == frozenset()
    assert in_panic(table, frozenset({("web", A), ("web", B)})) == {("web", A), ("web", B)}
    assert in_panic(table, frozenset({("web", C)})) == {("web", C)}
