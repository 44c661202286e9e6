"""The pure parts of allow/deny, block and rate_limit: no sockets, a fake clock."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from pydantic import ValidationError

from zerodown.config.load import parse_config
from zerodown.dataplane.counters import RetiredCounters
from zerodown.dataplane.merge import Tally, merge_worker_stats
from zerodown.errors import ConfigError
from zerodown.guardspec import BlockSpec, GuardSpec, RateLimitSpec
from zerodown.proxy import http
from zerodown.proxy.access import AccessList
from zerodown.proxy.filtering import BlockRules
from zerodown.proxy.guard import Guard, GuardCounters, Refusal
from zerodown.proxy.ratelimit import BUCKETS, WAYS, BucketTable, create_table_file, key_hash, refill
from zerodown.stats import ServiceStats, Stats


def head(method: bytes = b"GET", url: bytes = b"/", **headers: str) -> http.RequestHead:
    fields = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return http.RequestHead(method, url, b"1.1", fields, keep_alive=True)


# -- allow / deny ---------------------------------------------------------------------


def test_deny_wins_over_allow_and_allow_refuses_the_rest() -> None:
    access = AccessList(["10.0.0.0/8", "2001:db8::/32"], ["10.9.0.0/16"])
    assert access.refusal("10.1.2.3") is None
    assert access.refusal("2001:db8::1") is None
    assert access.refusal("10.9.8.7") == "deny 10.9.0.0/16"
    assert access.refusal("192.0.2.1") == "allow (not in 10.0.0.0/8, 2001:db8::/32)"
    assert access.refusal("::ffff:10.1.2.3") is None  # a v4 client on a dual-stack socket
    assert access.refusal("not-an-ip") == "allow (client address unknown)"


def test_deny_alone_lets_everyone_else_in() -> None:
    access = AccessList([], ["192.0.2.0/24"])
    assert access.refusal("192.0.2.9") == "deny 192.0.2.0/24"
    assert access.refusal("198.51.100.1") is None
    assert access.refusal("unix") is None
    assert AccessList([], []).empty


# -- block --------------------------------------------------------------------------


def test_block_rules_name_what_matched() -> None:
    rules = BlockRules(
        BlockSpec(paths=(r"^/\.git", r"\.php$"), methods=("TRACE",), user_agents=("sqlmap",))
    )
    assert rules.refusal(b"TRACE", b"/", None) == "block.methods TRACE"
    assert rules.refusal(b"GET", b"/.git/config", None) == r"block.paths ^/\.git"
    assert rules.refusal(b"GET", b"/%2Egit/config", None) == r"block.paths ^/\.git"
    assert rules.refusal(b"GET", b"/a.php?b=1", None) == r"block.paths \.php$"
    assert rules.refusal(b"GET", b"/a?b=.php", None) is None  # the query is not the path
    assert rules.refusal(b"GET", b"/", b"Mozilla sqlMAP") == "block.user_agents sqlmap"
    assert rules.refusal(b"GET", b"/ok", b"curl/8") is None


# -- the token bucket ---------------------------------------------------------------


def test_refill_is_capped_and_a_future_stamp_starts_afresh() -> None:
    assert refill(0.0, 10.0, 10.5, rate=2.0, capacity=5) == 1.0
    assert refill(4.0, 10.0, 20.0, rate=2.0, capacity=5) == 5.0
    assert refill(0.0, 99.0, 10.0, rate=2.0, capacity=5) == 5.0


def test_bucket_table_gives_capacity_then_one_per_period() -> None:
    table = BucketTable()
    now = 100.0
    waits = [table.take(b"k", now, rate=2.0, capacity=3) for _ in range(4)]
    assert waits == [0.0, 0.0, 0.0, 0.5]
    assert table.take(b"k", now + 0.25, 2.0, 3) == pytest.approx(0.25)
    assert table.take(b"k", now + 0.5, 2.0, 3) == 0.0
    assert table.take(b"other", now, 2.0, 3) == 0.0  # its own bucket
    table.close()


def test_bucket_table_evicts_the_least_recent_key_of_a_full_set() -> None:
    table = BucketTable()
    target = key_hash(b"k0") % BUCKETS
    same_set = (
        k for k in (b"k%d" % i for i in itertools.count()) if key_hash(k) % BUCKETS == target
    )
    keys = list(itertools.islice(same_set, WAYS + 1))
    for stamp, key in enumerate(keys[:WAYS]):
        assert table.take(key, float(stamp), rate=0.001, capacity=1) == 0.0
    assert table.take(keys[1], 20.0, 0.001, 1) > 0  # kept: its bucket is empty
    assert table.take(keys[WAYS], 30.0, 0.001, 1) == 0.0  # evicts keys[0], the oldest
    assert table.take(keys[0], 31.0, 0.001, 1) == 0.0  # forgotten: full again
    table.close()


def test_two_mappings_of_one_file_share_the_buckets(tmp_path: Path) -> None:
    path = create_table_file(str(tmp_path))
    first, second = BucketTable(path), BucketTable(path)
    assert first.take(b"k", 1.0, rate=1.0, capacity=2) == 0.0
    assert second.take(b"k", 1.0, rate=1.0, capacity=2) == 0.0
    assert first.take(b"k", 1.0, rate=1.0, capacity=2) == 1.0
    first.close()
    second.close()
    (tmp_path / "short").write_bytes(b"x")
    with pytest.raises(ValueError, match="is not"):
        BucketTable(str(tmp_path / "short"))


# -- the guard ------------------------------------------------------------------------


def test_guard_checks_address_then_block_then_rate_and_counts_each() -> None:
    spec = GuardSpec(
        deny=("192.0.2.0/24",),
        block=BlockSpec(methods=("TRACE",)),
        rate_limit=RateLimitSpec(requests=1, per=2.0),
    )
    counters = GuardCounters()
    guard = Guard("web", spec, counters, BucketTable(), clock=lambda: 5.0)
    denied = guard.check("192.0.2.1", head(), b"/")
    blocked = guard.check("10.0.0.1", head(b"TRACE"), b"/")
    assert guard.check("10.0.0.1", head(), b"/") is None  # the one token: not taken by those
    limited = guard.check("10.0.0.1", head(), b"/")
    assert isinstance(denied, Refusal)
    assert (denied.status, denied.kind) == (403, "denied")
    assert isinstance(blocked, Refusal)
    assert blocked.rule == "block.methods TRACE"
    assert isinstance(limited, Refusal)
    assert (limited.status, limited.retry_after) == (429, 2)
    assert counters.as_dict() == {"denied": 1, "blocked": 1, "rate_limited": 1}


def test_refusal_response_says_the_rule_and_what_to_do() -> None:
    refusal = Refusal("rate_limited", "rate_limit (2 at once)", status=429, retry_after=3)
    raw = refusal.response(b"rid", close=False, head_only=False)
    head_part, _, body = raw.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"\r\nRetry-After: 3\r\n" in head_part + b"\r\n"
    assert b"X-Zerodown-Error: rate_limited" in head_part
    assert body == (
        b"429 Too Many Requests: rate_limit (2 at once)\n"
        b"too many requests; retry after the number of seconds in Retry-After\n"
    )
    assert refusal.response(b"rid", close=True, head_only=True).endswith(b"\r\n\r\n")


def test_a_rate_limited_guard_without_a_table_is_refused() -> None:
    spec = GuardSpec(rate_limit=RateLimitSpec(requests=1, per=1.0))
    with pytest.raises(ValueError, match="no bucket table"):
        Guard("web", spec, GuardCounters(), None)


# -- specs and config ---------------------------------------------------------------------


def test_specs_refuse_what_cannot_work() -> None:
    with pytest.raises(ValidationError, match="host bits"):
        GuardSpec(allow=("10.0.0.1/8",))
    with pytest.raises(ValidationError, match="not ip or header:NAME"):
        RateLimitSpec(requests=1, per=1, key="cookie:x")
    with pytest.raises(ValidationError, match="not a regular expression"):
        BlockSpec(paths=("(",))
    assert GuardSpec(block=BlockSpec()).empty
    limit = RateLimitSpec(requests=100, per=1, burst=50)
    assert (limit.capacity, limit.rate, limit.retry_after) == (150, 100.0, 1)
    assert RateLimitSpec(requests=1, per=7.5).retry_after == 8


CONFIG = """
[services.web]
upstreams = ["127.0.0.1:9001"]
%s
"""


def test_config_keys_reach_the_routing_spec() -> None:
    config = parse_config(
        CONFIG
        % """allow = ["10.0.0.0/8"]
