"""What workers share: one health verdict (HealthShare, adopt) and merged stats. Pure."""

# The tests read `health.state` after calls that change it; mypy keeps the
# narrowing from the previous comparison and calls the next one impossible.
# mypy: disable-error-code="comparison-overlap"

from __future__ import annotations

import json

from prometheus_text import value
from zerodown.dataplane.merge import Tally, answered_counts, merge_worker_stats
from zerodown.dataplane.prometheus import render_prometheus
from zerodown.proxy.health import HealthShare, TargetHealth
from zerodown.proxy.metrics import TargetMetrics, target_entry
from zerodown.proxy.target import Target
from zerodown.routing import HealthSpec, PassiveHealthSpec, PoolName
from zerodown.stats import PoolStats, ServiceStats, Stats, TargetStats, pool_entry

ACTIVE = HealthSpec(rise=2, fall=3)
PASSIVE = PassiveHealthSpec(consecutive_errors=3, base_ejection_time=10.0, max_ejection_time=100.0)
A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"


# -- HealthShare / shared() / adopt() ------------------------------------------------------


def test_shared_is_exactly_what_other_workers_need() -> None:
    health = TargetHealth(passive=PASSIVE)
    assert health.shared() == HealthShare("up", None, None, 0)
    health.eject(5.0)
    assert health.shared() == HealthShare("ejected", 15.0, None, 1)
    health.tick(15.0)
    assert health.shared() == HealthShare("up", None, 15.0, 1)


def test_a_share_survives_the_trip_through_json() -> None:
    share = HealthShare("ejected", 1234.5, 1000.25, 3)
    values = json.loads(json.dumps(list(share)))
    assert HealthShare(*values) == share


def test_adopt_copies_state_and_times() -> None:
    health = TargetHealth(passive=PASSIVE)
    health.adopt(HealthShare("ejected", 42.0, 7.0, 2))
    assert health.state == "ejected"
    assert health.ejected_until == 42.0
    assert health.returned_at == 7.0
    assert health.times_ejected == 2
    assert not health.serving
    assert health.shared() == HealthShare("ejected", 42.0, 7.0, 2)
    # `ejections` counts this process's own ejections (its stats); adopting is not one.
    assert health.ejections == 0


def test_adopt_resets_counters_on_a_state_change() -> None:
    health = TargetHealth(active=ACTIVE, passive=PASSIVE)
    health.on_check(False, 0.0)
    health.on_check(False, 0.0)
    health.on_response(False, 0.0)
    assert (health.consecutive_failures, health.consecutive_errors) == (2, 1)
    health.adopt(HealthShare("down", None, None, 0))
    assert health.state == "down"
    assert (health.consecutive_failures, health.consecutive_errors) == (0, 0)
    assert health.consecutive_passes == 0


def test_adopt_keeps_counters_when_the_state_is_the_same() -> None:
    health = TargetHealth(active=ACTIVE, passive=PASSIVE)
    health.on_check(False, 0.0)
    health.on_response(False, 0.0)
    health.on_response(False, 0.0)
    health.adopt(HealthShare("up", None, 3.0, 1))
    assert (health.consecutive_failures, health.consecutive_errors) == (1, 2)
    assert (health.returned_at, health.times_ejected) == (3.0, 1)
    # ...so one more error still completes the run this worker was counting.
    assert health.on_response(False, 4.0) is True


def test_adopting_down_needs_the_full_rise_to_come_back() -> None:
    health = TargetHealth(active=ACTIVE, passive=PASSIVE)
    health.adopt(HealthShare("down", None, None, 0))
    health.on_check(True, 1.0)
    assert health.state == "down"
    health.on_check(True, 2.0)
    assert health.state == "up"
    assert health.returned_at == 2.0


def test_an_adopted_ejection_without_active_checks_returns_on_tick_at_ejected_until() -> None:
    health = TargetHealth(passive=PASSIVE)
    health.adopt(HealthShare("ejected", 20.0, None, 1))
    health.tick(19.999)
    assert health.state == "ejected"
    assert health.counts_as_ejected(19.999)
    assert not health.counts_as_ejected(20.0)
    health.tick(20.0)
    assert health.state == "up"
    assert health.returned_at == 20.0
    assert health.ejected_until is None
    assert health.serving


