"""The pure parts of the benchmark suite (bench/zdbench): wrk's output, CPU
accounting from /proc lines, folding repetitions into rows, the issue's
targets, the markdown and JSON report, and the plan read from the
environment. No sockets, no processes, no clock.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from zdbench.model import (
    OWN_CORE,
    SHARED,
    Bursts,
    Idle,
    Run,
    Transfer,
    Variant,
    aggregate,
)
from zdbench.plan import order, plan_from_env
from zdbench.procfs import (
    busy_processes,
    cpu_us_per_request,
    descendants,
    parse_stat,
    parse_status_kb,
    ticks_delta,
    tree_ticks,
)
from zdbench.report import Report, fmt_bytes, matrix_table, to_json, to_markdown
from zdbench.targets import (
    FAIL,
    NOT_MEASURED,
    PASS,
    check_all,
    clean_reconnects,
    clean_under_load,
    idle_memory,
    p99_at_most,
    rps_at_least,
)
from zdbench.wrk import (
    SocketErrors,
    WrkOutputError,
    WrkResult,
    parse_size,
    parse_time_us,
    parse_wrk,
    wrk_command,
)

X = "\N{MULTIPLICATION SIGN}"  # as the report writes ratios
ZD1, ZD2 = Variant("zerodown", 1), Variant("zerodown", 2)
NG1, NG2 = Variant("nginx", 1), Variant("nginx", 2)
HA2 = Variant("haproxy", 2)

# As wrk 4.1 prints it (the 503 run of a real nginx, with a Socket errors line added).
WRK_ERRORS = """\
Running 2s test @ http://127.0.0.1:39111/
  2 threads and 2000 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.14ms   41.66ms 853.92ms   98.52%
    Req/Sec    16.35k     8.15k   38.82k    71.88%
  Latency Distribution
     50%  174.00us
     75%  286.00us
     90%  673.00us
     99%    1.17s
  52651 requests in 2.10s, 8.94MB read
  Socket errors: connect 3, read 5, write 7, timeout 11
  Non-2xx or 3xx responses: 52651
Requests/sec:  25123.14
Transfer/sec:      4.26MB
"""

WRK_CLEAN = """\
Running 2s test @ http://127.0.0.1:36953/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.74ms    3.06ms  21.44ms   72.16%
    Req/Sec     4.42k     1.50k    8.59k    72.50%
  Latency Distribution
     50%    5.31ms
     75%    7.27ms
     90%    9.77ms
     99%   15.34ms
  17650 requests in 2.01s, 2.52MB read
