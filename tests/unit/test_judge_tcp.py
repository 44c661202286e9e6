"""The canary judge on a tcp service (docs/tcp.md): a connection is its request,
and each data plane reports the same connections as the same counters.

The same 40 connections at one target -- 30 answered (1 ms connects), 6
dropped by the target before any answer, 2 whose connect failed for good,
2 whose connect failed and went on to another target -- as the embedded
proxy counts them (proxy/tcp.py's TargetMetrics calls), as HAProxy's
`show stat` has them, and as nginx's stream log lines say them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from zerodown.analysis import Sample, judge
from zerodown.config.strategy import CanaryConfig
from zerodown.dataplane.haproxy.runtime import StatRow
from zerodown.dataplane.haproxy.stats import target_stats
from zerodown.dataplane.nginx.accesslog import AccessCounters
from zerodown.dataplane.nginx.render import render as render_nginx
from zerodown.dataplane.nginx.settings import NginxSettings
from zerodown.dataplane.nginx.streamlog import StreamCounters
from zerodown.proxy.metrics import TargetMetrics
from zerodown.routing import PoolSpec, ServiceSpec, TargetSpec
from zerodown.stats import sum_counters

ANSWERED, DROPPED, FAILED, RETRIED = 30, 6, 2, 2
CONNECTIONS = ANSWERED + DROPPED + FAILED + RETRIED
ERRORS = DROPPED + FAILED + RETRIED
TARGET = "127.0.0.1:9001"
OTHER = "127.0.0.1:9002"
KEY = "abc123"
# As the e2e tests' canary table: effects that matter here are large.
CRITERIA = replace(CanaryConfig().criteria(), min_requests=20, min_error_increase=0.1)


def embedded() -> TargetMetrics:
    """The calls proxy/tcp.py makes for these connections."""
    metrics = TargetMetrics()
    for _ in range(CONNECTIONS):
        metrics.request()  # every connect
    for _ in range(ANSWERED):
        metrics.response(200, 0.001)  # the target's first byte: the connect time
    for _ in range(DROPPED):
        metrics.fail("reset")  # closed or reset before a byte, the client having spoken
    for _ in range(FAILED):
        metrics.fail("connect")  # the last target tried
    for _ in range(RETRIED):
        metrics.retry()  # another target tried next
    return metrics


def haproxy_row(open_now: int = 0) -> StatRow:
    """`show stat` after these connections (as tests/integration/test_tcp_outcomes
    shows HAProxy 2.6 count them): stot every one, econ the failed for good,
    eresp the aborted by the server, wredis the sent on to another server."""
    return StatRow(
        backend="be_db",
        name="s1",
        status="UP",
        weight=1,
        queued=0,
        sessions=open_now,
        total=CONNECTIONS + open_now,
        responses=(0, 0, 0, 0, 0),
        connect_errors=FAILED,
        response_errors=DROPPED,
        retries=0,
        redispatches=RETRIED,
        down_transitions=0,
        response_ms=0,
        response_max_ms=0,
        total_ms=0,
    )


def nginx_lines() -> bytes:
    """The stream log: key, service, addresses, status, connect times,
    bytes from the target(s), bytes from the client."""
    lines = [f"{KEY}\tdb\t{TARGET}\t200\t0.001\t9\t3"] * ANSWERED
    lines += [f"{KEY}\tdb\t{TARGET}\t200\t0.000\t0\t3"] * DROPPED
    lines += [f"{KEY}\tdb\t{TARGET}\t502\t-\t0\t3"] * FAILED
    lines += [f"{KEY}\tdb\t{TARGET}, {OTHER}\t200\t-, 0.001\t0, 9\t3"] * RETRIED
    return "\n".join(lines).encode() + b"\n"


def nginx() -> AccessCounters:
    counters = AccessCounters(key=KEY)
    StreamCounters(counters).feed_lines(nginx_lines())
    return counters


def test_every_data_plane_reports_the_same_connections_as_the_same_sample() -> None:
    spec = TargetSpec(address=TARGET)
    samples = {
        "embedded": Sample.from_pool(embedded().snapshot()),
        "haproxy": Sample.from_pool(target_stats(spec, haproxy_row(), tcp=True).counters()),
        "nginx": Sample.from_pool(nginx().metrics("db", TARGET).snapshot()),
    }
    for name, sample in samples.items():
        assert (sample.requests, sample.errors) == (CONNECTIONS, ERRORS), name
    # Connect times are the latency where a histogram exists (not HAProxy's show stat).
    assert samples["embedded"].buckets == samples["nginx"].buckets
    assert samples["haproxy"].buckets == ()


def test_nginx_counts_the_retried_connection_where_it_was_answered() -> None:
    other = nginx().metrics("db", OTHER).snapshot()
    assert (other.requests, other.responses["2xx"]) == (RETRIED, RETRIED)
    assert Sample.from_pool(other).errors == 0


def test_an_open_haproxy_connection_has_no_outcome_yet() -> None:
    entry = target_stats(TargetSpec(address=TARGET), haproxy_row(open_now=3), tcp=True)
    assert entry.in_flight == 3
    assert entry.responses["2xx"] == ANSWERED
    assert Sample.from_pool(entry.counters()).requests == CONNECTIONS


def test_an_http_server_row_is_read_as_before() -> None:
    entry = target_stats(TargetSpec(address=TARGET), haproxy_row())
    assert entry.responses["2xx"] == 0  # no hrsp_2xx in the row
    assert entry.failures["protocol"] == DROPPED  # eresp: a response error in HTTP


def test_nginx_a_silent_client_and_a_closing_target_is_an_answer() -> None:
    # Nothing from the client, nothing from the target: nobody was dropped.
    counters = AccessCounters(key=KEY)
    StreamCounters(counters).feed_lines(f"{KEY}\tdb\t{TARGET}\t200\t0.000\t0\t0\n".encode())
    sample = Sample.from_pool(counters.metrics("db", TARGET).snapshot())
    assert (sample.requests, sample.errors) == (1, 0)


def test_nginx_a_refused_client_is_denied_and_foreign_lines_are_ignored() -> None:
    counters = AccessCounters(key=KEY)
    stream = StreamCounters(counters)
    stream.feed_lines(
        f"{KEY}\tdb\t-\t403\t-\t0\t0\nother\tdb\t{TARGET}\t200\t0.001\t1\t1\nnot a line\n".encode()
    )
    assert counters.refused == {"db": {"denied": 1}}
    assert counters.targets == {}
    assert (stream.lines, stream.foreign) == (1, 2)


def test_a_connection_cut_at_a_drain_deadline_is_not_an_error() -> None:
    metrics = TargetMetrics()
    metrics.request()
    metrics.fail("cancelled")  # proxy/tcp.py Pipe.cut before any answer
    sample = Sample.from_pool(metrics.snapshot())
    assert (sample.requests, sample.errors) == (0, 0)


def test_a_canary_that_drops_connections_fails_and_a_clean_one_passes() -> None:
    stable = TargetMetrics()
    for _ in range(100):
        stable.request()
        stable.response(200, 0.001)
    dropping = Sample.from_pool(embedded().snapshot())
    stable_sample = Sample.from_pool(stable.snapshot())
    failed = judge(dropping, stable_sample, CRITERIA)
    assert failed.verdict == "fail", failed.reason
    assert "error rate 25.00% (10/40) on canary" in failed.reason
    clean = judge(Sample.from_pool(sum_counters([stable.snapshot()])), stable_sample, CRITERIA)
    assert clean.verdict == "pass", clean.reason


def test_nginx_renders_the_stream_log_and_names_each_service(tmp_path: Path) -> None:
    spec = ServiceSpec(
        name="db",
        mode="tcp",
        listen="127.0.0.1:6432",
        stable=PoolSpec(targets=(TargetSpec(address=TARGET),)),
    )
    text = render_nginx([spec], ["127.0.0.1:8080"], NginxSettings(tmp_path), 1)
    stream = text.split("\nstream {\n")[1]
    assert "log_format zerodown_tcp '\t$zd_tcp_svc\t$upstream_addr\t$status\t" in stream
    assert f"access_log {tmp_path / 'stream.log'} zerodown_tcp buffer=64k flush=250ms;" in stream
    assert "set $zd_tcp_svc db;" in stream
