"""HAProxy's per-request log line, the six-word one and the four-word one an
HAProxy started by an older zerodown still writes: refusals and cache
counts per backend, into the service's stats. Pure."""

from __future__ import annotations

from zerodown.cachespec import CacheSpec
from zerodown.dataplane.haproxy.latency import LatencyLog
from zerodown.dataplane.haproxy.stats import build_stats
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, TargetSpec

KEY = "ab12"
Refusal = tuple[str, str, int, str, int]


def logged() -> tuple[LatencyLog, list[Refusal]]:
    seen: list[Refusal] = []

    def refused(backend: str, kind: str, index: int, client: str, times: int) -> None:
        seen.append((backend, kind, index, client, times))

    return LatencyLog(key=KEY, on_refusal=refused), seen


def test_new_lines_count_refusals_hits_and_misses_and_name_each_refusal() -> None:
    log, seen = logged()
    chunk = (
        b"ab12 be_web t_a:1 3 0 -\n" * 4  # misses, answered by the app
        + b"ab12 be_web <NOSRV> -1 1 -\n" * 3  # hits
        + b"ab12 be_web <NOSRV> -1 0 blocked,2,10.1.2.3\n" * 2
        + b"ab12 be_web <NOSRV> -1 0 denied,0,2001:db8::1\n"
        + b"ab12 be_web <NOSRV> -1 0 rate_limited,4,10.1.2.3\n"
        + b"ab12 be_web <NOSRV> -1 0 forged,9,x\n"  # not a kind guard.py writes
    )
    log.feed_lines(chunk)
    assert log.backends["be_web"] == {
        "cache_misses": 4,
        "cache_hits": 3,
        "blocked": 2,
        "denied": 1,
        "rate_limited": 1,
    }
    assert sorted(seen) == [
        ("be_web", "blocked", 2, "10.1.2.3", 2),  # one record per distinct line, with its count
        ("be_web", "denied", 0, "2001:db8::1", 1),
        ("be_web", "rate_limited", 4, "10.1.2.3", 1),
    ]
    assert (log.lines, log.foreign) == (12, 0)
    assert log.servers[("be_web", "t_a:1")].count == 4  # latency as before


def test_an_old_four_word_line_still_counts_its_latency_and_nothing_else() -> None:
    log, seen = logged()
    log.feed_lines(b"ab12 be_web t_a:1 3\nab12 be_web <NOSRV> -1\n")
    log.feed(b"<134>Dec  4 16:00:00 haproxy[7]: ab12 be_web t_a:1 40\n")
    log.feed(b"<134>Dec  4 16:00:00 haproxy[7]: ab12 be_web <NOSRV> -1 0 blocked,0,10.0.0.1\n")
    log.feed_lines(b"ab12 be_web t_a:1 3 0\nforged be_web t_a:1 3 0 -\n")  # 5 words; no key
    assert log.servers[("be_web", "t_a:1")].count == 2
    assert log.backends == {"be_web": {"blocked": 1}}
    assert seen == [("be_web", "blocked", 0, "10.0.0.1", 1)]
    assert (log.lines, log.foreign) == (4, 2)


def test_stats_report_cache_counts_for_a_cached_service_only() -> None:
    """Refusals from the log; cache hits and misses from show stat's
    cache_lookups and cache_hits (kept whether or not a request is logged)."""
    log, _ = logged()
    log.feed_lines(
        b"ab12 be_web t_a:1 3 0 -\nab12 be_web <NOSRV> -1 1 -\n"
        b"ab12 be_api t_a:1 3 0 -\nab12 be_api <NOSRV> -1 0 rate_limited,0,10.0.0.1\n"
    )
    pool = PoolSpec(targets=(TargetSpec(address="a:1"),))
    web = ServiceSpec(name="web", stable=pool, cache=CacheSpec())
    api = ServiceSpec(name="api", host="api.example", stable=pool)
    cache = {"be_web": (2, 1), "be_api": (5, 0)}  # backend -> (lookups, hits)
    table = RoutingTable(services=(web, api))
    stats = build_stats(table, [], 0, log.servers, log.backends, cache)
    counted = {
        name: (s.cache_hits, s.cache_misses, s.rate_limited) for name, s in stats.services.items()
    }
    assert counted == {"web": (1, 1, 0), "api": (0, 0, 1)}
