"""HAProxy's per-request log lines -> latency histograms -> Stats buckets: pure."""

from __future__ import annotations

from zerodown.dataplane.haproxy.latency import LatencyLog
from zerodown.dataplane.haproxy.runtime import parse_stat
from zerodown.dataplane.haproxy.stats import build_stats
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

KEY = "ab12"
HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
    "wretr,wredis,status,weight,act,bck,chkfail,chkdown,type,hrsp_1xx,hrsp_2xx,hrsp_3xx,"
    "hrsp_4xx,hrsp_5xx,rtime,ttime,rtime_max\n"
)
STAT = HEADER + (
    "be_web,t_a:1,0,0,0,2,,3,0,0,,0,,0,0,0,0,UP,256,1,0,0,0,2,0,3,0,0,0,4,5,90\n"
    "be_web,t_b:1,0,0,0,2,,2,0,0,,0,,0,0,0,0,UP,256,1,0,0,0,2,0,2,0,0,0,7,8,20\n"
)


def line(server: str, took: str, key: str = KEY) -> bytes:
    return f"<134>Dec  4 16:00:00 haproxy[7]: {key} be_web {server} {took}\n".encode()


def test_each_keyed_line_goes_into_its_servers_bucket() -> None:
    log = LatencyLog(key=KEY)
    for took in ("3", "3", "40"):
        log.feed(line("t_a:1", took))
    log.feed(line("t_a:1", "-1"))  # no response: no latency
    log.feed(line("t_a:1", "1", key="forged"))
    log.feed(b"<134>haproxy[7]: Connect from 127.0.0.1 to 127.0.0.1:8080")
    log.feed(b"<134>haproxy[7]: " + KEY.encode())
    histogram = log.servers[("be_web", "t_a:1")]
    assert (histogram.count, log.lines, log.foreign) == (3, 4, 3)
    assert histogram.snapshot().buckets["0.005"] == 2
    assert histogram.snapshot().buckets["0.05"] == 3
    log.forget_all_but(set())
    assert log.servers == {}


def test_stats_take_buckets_from_the_log_and_pools_add_them() -> None:
    log = LatencyLog(key=KEY)
    for server, took in (("t_a:1", "3"), ("t_a:1", "3"), ("t_a:1", "40"), ("t_b:1", "7")):
        log.feed(line(server, took))
    targets = (TargetSpec(address="a:1"), TargetSpec(address="b:1"), TargetSpec(address="c:1"))
    spec = ServiceSpec(name="web", stable=PoolSpec(targets=targets))
    stats = build_stats(RoutingTable(services=(spec,)), parse_stat(STAT), 0, log.servers)
    pool = stats.services["web"].pools["stable"]
    a = pool.targets["a:1"].latency
    assert (a.count, a.buckets["0.005"], a.buckets["+Inf"]) == (3, 2, 3)
    assert pool.targets["a:1"].requests == 3  # counts stay show stat's
    assert pool.totals.latency.count == 4
    assert pool.totals.latency.buckets["0.01"] == 3
    assert pool.totals.latency.buckets["+Inf"] == 4
    assert pool.targets["c:1"].latency.buckets == {}  # nothing logged, not in show stat


def test_streamed_lines_count_as_many_times_as_they_repeat() -> None:
    log = LatencyLog(key=KEY)
    chunk = b"ab12 be_web t_a:1 3\n" * 300 + b"ab12 be_web t_a:1 40\nab12 be_web t_a:1 -1\n"
    log.feed_lines(chunk + b"forged be_web t_a:1 1\n" * 2 + b"ab12 be_web\n")
    histogram = log.servers[("be_web", "t_a:1")]
    assert (histogram.count, log.lines, log.foreign) == (301, 302, 3)
    assert histogram.snapshot().buckets["0.005"] == 300
    assert histogram.snapshot().buckets["0.05"] == 301
    assert abs(histogram.sum - 0.94) < 1e-9