Requests/sec:   8777.87
Transfer/sec:      1.26MB
"""


def wrk(
    rps: float, p99_ms: float, *, errors: int = 0, timeouts: int = 0, p50_ms: float = 1.0
) -> WrkResult:
    return WrkResult(
        requests=int(rps * 10),
        duration_s=10.0,
        rps=rps,
        bytes_read=0,
        latency_us={50.0: p50_ms * 1000, 99.0: p99_ms * 1000},
        socket=SocketErrors(timeout=timeouts),
        non_2xx=errors,
    )


def run(
    variant: Variant,
    rps: float,
    p99_ms: float,
    *,
    mode: str = SHARED,
    conns: int = 50,
    rep: int = 0,
    errors: int = 0,
    timeouts: int = 0,
) -> Run:
    result = wrk(rps, p99_ms, errors=errors, timeouts=timeouts)
    return Run(mode, variant, conns, rep, result, cpu_us=20.0)


# -- wrk -------------------------------------------------------------------------------


def test_parse_clean_run() -> None:
    result = parse_wrk(WRK_CLEAN)
    assert result.requests == 17650
    assert result.duration_s == pytest.approx(2.01)
    assert result.rps == pytest.approx(8777.87)
    assert result.bytes_read == round(2.52 * (1 << 20))
    assert result.latency_us == pytest.approx({50.0: 5310, 75.0: 7270, 90.0: 9770, 99.0: 15340})
    assert result.p50_us == pytest.approx(5310)
    assert result.p99_us == pytest.approx(15340)
    assert result.socket == SocketErrors()
    assert result.non_2xx == 0
    assert result.errors == 0


def test_parse_error_lines_and_mixed_latency_units() -> None:
    result = parse_wrk(WRK_ERRORS)
    assert result.socket == SocketErrors(connect=3, read=5, write=7, timeout=11)
    assert result.non_2xx == 52651
    assert result.errors == 3 + 5 + 7 + 52651  # timeouts are counted apart
    assert result.p50_us == pytest.approx(174)
    assert result.p99_us == pytest.approx(1_170_000)


def test_a_run_that_answered_nothing_has_no_percentiles() -> None:
    text = WRK_CLEAN.replace(
        "17650 requests in 2.01s, 2.52MB read", "0 requests in 2.01s, 0.00B read"
    )
    assert parse_wrk(text).latency_us == {}
    assert parse_wrk(text).p99_us is None


def test_wrk_that_did_not_finish_is_an_error() -> None:
    with pytest.raises(WrkOutputError):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


@pytest.mark.parametrize(
    ("text", "us"),
    [("174.00us", 174), ("1.50ms", 1500), ("2.00s", 2_000_000), ("1.00m", 60_000_000)],
)
def test_time_units(text: str, us: float) -> None:
    assert parse_time_us(text) == pytest.approx(us)


@pytest.mark.parametrize(
    ("text", "size"), [("12.00B", 12), ("1.50KB", 1536), ("2.00MB", 2 << 20), ("1.00GB", 1 << 30)]
)
def test_size_units(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(WrkOutputError):
        parse_time_us("3.00fortnights")


def test_wrk_command_asks_for_the_distribution_and_never_more_threads_than_connections() -> None:
    argv = wrk_command("http://127.0.0.1:8080/", connections=1, threads=2, duration_s=10)
    assert argv == [
        "wrk",
        "-t1",
        "-c1",
        "-d10s",
        "--timeout=2s",
        "--latency",
        "http://127.0.0.1:8080/",
    ]


# -- CPU accounting ----------------------------------------------------------------------


def stat_line(pid: int, ppid: int, utime: int, stime: int, cutime: int = 0, cstime: int = 0) -> str:
    # Fields 3..13, then utime stime cutime cstime, then the rest; the name has ') (' in it.
    head = f"{pid} (nginx: worker) (x) S {ppid} {pid} {pid} 0 -1 4194624 100 0 0 0"
    return f"{head} {utime} {stime} {cutime} {cstime} 20 0 1 0 12345 1000 200"


def test_parse_stat_survives_a_command_name_with_spaces_and_parentheses() -> None:
    stat = parse_stat(stat_line(42, 7, utime=30, stime=12, cutime=5, cstime=1))
    assert (stat.pid, stat.ppid, stat.ticks) == (42, 7, 30 + 12 + 5 + 1)


def test_descendants_walks_the_whole_tree_and_nothing_else() -> None:
    parent_of = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1}
    assert sorted(descendants(10, parent_of)) == [10, 11, 12, 13]
    assert descendants(10, parent_of)[0] == 10


def test_tree_ticks_of_a_gone_root_is_empty() -> None:
    stats = {p: parse_stat(stat_line(p, 1, 1, 1)) for p in (5, 6)}
    assert tree_ticks(99, stats) == {}
    assert tree_ticks(5, stats) == {5: 2}


def test_a_worker_that_exits_between_samples_is_counted_once() -> None:
    before = {1: 100, 2: 40}  # master, worker
    after = {1: 100 + 5 + 70}  # worker died with 70 ticks, reaped into master's cutime
    assert ticks_delta(before, after) == 5 + 70 - 40


def test_a_worker_born_between_samples_counts_whole() -> None:
    assert ticks_delta({1: 10}, {1: 12, 3: 8}) == 10


def test_cpu_per_request() -> None:
    # 250 ticks at 100 Hz = 2.5 s of CPU over 100,000 requests = 25 µs each
    assert cpu_us_per_request(250, 100_000, clk_tck=100) == pytest.approx(25.0)
    assert cpu_us_per_request(250, 0, clk_tck=100) is None


def test_busy_processes_tell_one_worker_from_two() -> None:
    before = {1: 0, 2: 0, 3: 0}
    assert busy_processes(before, {1: 1, 2: 99, 3: 0}) == [2]
    assert busy_processes(before, {1: 1, 2: 55, 3: 44}) == [2, 3]
    assert busy_processes(before, before) == []


def test_status_lines() -> None:
    text = "Name:\tpython\nVmHWM:\t  81234 kB\nVmRSS:\t   61000 kB\n"
    assert parse_status_kb(text, "VmHWM") == 81234
    assert parse_status_kb(text, "VmRSS") == 61000
    assert parse_status_kb(text, "VmSwap") is None


# -- rows ----------------------------------------------------------------------------------


def test_rows_take_medians_of_rates_and_sum_errors() -> None:
    runs = [
        run(ZD1, 100, 10, rep=0, errors=1),
        run(ZD1, 300, 30, rep=1, timeouts=2),
        run(ZD1, 200, 20, rep=2),
        run(NG1, 400, 5),
    ]
    zd, ng = aggregate(runs)
    assert (zd.variant, zd.reps, zd.rps, zd.p99_us) == (ZD1, 3, 200, 20_000)
    assert (zd.errors, zd.timeouts) == (1, 2)
    assert ng.variant == NG1


def test_rows_are_ordered_by_mode_then_connections_then_workers() -> None:
    runs = [
        run(NG2, 1, 1, conns=200),
        run(ZD1, 1, 1, mode=OWN_CORE),
        run(NG1, 1, 1, conns=200),
        run(ZD1, 1, 1, conns=200),
        run(ZD1, 1, 1),
    ]
    keys = [(r.mode, r.conns, r.variant) for r in aggregate(runs)]
    assert keys == [
        (SHARED, 50, ZD1),
        (SHARED, 200, ZD1),
        (SHARED, 200, NG1),
        (SHARED, 200, NG2),
        (OWN_CORE, 50, ZD1),
    ]


# -- targets -------------------------------------------------------------------------------


def test_rps_target_passes_at_the_floor_and_fails_below() -> None:
    rows = aggregate([run(ZD1, 90, 1, mode=OWN_CORE), run(NG1, 100, 1, mode=OWN_CORE)])
    assert rps_at_least(rows, OWN_CORE, 1, 50, "nginx", 0.9).verdict == PASS
    assert rps_at_least(rows, OWN_CORE, 1, 50, "nginx", 0.91).verdict == FAIL
    assert rps_at_least(rows, OWN_CORE, 1, 50, "nginx", 0.9).measured == f"0.90{X}"


def test_p99_target() -> None:
    rows = aggregate([run(ZD1, 1, 12), run(NG1, 1, 10)])
    assert p99_at_most(rows, SHARED, 1, 50, "nginx", 1.2).verdict == PASS
    assert p99_at_most(rows, SHARED, 1, 50, "nginx", 1.1).verdict == FAIL


def test_a_missing_variant_is_not_measured_never_a_pass() -> None:
    rows = aggregate([run(NG2, 100, 1), run(HA2, 100, 1)])
    assert rps_at_least(rows, SHARED, 2, 50, "nginx", 0.9).verdict == NOT_MEASURED
    assert clean_under_load(rows, SHARED, 2, 50).verdict == NOT_MEASURED


def test_high_concurrency_target_needs_no_errors_no_timeouts_and_p99() -> None:
    def verdict(errors: int = 0, timeouts: int = 0, p99: float = 15) -> str:
        ours = run(ZD1, 1, p99, conns=1000, errors=errors, timeouts=timeouts)
        rows = aggregate([ours, run(NG1, 1, 10, conns=1000)])
        return clean_under_load(rows, SHARED, 1, 1000).verdict

    assert verdict() == PASS
    assert verdict(errors=1) == FAIL
    assert verdict(timeouts=1) == FAIL
    assert verdict(p99=16) == FAIL


def test_reconnect_target_uses_the_worst_burst() -> None:
    calm = Bursts(NG1, 1000, (wrk(1, 40), wrk(1, 50)))
    ok = Bursts(ZD1, 1000, (wrk(1, 60), wrk(1, 70)))
    stalled = Bursts(ZD1, 1000, (wrk(1, 60), wrk(1, 900)))
    assert clean_reconnects([calm, ok], 1).verdict == PASS
    assert clean_reconnects([calm, stalled], 1).verdict == FAIL
    assert clean_reconnects([calm, stalled], 1).measured == f"errors 0, timeouts 0, p99 18.00{X}"
    assert clean_reconnects([ok], 1).verdict == NOT_MEASURED


def test_idle_memory_per_connection() -> None:
    idle = Idle(
        10_000, 10_000, 10_000, rss_base_kb=50_000, rss_held_kb=150_000, rss_served_kb=190_000
    )
    assert idle.kb_per_conn == pytest.approx(14.0)  # the larger delta counts
    assert idle_memory(idle).verdict == PASS
    fat = Idle(10_000, 10_000, 10_000, 50_000, 300_000, 100_000)
    assert idle_memory(fat).verdict == FAIL
    unserved = Idle(10_000, 10_000, 9_999, 50_000, 60_000, 60_000)
    assert idle_memory(unserved).verdict == FAIL
    assert idle_memory(None).verdict == NOT_MEASURED


def test_check_all_lists_every_target_once() -> None:
    names = [c.target for c in check_all([], [], None, [50, 200, 1000])]
    assert len(names) == len(set(names)) == 3 + 2 * 3 + 3 + 2 + 1
    assert all(c.verdict == NOT_MEASURED for c in check_all([], [], None, [50]))


# -- report --------------------------------------------------------------------------------


def report() -> Report:
    return Report(
        date="2026-01-02",
        command="BENCH_QUICK=1 make bench",
        plan={"reps": 1, "duration_s": 3, "warmup_s": 1, "threads": 2},
        machine={"nproc": 2, "cpu_model": "Test CPU", "nginx": "1.22.1", "git": "abc1234"},
        runs=[
            run(ZD1, 9000, 12, mode=OWN_CORE),
            run(NG1, 10000, 10, mode=OWN_CORE),
            run(ZD1, 30000, 3),
            run(NG1, 30000, 3),
        ],
        bursts=[Bursts(ZD1, 1000, (wrk(5000, 80),)), Bursts(NG1, 1000, (wrk(6000, 100),))],
        idle=Idle(10_000, 10_000, 10_000, 50_000, 150_000, 160_000),
        transfers=[Transfer("download", 1 << 30, 1 << 30, 5.0, 200, 70_000, 50_000)],
        unavailable={"zerodown-2": "not available: behaves as 1 worker"},
        not_measured={"deploy under load": "skipped"},
    )


def test_matrix_table_shows_ratios_against_nginx_with_as_many_workers() -> None:
    rows = report().rows
    lines = matrix_table([r for r in rows if r.mode == OWN_CORE], rows)
    assert lines[0].startswith("| conns | proxy | req/s |")
    zd = next(line for line in lines if "zerodown" in line)
    cells = [c.strip() for c in zd.strip("|").split("|")]
    assert cells[:5] == ["50", "zerodown 1 worker", "9,000", "1.00 ms", "12.00 ms"]
    assert cells[-2:] == [f"0.90{X}", f"1.20{X}"]


def test_markdown_has_command_targets_modes_extras_and_what_was_not_measured() -> None:
    md = to_markdown(report())
    assert "`BENCH_QUICK=1 make bench`" in md
    assert (
        f"| own core · 1 worker · c=50: req/s ≥ 0.9 {X} nginx (1 worker) | 0.90{X} | ✅ pass |"
        in md
    )
    assert f"| own core · 1 worker · c=50: p99 ≤ 1.2 {X} nginx | 1.20{X} | ✅ pass |" in md
    assert "## shared (nothing pinned)" in md
    assert "## own core (proxy on CPU 0; wrk and backends on CPU 1)" in md
    assert "## 1,000 clients reconnecting at once" in md
    assert "| 10,000 / 10,000 | 10,000 |" in md
    assert "| download | 1 GiB | 1 GiB | 5.0 | 215 |" in md
    assert "- zerodown 2 workers: not available: behaves as 1 worker" in md
    assert "- deploy under load: skipped" in md
    assert "Test CPU" in md
    assert "abc1234" in md


def test_an_unavailable_variant_gets_a_row_and_its_targets_say_so() -> None:
    md = to_markdown(report())
    shared = md.split("## shared")[1].split("## own core")[0]
    own_core = md.split("## own core")[1].split("## 1,000 clients")[0]
    assert "| 50 | zerodown 2 workers | not available |" in shared
    assert "zerodown 2 workers" not in own_core  # own core compares one worker
    lines = shared.splitlines()
    assert lines.index(next(x for x in lines if "zerodown 2" in x)) > lines.index(
        next(x for x in lines if "nginx 1 worker" in x)
    )
    needs_two = [c for c in report().checks() if "2 workers" in c.target]
    assert needs_two
    assert all(c.measured == "zerodown 2 workers not available" for c in needs_two)
    assert all(c.verdict == NOT_MEASURED for c in needs_two)


def test_a_pipe_in_a_cell_does_not_break_the_table() -> None:
    r = Report("d", "c", {}, {}, not_measured={}, failures=[])
    md = to_markdown(r)
    assert md.startswith("# zerodown benchmark, d")
    from zdbench.report import _cells

    assert _cells("a|b") == "| a\\|b |"


def test_json_has_raw_runs_rows_and_targets() -> None:
    data = json.loads(to_json(report()))
    assert data["runs"][0]["wrk"]["latency_us"]["99.0"] == 12_000
    assert data["runs"][0]["variant"] == {"proxy": "zerodown", "workers": 1}
    assert {r["mode"] for r in data["rows"]} == {SHARED, OWN_CORE}
    assert any(t["verdict"] == PASS for t in data["targets"])
    assert data["machine"]["nproc"] == 2


def test_bytes_format() -> None:
    assert fmt_bytes(1 << 30) == "1 GiB"
    assert fmt_bytes(3 << 19) == "1.50 MiB"
    assert fmt_bytes(12) == "12 B"


# -- plan ----------------------------------------------------------------------------------


def test_default_and_quick_plans() -> None:
    full = plan_from_env({})
    assert (full.duration_s, full.warmup_s, full.reps, full.conns) == (10, 2, 2, (50, 200, 1000))
    # zerodown on each data plane (nginx by its table and by reloads), nginx, HAProxy; 1 and 2
    assert len(full.variants) == 12
    assert full.deploy_dataplanes == ("embedded", "haproxy", "nginx")
    assert full.estimate_s() < 36 * 60  # the HTTPS and TCP rows add about 7 min
    quick = plan_from_env({"BENCH_QUICK": "1"})
    assert (quick.duration_s, quick.reps) == (3, 1)
    assert quick.estimate_s() < 9 * 60  # deploys add about 20 s a data plane, HTTPS and TCP 3 min


def test_own_core_runs_only_one_worker_variants() -> None:
    plan = plan_from_env({})
    assert {v.workers for v in plan.variants_for(OWN_CORE)} == {1}
    assert len(plan.variants_for(SHARED)) == 12


def test_settings_from_the_environment() -> None:
    plan = plan_from_env(
        {"BENCH_CONNS": "10, 20", "BENCH_PROXIES": "zerodown-2,haproxy-1", "BENCH_REPS": "3"}
    )
    assert plan.conns == (10, 20)
    assert plan.variants == (ZD2, Variant("haproxy", 1))
    assert plan.reps == 3


@pytest.mark.parametrize(
    "env",
    [
        {"BENCH_CONNS": "50,x"},
        {"BENCH_CONNS": "0"},
        {"BENCH_PROXIES": "apache-1"},
        {"BENCH_MODES": "pinned"},
        {"BENCH_DURATION": "fast"},
        {"BENCH_REPS": "0"},
        {"BENCH_DEPLOY_DATAPLANES": "envoy"},
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(env))):
        plan_from_env(env)


def test_order_alternates_each_repetition() -> None:
    variants = (ZD1, NG1, Variant("haproxy", 1))
    assert order(variants, 0) == variants
    assert order(variants, 1) == variants[::-1]
    assert order(variants, 2) == variants


def test_zerodown_driving_a_proxy_is_a_variant_of_its_own_checked_against_the_plain_one() -> None:
    zh = Variant.parse("zerodown-haproxy-2")
    assert (zh.proxy, zh.workers, zh.dataplane) == ("zerodown-haproxy", 2, "haproxy")
    assert zh.label == "zerodown (haproxy) 2 threads"
    assert Variant.parse("zerodown-nginx-1").label == "zerodown (nginx) 1 worker"
    zn1 = Variant("zerodown-nginx", 1)
    rows = aggregate([run(zn1, 9600, 2), run(NG1, 10000, 2), run(zh, 9000, 2), run(HA2, 10000, 2)])
    checks = {c.target: c for c in check_all(rows, [], None, [50])}
    nginx = checks[f"shared · 1 worker · c=50: zerodown (nginx) 1 worker req/s ≥ 0.95 {X} nginx"]
    assert (nginx.measured, nginx.verdict) == (f"0.96{X}", PASS)
    name = f"shared · 2 workers · c=50: zerodown (haproxy) 2 threads req/s ≥ 0.95 {X} HAProxy"
    assert (checks[name].measured, checks[name].verdict) == (f"0.90{X}", FAIL)
