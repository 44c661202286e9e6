"""Which requests a driven proxy reports to zerodown (dataplane/request_stats.py):
rendered into HAProxy's and nginx's configuration, and moved at run time. Pure."""

from __future__ import annotations

from pathlib import Path

from harness import service
from zerodown.dataplane.haproxy.counted import counted_map, map_moves, silence_rule
from zerodown.dataplane.haproxy.render import render as render_haproxy
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.nginx.accesslog import AccessCounters
from zerodown.dataplane.nginx.render import render as render_nginx
from zerodown.dataplane.nginx.report import build_stats
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.dataplane.request_stats import counted
from zerodown.routing import RoutingTable, Split

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"
MAP = Path("/srv/zd/haproxy-counted.map")
PLAIN = service(A, B)
CANARY = service(A, B, canary=(C,), split=Split(canary_weight=10))
QUIET = "access_log /srv/zd/access.log zerodown buffer=64k flush=250ms if=$zd_refused;"


def test_a_service_is_counted_while_it_has_a_canary_or_always() -> None:
    assert [counted(PLAIN, "canary"), counted(CANARY, "canary")] == [False, True]
    assert counted(PLAIN, "always")


def test_haproxy_silences_a_service_unless_the_map_names_it() -> None:
    assert silence_rule(PLAIN, "always", MAP) == []
    rule = silence_rule(PLAIN, "canary", MAP)
    assert rule == [f"http-request set-log-level silent unless {{ str(web),map({MAP}) -m found }}"]
    api = service(A, name="api", path="/api", canary=(C,), split=Split(canary_weight=5))
    table = RoutingTable(services=(PLAIN, api))
    assert counted_map(table, "canary") == "api 1\n"
    assert counted_map(table, "always") == "web 1\napi 1\n"


def test_haproxy_refusals_come_before_the_silence_so_they_are_logged() -> None:
    settings = HaproxySettings(state_dir=Path("/srv/zd"))
    guarded = service(A, guard={"deny": ("10.0.0.0/8",)})
    text = render_haproxy(RoutingTable(services=(guarded,)), ["127.0.0.1:8080"], settings)
    backend = text[text.index("backend be_web") :]
    assert backend.index("deny") < backend.index("set-log-level silent")


def test_haproxy_map_moves_add_before_a_canary_and_remove_after_it() -> None:
    before, after = RoutingTable(services=(PLAIN,)), RoutingTable(services=(CANARY,))
    assert map_moves(before, after, "canary", MAP) == ((f"add map {MAP} web 1",), ())
    assert map_moves(after, before, "canary", MAP) == ((), (f"del map {MAP} web",))
    assert map_moves(before, after, "always", MAP) == ((), ())
    assert map_moves(after, after, "canary", MAP) == ((), ())


def test_nginx_logs_only_refusals_of_a_service_not_counted() -> None:
    settings = NginxSettings(state_dir=Path("/srv/zd"))
    plain = render_nginx([PLAIN], ["127.0.0.1:8080"], settings, generation=1)
    assert plain.count(QUIET) == 1
    with_canary = render_nginx([CANARY], ["127.0.0.1:8080"], settings, generation=1)
    assert QUIET not in with_canary
    always = NginxSettings(state_dir=Path("/srv/zd"), request_stats="always")
    assert QUIET not in render_nginx([PLAIN], ["127.0.0.1:8080"], always, generation=1)


def test_nginx_stats_name_the_services_whose_counts_stand_still() -> None:
    api = service(A, name="api", path="/api", canary=(C,), split=Split(canary_weight=5))
    table = RoutingTable(services=(PLAIN, api))
    stats = build_stats(table, AccessCounters(), frozenset(), request_stats="canary")
    assert stats.not_counted == ["web"]
    always = build_stats(table, AccessCounters(), frozenset(), request_stats="always")
    assert always.not_counted == []
    assert "not_counted" not in always.model_dump(mode="json")