deny = ["10.9.0.0/16"]
rate_limit = { requests = 100, per = "1s", burst = 50, key = "header:X-Api-Key" }
block = { paths = ['^/\\.git'], methods = ["TRACE"], user_agents = ["sqlmap"] }"""
    )
    guard = config.services["web"].spec("web").guard
    assert guard is not None
    assert guard.allow == ("10.0.0.0/8",)
    assert guard.deny == ("10.9.0.0/16",)
    assert guard.rate_limit == RateLimitSpec(
        requests=100, per=1.0, burst=50, key="header:X-Api-Key"
    )
    assert guard.block == BlockSpec(
        paths=(r"^/\.git",), methods=("TRACE",), user_agents=("sqlmap",)
    )
    plain = parse_config(CONFIG % "")
    assert plain.services["web"].spec("web").guard is None


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        ('allow = ["10.0.0.1/8"]', "services.web.allow[0]: 10.0.0.1/8 has host bits set"),
        ('deny = ["nowhere"]', "services.web.deny[0]"),
        ('rate_limit = { requests = 0, per = "1s" }', "services.web.rate_limit.requests"),
        ('rate_limit = { requests = 1, per = "0s" }', "services.web.rate_limit.per"),
        ('rate_limit = { requests = 1, per = "1s", key = "ua" }', "is not ip or header:NAME"),
        ("block = { methods = ['get'] }", "services.web.block.methods: method 'get'"),
        ("block = { paths = ['('] }", "services.web.block.paths: '(' is not a regular"),
        ("block = { agents = ['x'] }", "did you mean 'user_agents'"),
    ],
)
def test_config_refuses_bad_rules_naming_the_key(keys: str, said: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_config(CONFIG % keys)
    assert said in str(caught.value)


# -- counters across workers --------------------------------------------------------------


def test_refusals_sum_over_workers_and_survive_a_dead_one() -> None:
    def stats(denied: int, limited: int) -> Stats:
        entry = ServiceStats(
            pools={}, canary_weight=0.0, panic=0, denied=denied, rate_limited=limited
        )
        return Stats(services={"web": entry}, connections=0, rejected={})

    retired = RetiredCounters()
    retired.add(Tally.of(stats(1, 5)))
    merged = merge_worker_stats(stats(0, 0), [Tally.of(stats(2, 3)), retired.tally()])
    web = merged.services["web"]
    assert (web.denied, web.blocked, web.rate_limited) == (3, 0, 8)
