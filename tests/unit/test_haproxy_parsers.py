"""Parsers of HAProxy 2.6's runtime API answers, and Stats built from them: pure."""

from __future__ import annotations

import pytest

from zerodown.dataplane.haproxy.runtime import (
    frontend_sessions,
    parse_proc,
    parse_servers_state,
    parse_stat,
    reply_error,
)
from zerodown.dataplane.haproxy.stats import build_stats
from zerodown.errors import DataPlaneError
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, Split, TargetSpec

# Captured from haproxy 2.6.12 (columns cut after srv_port's neighbours).
STATE_COLUMNS = (
    "be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
    "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
    "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
    "srv_fqdn srv_port srvrecord"
)
SERVERS_STATE = f"""1
# {STATE_COLUMNS}
3 be_web 1 t_127.0.0.1:9001 127.0.0.1 2 0 256 256 17 8 2 0 6 0 0 0 - 9001 -
3 be_web 4 x 127.0.0.1 2 8 3 3 3 1 0 0 0 0 0 0 - 9009 -
4 be_api 1 t_127.0.0.1:9004 127.0.0.1 0 5 0 0 8 1 0 0 14 0 0 0 - 9004 -

"""

HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
    "wretr,wredis,status,weight,act,bck,chkfail,chkdown,type,hrsp_1xx,hrsp_2xx,hrsp_3xx,"
    "hrsp_4xx,hrsp_5xx,rtime,ttime,rtime_max\n"
)
STAT = HEADER + (
    "fe_0,FRONTEND,,,3,5,,40,0,0,0,0,0,,,,,OPEN,,,,,,0,0,38,0,2,0,,,\n"
    "be_web,t_a:1,0,0,1,2,,30,0,0,,0,,1,2,3,0,UP,256,1,0,0,0,2,0,27,0,2,1,4,5,90\n"
    "be_web,t_c:1,0,0,0,1,,10,0,0,,0,,0,0,0,0,DOWN 1/2,28,1,0,3,1,2,0,10,0,0,0,12,13,40\n"
    "be_web,BACKEND,0,0,1,2,,40,0,0,0,0,,1,2,3,0,UP,284,2,0,,0,1,0,37,0,2,1,5,6,90\n"
)


def test_servers_state_reads_names_weights_and_admin_flags() -> None:
    rows = parse_servers_state(SERVERS_STATE)
    assert [(r.backend, r.name, r.port, r.weight) for r in rows] == [
        ("be_web", "t_127.0.0.1:9001", 9001, 256),
        ("be_web", "x", 9009, 3),
        ("be_api", "t_127.0.0.1:9004", 9004, 0),
    ]
    assert [(r.maint, r.drain) for r in rows] == [(False, False), (False, True), (True, False)]
    with pytest.raises(DataPlaneError, match="unknown format"):
        parse_servers_state("Unknown command\n")


def test_show_stat_keeps_server_lines_typed() -> None:
    rows = parse_stat(STAT)
    assert [(r.name, r.status, r.sessions, r.total, r.responses) for r in rows] == [
        ("t_a:1", "UP", 1, 30, (0, 27, 0, 2, 1)),
        ("t_c:1", "DOWN 1/2", 0, 10, (0, 10, 0, 0, 0)),
    ]
    assert (rows[0].connect_errors, rows[0].response_errors, rows[0].retries) == (1, 2, 3)
    assert (rows[0].response_ms, rows[0].response_max_ms) == (4, 90)
    assert frontend_sessions(STAT) == 3


def test_replies_say_success_or_what_haproxy_said() -> None:
    assert reply_error("set server a/b state drain", "\n") is None
    assert reply_error("set server a/x state drain", "No such server.\n") == "No such server."
    assert reply_error("add server a/b 1.2.3.4:5", "New server registered.\n") is None
    assert reply_error(
        "del server a/b", "Server still has connections attached to it, cannot remove it.\n"
    )
    assert reply_error("del server a/b", "Server deleted.\n") is None


def test_show_proc_tells_current_workers_from_old_ones() -> None:
    text = (
        "#<PID>          <type>          <reloads>       <uptime>        <version>\n"
        "30440           master          1 [failed: 1]   0d00h00m14s     2.6.12\n"
        "# workers\n"
        "30500           worker          0               0d00h00m01s     2.6.12\n"
        "# old workers\n"
        "30443           worker          1               0d00h00m14s     2.6.12\n"
        "# programs\n"
    )
    entries = parse_proc(text)
    assert [(e.pid, e.kind, e.old) for e in entries] == [
        (30440, "master", False),
        (30500, "worker", False),
        (30443, "worker", True),
    ]
    assert entries[0].failed == 1


def test_stats_put_servers_in_their_table_pools() -> None:
    service = ServiceSpec(
        name="web",
        stable=PoolSpec(targets=(TargetSpec(address="a:1", version="v1"),)),
        canary=PoolSpec(
            targets=(TargetSpec(address="c:1", version="v2"), TargetSpec(address="c:2"))
        ),
        split=Split(canary_weight=10),
    )
    stats = build_stats(RoutingTable(services=(service,)), parse_stat(STAT), 3)
    web = stats.services["web"]
    assert web.canary_weight == 10
    stable = web.pools["stable"].targets["a:1"]
    assert (stable.requests, stable.in_flight, stable.health, stable.available) == (
        30,
        1,
        "up",
        True,
    )
    assert stable.responses == {"1xx": 0, "2xx": 27, "3xx": 0, "4xx": 2, "5xx": 1}
    assert (stable.latency.p50, stable.latency.p99, stable.latency.buckets) == (0.004, 0.09, {})
    assert stable.failures["connect"] == 1
    assert stable.retries == 3  # wretr 3 + wredis 0
    canary = web.pools["canary"]
    assert canary.targets["c:1"].health == "down"
    assert canary.targets["c:2"].requests == 0  # not in HAProxy yet: counts nothing
    assert (canary.totals.requests, canary.totals.targets, canary.totals.available) == (10, 2, 0)
    assert canary.totals.latency.p50 == pytest.approx(0.012)
    assert stats.connections == 3
