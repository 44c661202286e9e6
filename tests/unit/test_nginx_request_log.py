"""nginx's access-log line with the refusal's rule and client and the cache
status (render.FILE_LOG_FORMAT), and the shorter line an nginx started by an
older zerodown still writes: refusals and cache counts per service. Pure."""

from __future__ import annotations

import json

from harness import service
from zerodown.cachespec import CacheSpec
from zerodown.dataplane.nginx.accesslog import AccessCounters
from zerodown.dataplane.nginx.report import build_stats
from zerodown.routing import RoutingTable

A = "127.0.0.1:9001"
KEY = "5eed"
Refusal = tuple[str, str, str, str, int]


def line(*fields: str) -> bytes:
    return "\t".join((KEY, *fields)).encode() + b"\n"


def served(cache: str) -> bytes:  # svc addr ustatus urt status zr zsvc rule zc cache
    return line("zd_web", A, "200", "0.002", "200", "-", "-", "-", "-", cache)


def hit() -> bytes:  # no upstream: the answer is the cache's
    return line("zd_web", "-", "-", "-", "200", "-", "-", "-", "-", "HIT")


def refused(kind: str, rule: str, client: str, status: str = "403") -> bytes:
    return line("-", "-", "-", "-", status, kind, "web", rule, client, "-")


def counters() -> tuple[AccessCounters, list[Refusal]]:
    seen: list[Refusal] = []

    def logged(service: str, kind: str, rule: str, client: str, times: int) -> None:
        seen.append((service, kind, rule, client, times))

    return AccessCounters(key=KEY, on_refusal=logged), seen


def test_hits_misses_and_refusals_with_their_rule_and_client() -> None:
    counted, seen = counters()
    chunk = served("MISS") * 2 + served("-") + served("BYPASS") + hit() * 5
    # nginx escapes a backslash (and any byte outside printable ASCII) as \xXX.
    chunk += refused("blocked", "block.paths ^/\\x5C.git", "10.1.2.3") * 2
    chunk += refused("blocked", "block.user_agents caf\\xC3\\xA9", "2001:db8::1")
    chunk += refused("denied", "deny 10.9.0.0/16", "10.9.0.5")
    chunk += refused("rate_limited", "rate_limit (4 at once, 10/s per address)", "10.0.0.9", "429")
    tries = counted.feed_lines(chunk)
    assert len(tries) == 3  # the distinct lines that reached the app (MISS, "-", BYPASS)
    assert counted.cache == {"web": [5, 4]}
    assert counted.rejected == {"403": 4, "429": 1}  # the refusals; no hit among them
    assert counted.refused == {"web": {"blocked": 3, "denied": 1, "rate_limited": 1}}
    assert sorted(seen) == [
        ("web", "blocked", "block.paths ^/\\.git", "10.1.2.3", 2),
        ("web", "blocked", "block.user_agents café", "2001:db8::1", 1),
        ("web", "denied", "deny 10.9.0.0/16", "10.9.0.5", 1),
        ("web", "rate_limited", "rate_limit (4 at once, 10/s per address)", "10.0.0.9", 1),
    ]
    cached = service(A, cache=CacheSpec())
    web = build_stats(RoutingTable(services=(cached,)), counted, ()).services["web"]
    assert (web.cache_hits, web.cache_misses, web.blocked) == (5, 4, 3)
    plain = build_stats(RoutingTable(services=(service(A),)), counted, ()).services["web"]
    assert (plain.cache_hits, plain.cache_misses) == (0, 0)  # no cache: none to count


def test_an_older_nginx_line_counts_as_before() -> None:
    counted, seen = counters()
    old = "\t".join((KEY, "-", "-", "-", "-", "403", "blocked", "web")).encode() + b"\n"
    counted.feed_lines(old + line("zd_web", A, "200", "0.002", "200", "-", "-") + b"\tcut\n")
    assert counted.refused == {"web": {"blocked": 1}}
    assert seen == []  # no rule in that line: nothing to say
    assert counted.cache == {}
    assert (counted.lines, counted.foreign) == (2, 1)


def test_a_json_datagram_carries_the_same() -> None:
    counted, seen = counters()
    entry = {"k": KEY, "svc": "", "addr": "", "status": "403", "zr": "blocked", "zsvc": "web"}
    entry |= {"rule": "block.paths ^/\\.git", "zc": "10.1.2.3", "cache": ""}
    counted.feed(b"<190>Dec  4 13:52:02 nginx: " + json.dumps(entry).encode())
    hit = {"k": KEY, "svc": "zd_web", "addr": "", "status": "200", "zr": "", "cache": "HIT"}
    counted.feed(b"<190>Dec  4 13:52:02 nginx: " + json.dumps(hit).encode())
    assert seen == [("web", "blocked", "block.paths ^/\\.git", "10.1.2.3", 1)]
    assert counted.cache == {"web": [1, 0]}
    assert counted.rejected == {"403": 1}
