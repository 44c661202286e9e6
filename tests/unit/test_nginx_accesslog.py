"""nginx's JSON access-log datagrams -> per-target counters -> Stats. Pure."""

from __future__ import annotations

import json

from harness import service
from zerodown.analysis.judge import Sample
from zerodown.dataplane.nginx.accesslog import AccessCounters, Try, parse_line, tries
from zerodown.dataplane.nginx.report import build_stats
from zerodown.routing import RoutingTable, Split

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"


def datagram(
    addr: str, ustatus: str, urt: str, status: str = "200", svc: str = "zd_web", key: str = ""
) -> bytes:
    entry = {"k": key, "svc": svc, "addr": addr, "ustatus": ustatus, "urt": urt, "rt": "0.01"}
    body = json.dumps({**entry, "status": status, "msec": "1.0"})
    return b"<190>Dec  4 13:52:02 nginx: " + body.encode()


def test_a_syslog_datagram_yields_its_json_object() -> None:
    entry = parse_line(datagram(A, "200", "0.004"))
    assert entry is not None
    assert entry["addr"] == A
    assert parse_line(b"<190>Dec  4 nginx: not json") is None
    assert parse_line(b'<190>nginx: {"cut') is None


def test_one_try_per_upstream_address_the_last_one_answered() -> None:
    entry = parse_line(datagram(f"{A}, {B}", "502, 200", "0.001, 0.004"))
    assert entry is not None
    assert list(tries(entry)) == [
        Try("web", A, 502, 0.001, last=False),
        Try("web", B, 200, 0.004, last=True),
    ]


def test_an_internal_redirect_separates_groups_with_a_colon() -> None:
    entry = parse_line(datagram(f"{A} : {B}", "404 : 200", "0.001 : 0.002"))
    assert entry is not None
    assert [(t.address, t.status, t.last) for t in tries(entry)] == [
        (A, 404, False),
        (B, 200, True),
    ]


def test_counters_count_tries_retries_responses_and_latency() -> None:
    counters = AccessCounters()
    counters.feed(datagram(A, "200", "0.004"))
    counters.feed(datagram(f"{A}, {B}", "502, 200", "0.000, 0.030"))
    counters.feed(datagram(f"{B}, {A}", "504, 500", "1.000, 0.002", status="500"))
    a, b = counters.metrics("web", A).snapshot(), counters.metrics("web", B).snapshot()
    assert (a.requests, a.retries, a.failures["connect"]) == (3, 1, 0)
    assert a.responses["2xx"] == 1
    assert a.responses["5xx"] == 1
    assert (b.requests, b.retries, b.failures["timeout"]) == (2, 1, 0)
    assert b.responses["2xx"] == 1
    assert b.latency.count == 1
    assert b.latency.buckets["0.025"] == 0
    assert b.latency.buckets["0.05"] == 1


def test_a_request_nginx_answered_itself_counts_as_rejected() -> None:
    counters = AccessCounters()
    assert counters.feed(datagram("-", "-", "-", status="404", svc="")) == []
    counters.feed(datagram("", "", "", status="503", svc=""))
    counters.feed(b"garbage")
    assert counters.rejected == {"404": 1, "503": 1}
    assert counters.lines == 2


def test_stats_fill_pools_from_the_table_and_the_counts() -> None:
    table = RoutingTable(services=(service(A, B, canary=(C,), split=Split(canary_weight=10)),))
    counters = AccessCounters()
    for _ in range(3):
        counters.feed(datagram(A, "200", "0.002"))
    counters.feed(datagram(C, "500", "0.2", status="500"))
    stats = build_stats(table, counters, {("web", B)})
    web = stats.services["web"]
    assert web.canary_weight == 10.0
    stable, canary = web.pools["stable"], web.pools["canary"]
    assert stable.totals.requests == 3
    assert (stable.totals.targets, stable.totals.available) == (2, 1)
    assert stable.targets[B].health == "down"
    assert not stable.targets[B].serving
    assert stable.targets[B].requests == 0
    assert canary.totals.responses["5xx"] == 1
    assert canary.targets[C].latency.p50 > 0.1
    assert stats.rejected == {}