def test_an_adopted_ejection_with_active_checks_waits_for_a_passing_check() -> None:
    health = TargetHealth(active=ACTIVE, passive=PASSIVE)
    health.adopt(HealthShare("ejected", 20.0, None, 1))
    health.tick(25.0)
    assert health.state == "ejected"  # time alone proves nothing when we can probe
    health.on_check(True, 19.0)
    assert health.state == "ejected"  # too early
    health.on_check(True, 21.0)
    assert health.state == "up"
    assert health.returned_at == 21.0


def test_an_adopted_times_ejected_drives_the_next_ejection_backoff() -> None:
    # Another worker ejected it twice already: the next ejection here is the third.
    health = TargetHealth(passive=PASSIVE)
    health.adopt(HealthShare("up", None, 50.0, 2))
    health.eject(51.0)
    assert health.times_ejected == 3
    assert health.ejected_until == 51.0 + PASSIVE.base_ejection_time * 4


def test_adopting_up_ends_an_ejection_here_too() -> None:
    health = TargetHealth(passive=PASSIVE)
    health.eject(0.0)
    assert health.ejections == 1
    health.adopt(HealthShare("up", None, 10.0, 1))
    assert health.state == "up"
    assert health.ejected_until is None
    assert health.returned_at == 10.0
    assert health.ejections == 1


# -- merge_worker_stats ----------------------------------------------------------------------


def target(
    address: str,
    *,
    state: str = "ready",
    health: str = "up",
    weight: int = 1,
    in_flight: int = 0,
    requests: int = 0,
    statuses: tuple[int, ...] = (),
    ejections: int = 0,
    failures: tuple[str, ...] = (),
) -> Target:
    t = Target(address, weight=weight)
    for s in ("ready", state):
        t.set_state(s)  # type: ignore[arg-type]
    t.health.adopt(HealthShare(health, None, None, 0))  # type: ignore[arg-type]
    t.in_flight = in_flight
    t.metrics = TargetMetrics()
    for _ in range(requests):
        t.metrics.request()
    for status in statuses:
        t.metrics.response(status, 0.003)
    for _ in range(ejections):
        t.metrics.eject()
    for kind in failures:
        t.metrics.fail(kind)
    return t


def stats(
    stable: list[Target],
    canary: list[Target] | None = None,
    *,
    connections: int = 0,
    rejected: dict[str, int] | None = None,
    canary_weight: float = 0.0,
) -> Stats:
    """A stats document as ProxyServer.stats() builds it."""
    pools: dict[PoolName, PoolStats] = {
        "stable": pool_entry({t.address: target_entry(t) for t in stable}),
        "canary": pool_entry({t.address: target_entry(t) for t in canary or []}),
    }
    service = ServiceStats(pools=pools, canary_weight=canary_weight, panic=0)
    return Stats(services={"web": service}, connections=connections, rejected=rejected or {})


def merged_of(view: Stats, workers: list[Stats]) -> Stats:
    return merge_worker_stats(view, [Tally.of(w) for w in workers])


def entries(merged: Stats, pool: PoolName = "stable") -> dict[str, TargetStats]:
    return merged.services["web"].pools[pool].targets


def stable(merged: Stats) -> PoolStats:
    return merged.services["web"].pools["stable"]


def test_counters_are_summed_across_workers() -> None:
    view = stats([target(A), target(B)])
    one = stats(
        [
            target(A, requests=3, statuses=(200, 200, 500), failures=("reset",)),
            target(B, requests=1, statuses=(204,)),
        ]
    )
    two = stats(
        [
            target(A, requests=2, statuses=(200, 404), ejections=1),
            target(B, requests=4, statuses=(200,) * 4, failures=("connect", "reset")),
        ]
    )
    merged = merged_of(view, [one, two])
    a, b = entries(merged)[A], entries(merged)[B]
    assert a.requests == 5
    assert a.responses == {"1xx": 0, "2xx": 3, "3xx": 0, "4xx": 1, "5xx": 1}
    assert a.ejections == 1
    assert a.failures["reset"] == 1
    assert a.latency.count == 5
    assert a.latency.buckets["0.005"] == 5
    assert b.requests == 5
    assert b.failures["connect"] == 1
    assert b.failures["reset"] == 1
    totals = stable(merged).totals
    assert totals.requests == 10
    assert totals.responses["2xx"] == 8
    assert totals.failures["reset"] == 2
    assert totals.targets == 2


