"""Balancers: pure pickers over Targets, driven with a fake clock and a seeded RNG.

Ideas ported from nginx-tests (upstream.t: weighted round robin ratios and a
down peer skipped; upstream_hash.t: consistent mapping and minimal remapping;
upstream_ip_hash.t: one /24 one backend) and HAProxy's balance-rr.vtc (equal
servers in strict rotation).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import get_args

import pytest

from zerodown.proxy.balancer import (
    BALANCERS,
    Balancer,
    Hash,
    IpHash,
    client_network,
    make_balancer,
    ring_points,
)
from zerodown.proxy.health import SLOW_START_FLOOR, TargetHealth
from zerodown.proxy.target import Target
from zerodown.routing import BalanceName, HealthSpec

ALL = sorted(BALANCERS)


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ready(address: str, weight: int = 1, health: TargetHealth | None = None) -> Target:
    target = Target(address, weight=weight, health=health)
    target.set_state("ready")
    return target


def pool(*weights: int) -> list[Target]:
    """Ready targets a:80, b:80, ... with the given weights."""
    return [ready(f"{chr(ord('a') + i)}:80", w) for i, w in enumerate(weights)]


def build(
    name: str, targets: list[Target], clock: Callable[[], float] | None = None, seed: int = 7
) -> Balancer:
    return make_balancer(name, targets, clock=clock or FakeClock(), rng=random.Random(seed))


def hosts(balancer: Balancer, n: int, key: str = "") -> str:
    """n picks as a string of target host letters: 'aabacaa'."""
    picked = (balancer.pick(key) for _ in range(n))
    return "".join(t.host if t is not None else "-" for t in picked)


def by_host(picks: Iterable[Target | None]) -> Counter[str]:
    return Counter(t.host if t is not None else "-" for t in picks)


def chi_square(observed: Counter[str], expected: dict[str, float]) -> float:
    return sum((observed[k] - e) ** 2 / e for k, e in expected.items())


def keys_of(n: int) -> list[str]:
    return [f"/user/{i}" for i in range(n)]


def mapping(balancer: Balancer, keys: Iterable[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        target = balancer.pick(key)
        assert target is not None
        out[key] = target.address
    return out


def eject(target: Target) -> None:
    target.health.eject(0.0)  # passive outlier ejection: health no longer serving


def returning(slow_start: float, at: float) -> TargetHealth:
    """Health of a target that was down and came back at `at` (slow start t0)."""
    health = TargetHealth(active=HealthSpec(rise=1, fall=1), slow_start=slow_start)
    health.on_check(False, at - 1)
    health.on_check(True, at)
    return health


# --- registry ---------------------------------------------------------------


def test_every_configurable_name_has_a_balancer() -> None:
    assert set(BALANCERS) == set(get_args(BalanceName))
    for name, cls in BALANCERS.items():
        assert cls.name == name
        assert isinstance(build(name, pool(1)), cls)


def test_unknown_name_is_a_value_error_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'fastest'") as info:
        make_balancer("fastest", pool(1))
    for name in ALL:
        assert name in str(info.value)


def test_repr_names_algorithm_and_targets() -> None:
    assert repr(build("least_conn", pool(1, 1))) == "<LeastConn ['a:80', 'b:80']>"


def test_default_clock_and_rng_work() -> None:
    for name in ALL:
        assert make_balancer(name, pool(1, 2)).pick("k") is not None


# --- what every algorithm must do -------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_no_targets_gives_none(name: str) -> None:
    assert build(name, []).pick("10.0.0.1") is None


@pytest.mark.parametrize("name", ALL)
def test_nothing_available_gives_none(name: str) -> None:
    a, b, c, d = pool(1, 1, 1, 0)
    a.set_state("down")
    b.set_state("draining")
    eject(c)
    balancer = build(name, [a, b, c, d, Target("e:80")])  # e still "adding"
    assert all(balancer.pick(f"10.0.{i}.1") is None for i in range(50))


@pytest.mark.parametrize("name", ALL)
def test_unavailable_targets_are_never_picked(name: str) -> None:
    targets = pool(1, 1, 1, 1, 0, 1)  # e: weight 0
    _, b, c, d, _, f = targets
    b.set_state("down")
    c.set_state("draining")
    eject(d)
    f.set_state("gone")
    balancer = build(name, targets)
    picks = [balancer.pick(f"10.{i % 250}.{i // 250}.9") for i in range(2000)]
    assert by_host(picks) == {"a": 2000}


@pytest.mark.parametrize("name", ALL)
def test_availability_is_read_live(name: str) -> None:
    a, b = targets = pool(1, 1)
    balancer = build(name, targets)
    keys = [f"10.{i}.0.1" for i in range(200)]
    a.set_state("down")
    assert {balancer.pick(k) for k in keys} == {b}
    a.set_state("ready")
    b.weight = 0  # set weight 0: HAProxy's soft stop
    assert {balancer.pick(k) for k in keys} == {a}


@pytest.mark.parametrize("name", ALL)
def test_exclude_sends_a_retry_elsewhere_until_none_is_left(name: str) -> None:
    targets = pool(1, 2, 3)
    balancer = build(name, targets)
    for i in range(100):
        tried: list[Target] = []
        for _ in targets:
            target = balancer.pick(f"192.168.{i}.1", exclude=tried)
            assert target is not None
            assert target not in tried
            tried.append(target)
        assert balancer.pick(f"192.168.{i}.1", exclude=tried) is None


@pytest.mark.parametrize("name", ALL)
def test_exclude_accepts_any_collection(name: str) -> None:
    a, b = targets = pool(1, 1)
    balancer = build(name, targets)
    for exclude in ([a], (a,), {a}, frozenset({a})):
        assert balancer.pick("k", exclude=exclude) is b


# --- round_robin ------------------------------------------------------------


def test_round_robin_is_smooth_for_5_1_1() -> None:
    # The example of nginx commit 52327e062: not a a a a a b c.
    assert hosts(build("round_robin", pool(5, 1, 1)), 14) == "aabacaa" * 2


def test_round_robin_equal_weights_rotate_strictly() -> None:
    # HAProxy balance-rr.vtc: four equal servers answer in turn.
    assert hosts(build("round_robin", pool(1, 1, 1, 1)), 12) == "abcd" * 3


@pytest.mark.parametrize("weights", [(3, 2, 1), (1, 1), (7, 3), (1, 10, 100), (2, 2, 5, 1)])
def test_round_robin_gives_exact_weight_ratios(weights: tuple[int, ...]) -> None:
    rounds = 50
    picks = hosts(build("round_robin", pool(*weights)), rounds * sum(weights))
    assert Counter(picks) == {chr(ord("a") + i): rounds * w for i, w in enumerate(weights)}


def test_round_robin_never_strays_more_than_one_pick_from_its_share() -> None:
    # What "smooth" means: after any k picks each target has had k*w/W picks,
    # give or take one. Plain weighted RR (a a a a a b c) is 1.4 off after 5.
    rng = random.Random(1)
    for _ in range(100):
        weights = [rng.randint(1, 20) for _ in range(rng.randint(2, 6))]
        total = sum(weights)
        picks = hosts(build("round_robin", pool(*weights)), 2 * total)
        for i, weight in enumerate(weights):
            host = chr(ord("a") + i)
            for k in range(1, len(picks) + 1):
                assert abs(picks[:k].count(host) - k * weight / total) <= 1


def test_round_robin_skips_a_down_target_and_keeps_rotating() -> None:
    # nginx upstream.t: a peer marked down gets nothing, the rest share.
    targets = pool(1, 1, 1)
    targets[1].set_state("down")
    assert hosts(build("round_robin", targets), 6) == "acacac"


def test_round_robin_respects_slow_start() -> None:
    clock = FakeClock(100.0)
    a = ready("a:80")
    b = ready("b:80", health=returning(slow_start=10.0, at=100.0))
    balancer = build("round_robin", [a, b], clock)
    # Just back: b runs at the floor share of its weight.
    for factor in (SLOW_START_FLOOR, (1 + SLOW_START_FLOOR) / 2):
        share = Counter(hosts(balancer, 10_000))
        assert abs(share["b"] - 10_000 * factor / (1 + factor)) <= 1
        clock.now += 5.0  # halfway through the ramp, then done
    assert Counter(hosts(balancer, 1000)) == {"a": 500, "b": 500}


def test_round_robin_reads_weight_live() -> None:
    targets = pool(1, 1)
    balancer = build("round_robin", targets)
    targets[0].weight = 3
    assert Counter(hosts(balancer, 400)) == {"a": 300, "b": 100}


# --- least_conn -------------------------------------------------------------


def test_least_conn_picks_fewest_in_flight() -> None:
    a, b, c = targets = pool(1, 1, 1)
    a.in_flight, b.in_flight, c.in_flight = 5, 0, 2
    assert build("least_conn", targets).pick("") is b


def test_least_conn_follows_in_flight_as_requests_start() -> None:
    a, b, c = targets = pool(1, 1, 1)
    a.in_flight, b.in_flight, c.in_flight = 5, 0, 2
    balancer = build("least_conn", targets)
    for _ in range(30):
        target = balancer.pick("")
        assert target is not None
        target.in_flight += 1
    assert sorted(t.in_flight for t in targets) == [12, 12, 13]


def test_least_conn_divides_by_weight() -> None:
    a, b = targets = pool(2, 1)
    balancer = build("least_conn", targets)
    for _ in range(30):
        target = balancer.pick("")
        assert target is not None
        target.in_flight += 1
    assert (a.in_flight, b.in_flight) == (20, 10)


def test_least_conn_ties_are_shared_not_always_the_first() -> None:
    # An idle pool is all ties: nginx shares them by weighted round robin.
    assert hosts(build("least_conn", pool(1, 1, 1)), 6) == "abcabc"
    assert Counter(hosts(build("least_conn", pool(3, 1)), 400)) == {"a": 300, "b": 100}


def test_least_conn_respects_slow_start() -> None:
    clock = FakeClock(100.0)
    a = ready("a:80")
    b = ready("b:80", health=returning(slow_start=10.0, at=100.0))
    a.in_flight = b.in_flight = 1
    # Same in_flight, but b counts as weight 0.1: 1/0.1 = 10 > 1/1.
    assert build("least_conn", [a, b], clock).pick("") is a


# --- ip_hash ----------------------------------------------------------------


def test_client_network_is_the_ipv4_slash_24_and_ipv6_slash_64() -> None:
    assert client_network("10.1.2.3") == "10.1.2"
    assert client_network("::ffff:10.1.2.3") == "10.1.2"
    assert client_network("::FFFF:10.1.2.3") == "10.1.2"
    assert client_network("2001:db8:1:2::1") == client_network("2001:db8:1:2:ffff::9")
    assert client_network("2001:db8:1:2::1") != client_network("2001:db8:1:3::1")
    assert client_network("not an ip:") == "not an ip:"


def test_ip_hash_sends_one_slash_24_to_one_target() -> None:
    # nginx upstream_ip_hash.t: clients of one /24 share a backend.
    balancer = build("ip_hash", pool(1, 1, 1))
    for net in range(100):
        chosen = {balancer.pick(f"10.{net}.7.{host}") for host in range(1, 255, 9)}
        assert len(chosen) == 1


def test_ip_hash_sends_one_slash_64_to_one_target() -> None:
    balancer = build("ip_hash", pool(1, 1, 1))
    for net in range(100):
        chosen = {balancer.pick(f"2001:db8:{net:x}:1::{host:x}") for host in range(1, 500, 37)}
        assert len(chosen) == 1


def test_ip_hash_treats_ipv4_mapped_addresses_as_ipv4() -> None:
    balancer = build("ip_hash", pool(1, 1, 1))
    for net in range(50):
        assert balancer.pick(f"::ffff:10.{net}.0.1") is balancer.pick(f"10.{net}.0.200")


def test_ip_hash_spreads_networks_by_weight() -> None:
    balancer = build("ip_hash", pool(1, 1, 2))
    share = by_host(balancer.pick(f"10.{i // 256}.{i % 256}.1") for i in range(8000))
    # Ring variance, not sampling error, dominates: a band, not a chi-square.
    for host, expected in {"a": 2000, "b": 2000, "c": 4000}.items():
        assert abs(share[host] - expected) < 0.2 * expected


def test_ip_hash_moves_only_the_clients_of_an_unavailable_target() -> None:
    targets = pool(1, 1, 1)
    balancer = build("ip_hash", targets)
    clients = [f"172.16.{i}.5" for i in range(256)]
    before = mapping(balancer, clients)
    targets[0].set_state("down")
    during = mapping(balancer, clients)
    for client in clients:
        if before[client] != "a:80":
            assert during[client] == before[client]
        else:
            assert during[client] != "a:80"
    # Deterministically: the same clients land the same way every time.
    assert mapping(balancer, clients) == during
    targets[0].set_state("ready")
    assert mapping(balancer, clients) == before


def test_ip_hash_keeps_working_on_a_key_that_is_not_an_ip() -> None:
    balancer = build("ip_hash", pool(1, 1))
    for key in ("", "unix:/run/app.sock", "garbage", "::zz"):
        assert balancer.pick(key) is not None


# --- hash -------------------------------------------------------------------


def test_hash_maps_a_key_to_the_same_target_every_time() -> None:
    balancer = build("hash", pool(1, 1, 1, 1, 1))
    first = mapping(balancer, keys_of(1000))
    assert mapping(balancer, keys_of(1000)) == first
    assert len(set(first.values())) == 5


def test_hash_mapping_is_independent_of_target_order_and_process() -> None:
    # Every proxy worker (each its own process, its own hash() seed) and every
    # table swap that reorders targets must agree on where a key goes.
    targets = pool(1, 2, 1, 3)
    forward = mapping(build("hash", targets), keys_of(2000))
    assert mapping(build("hash", targets[::-1]), keys_of(2000)) == forward
    # Pinned: changing the ring or the key hash would move every user's key
    # on upgrade (and Python's per-process hash() would fail this).
    assert ring_points("a:80", 1)[:2] == [45610933, 3813326175]
    assert mapping(build("hash", pool(1, 1, 1)), ["/", "/login", "/user/42"]) == {
        "/": "b:80",
        "/login": "a:80",
        "/user/42": "c:80",
    }


def test_hash_spreads_keys_by_weight() -> None:
    # Ring variance (160 points a target), not sampling error, dominates:
    # a tolerance band, not a chi-square.
    for weights in ((1, 1, 1, 1, 1), (1, 3), (2, 1, 1)):
        balancer = build("hash", pool(*weights))
        share = by_host(balancer.pick(k) for k in keys_of(10_000))
        for i, weight in enumerate(weights):
            expected = 10_000 * weight / sum(weights)
            assert abs(share[chr(ord("a") + i)] - expected) < 0.2 * expected


def test_hash_removing_a_target_moves_only_its_keys_and_adding_it_back_restores_them() -> None:
    # nginx upstream_hash.t / ketama: the whole point of consistent hashing.
    keys = keys_of(10_000)
    targets = pool(1, 1, 1, 1, 1)
    before = mapping(build("hash", targets), keys)
    removed = targets[2].address
    after = mapping(build("hash", targets[:2] + targets[3:]), keys)
    moved = {k for k in keys if after[k] != before[k]}
    assert moved == {k for k in keys if before[k] == removed}
    assert len({after[k] for k in moved}) == 4  # its keys spread over the rest
    assert mapping(build("hash", targets), keys) == before


def test_hash_an_unavailable_target_moves_its_keys_as_removal_would() -> None:
    keys = keys_of(5000)
    targets = pool(1, 2, 1, 1)
    balancer = build("hash", targets)
    before = mapping(balancer, keys)
    targets[1].set_state("draining")
    assert mapping(balancer, keys) == mapping(build("hash", targets[:1] + targets[2:]), keys)
    targets[1].set_state("ready")
    assert mapping(balancer, keys) == before


def test_hash_weight_change_moves_keys_only_between_that_target_and_the_rest() -> None:
    keys = keys_of(5000)
    before = mapping(build("hash", pool(1, 1, 1)), keys)
    heavier = pool(1, 3, 1)
    after = mapping(build("hash", heavier), keys)
    # b only gained points: every key that moved, moved to b.
    assert {after[k] for k in keys if after[k] != before[k]} == {"b:80"}


def test_hash_retry_goes_to_the_next_target_on_the_ring() -> None:
    targets = pool(1, 1, 1, 1)
    balancer = build("hash", targets)
    for key in keys_of(500):
        first = balancer.pick(key)
        assert first is not None
        retry = balancer.pick(key, exclude={first})
        without = build("hash", [t for t in targets if t is not first]).pick(key)
        assert retry is without


def test_hash_balancer_of_one_weight_zero_target_is_usable_once_weighted() -> None:
    (a,) = targets = pool(0)
    balancer = build("hash", targets)
    assert balancer.pick("k") is None
    a.weight = 1
    assert balancer.pick("k") is a


def test_ip_hash_and_hash_share_the_ring() -> None:
    targets = pool(1, 1, 1)
    assert isinstance(build("ip_hash", targets), Hash)
    ip, plain = build("ip_hash", targets), build("hash", targets)
    assert isinstance(ip, IpHash)
    for net in range(100):
        assert ip.pick(f"10.0.{net}.1") is plain.pick(f"10.0.{net}")


# --- random_two -------------------------------------------------------------


def test_random_two_never_picks_the_busier_of_two() -> None:
    # Two distinct draws: with two targets the idle one always wins.
    targets = pool(1, 1)
    targets[0].in_flight = 1
    balancer = build("random_two", targets)
    assert by_host(balancer.pick("") for _ in range(1000)) == {"b": 1000}


def test_random_two_never_picks_the_busiest() -> None:
    targets = pool(1, 1, 1)
    targets[0].in_flight = 10
    balancer = build("random_two", targets)
    share = by_host(balancer.pick("") for _ in range(3000))
    assert share["a"] == 0
    assert chi_square(share, {"b": 1500, "c": 1500}) < 10.83  # p = 0.001, 1 dof


def test_random_two_idle_pool_is_weighted_random() -> None:
    balancer = build("random_two", pool(1, 1, 2))
    share = by_host(balancer.pick("") for _ in range(10_000))
    assert chi_square(share, {"a": 2500, "b": 2500, "c": 5000}) < 13.82  # p = 0.001, 2 dof


def test_random_two_spreads_held_requests_evenly() -> None:
    targets = pool(1, 1, 1, 1)
    balancer = build("random_two", targets)
    for _ in range(400):
        target = balancer.pick("")
        assert target is not None
        target.in_flight += 1
    assert all(abs(t.in_flight - 100) <= 10 for t in targets)


def test_random_two_is_reproducible_with_a_seeded_rng() -> None:
    first = hosts(build("random_two", pool(1, 2, 3), seed=42), 200)
    assert hosts(build("random_two", pool(1, 2, 3), seed=42), 200) == first


# --- least_time -------------------------------------------------------------


def test_least_time_picks_lowest_ewma_times_in_flight_over_weight() -> None:
    a, b, c = targets = pool(1, 1, 2)
    a.ewma, b.ewma, c.ewma = 0.10, 0.05, 0.12
    balancer = build("least_time", targets)
    assert balancer.pick("") is b  # 0.10, 0.05, 0.06
    b.in_flight = 2  # 0.05 * 3 = 0.15
    assert balancer.pick("") is c  # 0.12 * 1 / 2 = 0.06


def test_least_time_sends_more_to_the_faster_target() -> None:
    a, b = targets = pool(1, 1)
    a.ewma, b.ewma = 0.01, 0.03
    balancer = build("least_time", targets)
    for _ in range(40):
        target = balancer.pick("")
        assert target is not None
        target.in_flight += 1
    assert (a.in_flight, b.in_flight) == (30, 10)


def test_least_time_explores_a_target_with_no_data() -> None:
    a, b, c = targets = pool(1, 1, 1)
    a.ewma, b.ewma = 0.01, 0.02
    balancer = build("least_time", targets)
    assert balancer.pick("") is c
    # With one request in flight it counts as fast as the fastest: a share,
    # not every request until its first answer.
    c.in_flight = 1
    assert balancer.pick("") is a


def test_least_time_without_any_data_shares_like_least_conn() -> None:
    targets = pool(1, 1, 1)
    balancer = build("least_time", targets)
    assert hosts(balancer, 3) == "abc"
    for _ in range(30):
        target = balancer.pick("")
        assert target is not None
        target.in_flight += 1
    assert [t.in_flight for t in targets] == [10, 10, 10]