def test_lines_without_this_nginx_key_are_ignored() -> None:
    counters = AccessCounters(key="5eed")
    counters.feed(datagram(A, "500", "0.1", status="500"))  # forged: no key
    counters.feed(datagram(A, "500", "0.1", status="500", key="bad"))
    counters.feed(datagram(A, "200", "0.1", key="5eed"))
    assert counters.metrics("web", A).snapshot().responses == {
        "1xx": 0,
        "2xx": 1,
        "3xx": 0,
        "4xx": 0,
        "5xx": 0,
    }
    assert (counters.lines, counters.foreign) == (1, 2)


def file_line(addr: str, ustatus: str, urt: str, status: str = "200", key: str = "5eed") -> bytes:
    # render.FILE_LOG_FORMAT: nginx writes "-" for an unset variable.
    return "\t".join((key, "zd_web", addr, ustatus, urt, status, "-", "-")).encode() + b"\n"


def test_file_lines_count_as_many_times_as_they_repeat() -> None:
    counters = AccessCounters(key="5eed")
    chunk = file_line(A, "200", "0.002") * 500 + file_line(f"{A}, {B}", "502, 200", "0.000, 0.030")
    chunk += file_line(A, "200", "0.1", key="bad") * 3 + file_line("-", "-", "-", status="404")
    seen = counters.feed_lines(chunk + b"cut\tline")
    assert (counters.lines, counters.foreign) == (502, 4)  # the key, or not 8 fields
    assert {(t.address, t.status) for t in seen} == {(A, 200), (A, 502), (B, 200)}
    a, b = counters.metrics("web", A).snapshot(), counters.metrics("web", B).snapshot()
    assert (a.requests, a.retries, a.failures["connect"], a.responses["2xx"]) == (501, 1, 0, 500)
    assert (a.latency.count, a.latency.buckets["0.0025"]) == (500, 500)
    assert (b.requests, b.responses["2xx"], b.latency.count) == (1, 1, 1)
    assert counters.rejected == {"404": 1}
    assert counters.refused == {}


def test_a_try_retried_elsewhere_counts_once_as_a_retry_not_a_failure() -> None:
    # As the embedded proxy counts it (proxy/retrying.py: retry() on the
    # failed target when another is tried next; fail() only for the try the
    # client's error came from) and HAProxy (wretr + wredis; econ only for a
    # connect that failed for good): one error for the judge, not two.
    retried = [(f"{A}, {B}", "502, 200", "0.000, 0.004"), (f"{A}, {B}", "504, 200", "1.000, 0.004")]
    by_json = AccessCounters()
    for addr, ustatus, urt in retried:
        by_json.feed(datagram(addr, ustatus, urt))
    by_file = AccessCounters(key="5eed")
    by_file.feed_lines(b"".join(file_line(*fields) for fields in retried))
    for form, counters in (("JSON", by_json), ("file", by_file)):
        a, b = counters.metrics("web", A).snapshot(), counters.metrics("web", B).snapshot()
        said = f"{form} lines: the tries A failed and B answered"
        assert (a.requests, a.retries) == (2, 2), said
        assert a.failures == dict.fromkeys(a.failures, 0), f"{said}: a retry is no failure too"
        assert (sum(a.responses.values()), a.latency.count) == (0, 0), said
        assert (b.requests, b.retries, b.responses["2xx"], b.latency.count) == (2, 0, 2, 2), said
        assert sum(b.failures.values()) == 0, said
        assert Sample.from_pool(a).errors == 2, f"{said}: one error per retried try for the judge"
        assert Sample.from_pool(b).errors == 0, said


def test_a_last_try_that_failed_too_is_the_client_s_answer() -> None:
    # Every target refused: nginx answers 502 and logs it for the last try,
    # which the log cannot tell from the app's own 502 (no connect time).
    counters = AccessCounters()
    counters.feed(datagram(f"{A}, {B}", "502, 502", "0.000, 0.000", status="502"))
    counters.feed(datagram(A, "", "", status="499"))  # the client left before any status
    a, b = counters.metrics("web", A).snapshot(), counters.metrics("web", B).snapshot()
    assert (a.requests, a.retries, a.failures["other"], sum(a.responses.values())) == (2, 1, 1, 0)
    assert (b.requests, b.retries, b.responses["5xx"], sum(b.failures.values())) == (1, 0, 1, 0)