def test_in_flight_is_summed_across_workers() -> None:
    view = stats([target(A, in_flight=0), target(B)])
    one = stats([target(A, in_flight=2), target(B, in_flight=1)])
    two = stats([target(A, in_flight=3), target(B)])
    merged = merged_of(view, [one, two])
    assert entries(merged)[A].in_flight == 5
    assert entries(merged)[B].in_flight == 1
    assert stable(merged).totals.in_flight == 6


def test_state_and_health_come_from_the_view_not_the_workers() -> None:
    view = stats(
        [target(A, state="draining", health="ejected", weight=3), target(B, health="down")]
    )
    worker = stats([target(A, requests=1), target(B, requests=1)])  # still ready and up there
    merged = merged_of(view, [worker])
    a, b = entries(merged)[A], entries(merged)[B]
    assert (a.state, a.health, a.serving, a.available, a.weight) == (
        "draining",
        "ejected",
        False,
        False,
        3,
    )
    assert (b.state, b.health, b.serving, b.available) == (
        "ready",
        "down",
        False,
        False,
    )
    assert a.requests == 1
    assert b.requests == 1
    assert stable(merged).totals.available == 0


def test_a_target_a_worker_does_not_know_counts_zero_there() -> None:
    view = stats([target(A), target(B)], [target(C)])
    one = stats([target(A, requests=2, statuses=(200, 200)), target(B, requests=1)])
    two = stats([target(A, requests=1, statuses=(200,))])  # has not seen B's table yet
    merged = merged_of(view, [one, two])
    assert entries(merged)[A].requests == 3
    assert entries(merged)[B].requests == 1
    c = entries(merged, "canary")[C]  # nobody served it yet
    assert c.requests == 0
    assert c.in_flight == 0
    assert c.latency.count == 0
    assert c.state == "ready"


def test_a_target_only_a_worker_knows_is_left_out() -> None:
    # The supervisor's view decides what exists (a worker may lag behind a removal).
    view = stats([target(A)])
    worker = stats([target(A, requests=1), target(B, requests=9)])
    merged = merged_of(view, [worker])
    assert set(entries(merged)) == {A}
    assert stable(merged).totals.requests == 1


def test_rejected_and_connections_are_summed_and_service_fields_kept() -> None:
    view = stats([target(A)], connections=0, canary_weight=12.5)
    one = stats([target(A)], connections=3, rejected={"400": 2, "431": 1})
    two = stats([target(A)], connections=4, rejected={"400": 1, "404": 5})
    merged = merged_of(view, [one, two])
    assert merged.connections == 7
    assert merged.rejected == {"400": 3, "404": 5, "431": 1}
    assert list(merged.rejected) == ["400", "404", "431"]
    assert merged.services["web"].canary_weight == 12.5


def test_no_workers_means_the_view_with_zero_counters() -> None:
    view = stats([target(A, state="draining")], connections=9, rejected={"400": 1})
    merged = merged_of(view, [])
    assert entries(merged)[A].requests == 0
    assert entries(merged)[A].state == "draining"
    assert merged.connections == 0
    assert merged.rejected == {}


def test_merged_stats_are_json_and_render_as_prometheus() -> None:
    view = stats([target(A), target(B)])
    workers = [stats([target(A, requests=2, statuses=(200, 200)), target(B)]) for _ in range(2)]
    merged = merged_of(view, workers)
    assert Stats.model_validate_json(merged.model_dump_json()) == merged
    text = render_prometheus(merged)
    labels = {"service": "web", "pool": "stable", "version": ""}
    assert value(text, "zerodown_requests_total", **labels, target=A) == 4
    assert value(text, "zerodown_requests_total", **labels, target=B) == 0


def test_answered_counts_are_responses_below_500_per_target() -> None:
    worker = stats([target(A, statuses=(200, 302, 404, 503)), target(B)], [target(C)])
    assert answered_counts(worker) == {("web", A): 3, ("web", B): 0, ("web", C): 0}
