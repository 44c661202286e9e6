"""The edge rules as HAProxy and nginx configuration text: the choices the
real-proxy tests cannot see one by one (quoting, deny winning in a geo,
windows and rates), pure."""

from __future__ import annotations

from typing import Any

from zerodown.dataplane.haproxy.guard import guard_lines, quoted, refusal_rules, window
from zerodown.dataplane.nginx.guard import guard_http, guard_location, guard_named, rate
from zerodown.guardspec import BlockSpec, GuardSpec, RateLimitSpec
from zerodown.routing import ServiceSpec


def spec(**guard: Any) -> ServiceSpec:
    return ServiceSpec(name="web-1", guard=GuardSpec(**guard) if guard else None)


def test_nothing_is_rendered_without_rules() -> None:
    assert guard_lines(spec(), ("10.0.0.0/8",)) == []
    assert guard_location(spec()) == []
    assert guard_named([spec()]) == []
    # Only what the log format names: the refusal's variables and its client.
    assert all(line.startswith(("geo $zd_", "map $zd_refused ")) for line in guard_http([spec()]))


def test_haproxy_quotes_a_pattern_as_written() -> None:
    assert quoted(r"\.php$") == r"'\.php$'"
    assert quoted("it's") == "'it'\\''s'"
    lines = guard_lines(spec(block=BlockSpec(paths=(r"\.php$",))), ())
    assert lines[0] == "http-request set-var(txn.zd_client) src"  # no trusted hop to walk
    assert "{ path -m reg '\\.php$' } || { path,url_dec -m reg '\\.php$' }" in lines[1]


def test_haproxy_walks_trusted_hops_and_checks_deny_before_allow() -> None:
    lines = guard_lines(spec(allow=("10.0.0.0/8",), deny=("10.9.0.0/16",)), ("192.0.2.0/24",))
    walk = [line for line in lines if "x-forwarded-for" in line]
    assert len(walk) == 3
    assert walk[0].endswith(
        "if { src -m ip 192.0.2.0/24 } { req.hdr_ip(x-forwarded-for,-1) -m found }"
    )
    marks = [line for line in lines if "set-var-fmt(txn.zd_refusal)" in line]
    assert marks[0] == (
        "http-request set-var-fmt(txn.zd_refusal) denied,0,%[var(txn.zd_client)] "
        "if { var(txn.zd_client) -m ip 10.9.0.0/16 }"
    )
    assert marks[1].endswith("unless { var(txn.zd_client) -m ip 10.0.0.0/8 }")
    # Each answer right after its mark: the first rule that matches answers.
    answers = [lines[lines.index(mark) + 1] for mark in marks]
    assert all(line.startswith("http-request return status 403 ") for line in answers)
    assert all(line.endswith(" if { var(txn.zd_refusal) -m found }") for line in answers)
    assert "403 Forbidden: deny 10.9.0.0/16" in answers[0]


def test_haproxy_window_carries_burst_and_rate() -> None:
    limit = RateLimitSpec(requests=100, per=1, burst=50)
    assert window(limit) == 1500  # 150 per 1.5 s: 150 at once, 100/s sustained
    lines = guard_lines(spec(rate_limit=limit), ())
    assert "stick-table type ip size 100k expire 3000ms store http_req_rate(1500ms)" in lines
    assert lines[-2].endswith("if { sc_http_req_rate(0) gt 150 }")
    assert "hdr Retry-After 1 " in lines[-1]


def test_haproxy_tracks_the_rate_after_the_other_refusals_and_numbers_every_rule() -> None:
    limit = RateLimitSpec(requests=3, per=1)
    web = spec(deny=("10.9.0.0/16",), block=BlockSpec(methods=("TRACE",)), rate_limit=limit)
    lines = guard_lines(web, ())
    # A request refused for its address or its method takes no part of the window.
    track = lines.index("http-request track-sc0 var(txn.zd_client)")
    assert track > max(i for i, line in enumerate(lines) if "blocked,1," in line)
    assert "rate_limited,2,%[var(txn.zd_client)]" in lines[track + 1]
    assert refusal_rules(web) == [
        ("denied", "deny 10.9.0.0/16"),
        ("blocked", "block.methods TRACE"),
        ("rate_limited", "rate_limit (3 at once, 3/s per address)"),
    ]
    assert refusal_rules(spec()) == []


def test_nginx_rates_are_whole_per_second_or_rounded_per_minute() -> None:
    assert rate(RateLimitSpec(requests=100, per=1)) == "100r/s"
    assert rate(RateLimitSpec(requests=10, per=60)) == "10r/m"
    assert rate(RateLimitSpec(requests=1, per=7)) == "9r/m"  # 8.57/min, rounded
    assert rate(RateLimitSpec(requests=1, per=3600)) == "1r/m"  # never 0


def test_nginx_geo_keeps_an_allowed_network_inside_a_denied_one_denied() -> None:
    (geo,) = [
        line
        for line in guard_http([spec(allow=("10.9.1.0/24", "10.0.0.0/8"), deny=("10.9.0.0/16",))])
        if line.startswith("geo $zd_access_")
    ]
    assert 'default "allow (not in 10.9.1.0/24, 10.0.0.0/8)";' in geo
    assert '10.9.1.0/24 "deny 10.9.0.0/16";' in geo
    assert '10.0.0.0/8 "";' in geo


def test_nginx_escapes_dollars_and_backslashes_in_rule_text() -> None:
    lines = guard_http([spec(block=BlockSpec(paths=(r"\.php$",)))])
    (paths,) = [line for line in lines if line.startswith("map $uri ")]
    assert '"~\\\\.php$" "block.paths \\\\.php${zd_dollar}";' in paths


def test_nginx_limit_req_burst_and_its_429_location() -> None:
    limit = RateLimitSpec(requests=3, per=0.3, burst=1, key="header:X-Api-Key")
    location = guard_location(spec(rate_limit=limit))
    assert location[0].startswith("limit_req zone=zd_rl_web_1_")
    assert "burst=3 nodelay;" in location[0]
    (named,) = guard_named([spec(rate_limit=limit)])
    assert "add_header Retry-After 1 always;" in named
    assert 'set $zd_svc "web-1";' in named
    http = guard_http([spec(rate_limit=limit)])
    assert any("map $http_x_api_key $zd_rk_web_1_" in line for line in http)
    assert any(line.endswith("rate=10r/s;") for line in http)


def test_nginx_limit_req_of_one_request_at_once_has_no_burst() -> None:
    """nginx refuses `burst=0`; no burst is the same bucket."""
    (first, *_) = guard_location(spec(rate_limit=RateLimitSpec(requests=1, per=1)))
    assert first.startswith("limit_req zone=zd_rl_web_1_")
    assert first.endswith(" nodelay;")
    assert "burst" not in first
