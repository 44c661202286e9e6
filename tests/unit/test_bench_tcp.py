"""The bench's TCP row and step selection: the load client's result lines, their
sum over processes, the latency histogram, the table, BENCH_STEPS. Pure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from zdbench import https, tcp
from zdbench.model import Variant
from zdbench.plan import STEPS, plan_from_env
from zdbench.report import Report, to_markdown
from zdbench.tcpstats import (
    BULK,
    CONNECTIONS,
    GROWTH,
    ROUND_TRIPS,
    TcpLoad,
    TcpLoadError,
    TcpRun,
    bucket,
    combine,
    parse_line,
    percentile,
    split,
    tcp_table,
    to_line,
)

X = "\N{MULTIPLICATION SIGN}"


def test_a_latency_is_read_back_from_its_bucket_within_the_bucket_width() -> None:
    for us in (1.5, 87.0, 1000.0, 2_500_000.0):
        back = percentile({bucket(us): 1}, 50)
        assert back is not None
        assert us / GROWTH**0.5 <= back <= us * GROWTH**0.5
    assert bucket(0.2) == 0


def test_percentiles_count_ranks_over_the_buckets() -> None:
    hist = {bucket(100.0): 98, bucket(5000.0): 2}
    p50, p99, p100 = (percentile(hist, q) for q in (50, 99, 100))
    assert p50 is not None
    assert 95 < p50 < 105
    assert p99 is not None
    assert 4800 < p99 < 5200
    assert p100 == p99
    assert percentile({}, 99) is None


def test_a_result_line_round_trips_and_the_last_one_wins() -> None:
    load = TcpLoad(ROUND_TRIPS, 25, 3.0, 30_000, errors=1, timeouts=2, hist={100: 7, 140: 3})
    text = "warming up\n" + to_line(TcpLoad(BULK, 1, 1.0, 0)) + "\n" + to_line(load) + "\n"
    assert parse_line(text) == load
    assert load.rate == 10_000.0


def test_output_without_a_result_line_is_an_error_naming_what_it_saw() -> None:
    with pytest.raises(TcpLoadError, match=r"no result line.*Traceback"):
        parse_line("Traceback (most recent call last):\n  boom\n")
    with pytest.raises(TcpLoadError, match="malformed"):
        parse_line('{"kind": "bulk", "conns": "many"}')


def test_processes_add_up_counts_and_histograms_over_the_longest_time() -> None:
    a = TcpLoad(CONNECTIONS, 25, 3.0, 3000, errors=1, hist={10: 2, 11: 1})
    b = TcpLoad(CONNECTIONS, 25, 3.1, 3200, timeouts=4, hist={11: 5})
    both = combine([a, b])
    assert (both.conns, both.seconds, both.count) == (50, 3.1, 6200)
    assert (both.errors, both.timeouts, dict(both.hist)) == (1, 4, {10: 2, 11: 6})
    with pytest.raises(TcpLoadError):
        combine([a, TcpLoad(BULK, 1, 1.0, 0)])
    with pytest.raises(TcpLoadError):
        combine([])


def test_connections_split_evenly_over_the_processes_none_empty() -> None:
    assert split(1000, 2) == [500, 500]
    assert split(5, 2) == [3, 2]
    assert split(1, 2) == [1]


def test_each_proxy_gets_a_round_trip_run_per_concurrency_then_connections_and_bulk() -> None:
    assert tcp.loads((50, 200)) == [
        (ROUND_TRIPS, 50),
        (ROUND_TRIPS, 200),
        (CONNECTIONS, 50),
        (BULK, tcp.BULK_CONNS),
    ]
    labels = {v.label for v in tcp.VARIANTS} | {v.label for v in https.VARIANTS}
    assert labels == {
        "zerodown 1 worker",
        "zerodown (haproxy) 1 thread",
        "zerodown (nginx) 1 worker",
        "nginx 1 worker",
        "haproxy 1 thread",
    }


def test_the_no_proxy_ceiling_comes_first_and_compares_with_nginx_too() -> None:
    ceiling = TcpRun(None, TcpLoad(CONNECTIONS, 50, 2.0, 12_000), None)
    lines = tcp_table([run("nginx", TcpLoad(CONNECTIONS, 50, 2.0, 6000)), ceiling])
    assert "| no proxy (client straight to the echoes) | 6,000 conns/s |" in lines[2]
    assert lines[2].endswith(f"| — | 2.00{X} |")
    assert "| nginx 1 worker |" in lines[3]


def run(proxy: str, load: TcpLoad) -> TcpRun:
    return TcpRun(Variant(proxy, 1), load, 12.5)


def test_the_tcp_table_compares_each_load_with_nginx_in_the_same_load() -> None:
    hist = {bucket(1000.0): 99, bucket(8000.0): 1}
    runs = [
        run("haproxy", TcpLoad(BULK, 4, 2.0, 0, bytes=800_000_000)),
        run("nginx", TcpLoad(BULK, 4, 2.0, 0, bytes=1_000_000_000)),
        run("zerodown", TcpLoad(ROUND_TRIPS, 50, 2.0, 10_000, hist=hist)),
        run("nginx", TcpLoad(ROUND_TRIPS, 50, 2.0, 40_000, hist=hist)),
    ]
    lines = tcp_table(runs)
    assert lines[0].startswith("| load | proxy | rate |")
    zerodown, nginx, bulk_nginx, bulk_haproxy = lines[2:]
    assert zerodown.startswith(
        "| 64 B round trips, 50 persistent conns | zerodown 1 worker | 5,000 round trips/s |"
    )
    assert zerodown.endswith(f"| 0 | 0 | 12.5 | 0.25{X} |")
    assert nginx.endswith(f"| 1.00{X} |")
    assert "| nginx 1 worker | 500 MB/s |" in bulk_nginx
    assert bulk_haproxy.endswith(f"| 0.80{X} |")


def test_the_report_has_a_tcp_section_only_when_the_row_ran() -> None:
    load = TcpLoad(CONNECTIONS, 50, 3.0, 900)
    report = Report("2026-12-04", "make bench", {}, {}, tcp=[run("nginx", load)])
    text = to_markdown(report)
    assert "## TCP: an echo service through each proxy" in text
    assert "| new connections (connect, 64 B echo, close), 50 at once | nginx 1 worker |" in text
    assert "## TCP" not in to_markdown(Report("2026-12-04", "make bench", {}, {}))


def test_bench_steps_selects_steps_and_names_a_wrong_one() -> None:
    assert plan_from_env({}).steps == STEPS
    plan = plan_from_env({"BENCH_QUICK": "1", "BENCH_STEPS": "https,tcp"})
    assert plan.steps == ("https", "tcp")
    assert 60 < plan.estimate_s() < plan_from_env({"BENCH_QUICK": "1"}).estimate_s()
    with pytest.raises(ValueError, match="BENCH_STEPS: 'udp' is not one of matrix"):
        plan_from_env({"BENCH_STEPS": "tcp,udp"})
