"""Panic routing: when health leaves a service nothing, its ready targets serve anyway.

Pure: a Service built from a spec with no sockets and no event loop; health
is moved by feeding its state machine, in-flight counts are set by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from zerodown.proxy.service import Service
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.target import Target
from zerodown.routing import PoolSpec, ServiceSpec, TargetSpec, TargetState

A, B, C, D = (f"127.0.0.1:{port}" for port in (9001, 9002, 9003, 9004))


Targets = Sequence[tuple[str, TargetState, int]]  # address, admin state, weight


def build(stable: Targets, canary: Targets = ()) -> Service:
    def pool(targets: Targets) -> PoolSpec:
        return PoolSpec(
            targets=tuple(TargetSpec(address=a, state=s, weight=w) for a, s, w in targets)
        )

    spec = ServiceSpec(name="web", stable=pool(stable), canary=pool(canary), health=None)
    return Service(spec, ProxySettings(), checks=False)


def down(service: Service, *addresses: str) -> None:
    """Health takes these targets out (one failed check: no spec means fall 1)."""
    by_address = service.targets_by_address()
    for address in addresses:
        by_address[address].health.on_check(False, 0.0)


def picks(service: Service, n: int, tried: tuple[Target, ...] = ()) -> Counter[str]:
    chosen = Counter[str]()
    for _ in range(n):
        target = service.panic_pick(service.stable, tried)
        chosen[target.address if target else "none"] += 1
    return chosen


def test_no_panic_while_any_target_is_healthy() -> None:
    service = build([(A, "ready", 1), (B, "ready", 1)], canary=[(C, "ready", 1)])
    down(service, A, B)
    # The balancers found nothing untried, but C can serve: no panic.
    assert picks(service, 3) == {"none": 3}


def test_every_target_down_by_health_serves_in_turn() -> None:
    service = build([(A, "ready", 1), (B, "ready", 1), (C, "ready", 1)])
    down(service, A, B, C)
    assert picks(service, 30) == {A: 10, B: 10, C: 10}


def test_only_ready_targets_with_weight_are_candidates() -> None:
    service = build(
        [(A, "ready", 1), (B, "draining", 1), (C, "down", 1), (D, "ready", 0)],
    )
    down(service, A)
    assert picks(service, 5) == {A: 5}


def test_nothing_ready_is_no_panic_pick() -> None:
    service = build([(A, "draining", 1), (B, "down", 1)])
    assert picks(service, 2) == {"none": 2}


def test_the_least_busy_per_weight_wins() -> None:
    service = build([(A, "ready", 1), (B, "ready", 3)])
    down(service, A, B)
    targets = service.targets_by_address()
    targets[A].in_flight, targets[B].in_flight = 1, 2  # 1/1 against 2/3
    assert picks(service, 4) == {B: 4}


def test_a_retry_in_panic_goes_to_an_untried_target_then_gives_up() -> None:
    service = build([(A, "ready", 1), (B, "ready", 1)])
    down(service, A, B)
    targets = service.targets_by_address()
    assert picks(service, 3, tried=(targets[A],)) == {B: 3}
    assert picks(service, 1, tried=(targets[A], targets[B])) == {"none": 1}


def test_the_chosen_pool_first_then_the_other() -> None:
    service = build([(A, "ready", 1)], canary=[(B, "ready", 1)])
    down(service, A, B)
    targets = service.targets_by_address()
    assert service.panic_pick(service.canary, ()) is targets[B]
    assert service.panic_pick(service.stable, ()) is targets[A]
    assert service.panic_pick(service.canary, (targets[B],)) is targets[A]


def test_why_no_target_can_serve_is_one_line() -> None:
    assert build([]).unavailable_reason() == "no healthy target for web (it has no targets)"
    both_down = build([(A, "down", 1), (B, "down", 1)])
    assert both_down.unavailable_reason() == "no healthy target for web (all 2 targets down)"
    mixed = build([(A, "draining", 1), (B, "ready", 0), (C, "draining", 1)])
    assert mixed.unavailable_reason() == (
        "no healthy target for web (3 targets: 1 at weight 0, 2 draining)"
    )
