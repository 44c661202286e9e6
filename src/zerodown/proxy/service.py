"""A service at run time: its pools of live Targets, how a request picks a
pool (canary split, cohorts, stickiness) and a target (the balancer), and
what a response teaches it (passive health).

A Service is rebuilt from its ServiceSpec on every routing-table change; the
Targets, their connections, health, metrics and checkers carry over by
address, so a table swap loses no state and no idle connection.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from zerodown.proxy.balancer import Balancer, balancer_type, make_balancer
from zerodown.proxy.caching import ServiceCache, carried_over
from zerodown.proxy.checker import CheckResult, HealthChecker
from zerodown.proxy.guard import Guard, GuardCounters
from zerodown.proxy.health import HealthShare, TargetHealth, may_eject
from zerodown.proxy.http import Forwarded, RequestHead
from zerodown.proxy.metrics import TargetMetrics
from zerodown.proxy.ratelimit import BucketTable
from zerodown.proxy.retry import RetryBudget
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.sticky import (
    StickyCookie,
    came_over_tls,
    join_set_cookies,
    key_bytes,
    may_follow,
)
from zerodown.proxy.target import Target
from zerodown.proxy.target import transition as admin_transition
from zerodown.proxy.upstream import ConnectionPool
from zerodown.routing import PoolName, PoolSpec, ServiceSpec, parse_address

Clock = Callable[[], float]
# Told of every health verdict this process reached on its own (a check moved
# the state, a passive ejection, an ejection's end): (service name, target).
# Workers use it to keep one verdict across processes; None: nobody listens.
HealthHook = Callable[[str, Target], None]

# Shortest re-arm of an ejection timer: above the loop's timer resolution (1 ms).
MIN_TICK_DELAY = 0.002


class Pool:
    """The targets of one release behind a service, and the balancer over them."""

    __slots__ = ("balancer", "name", "targets")

    def __init__(self, name: PoolName, targets: list[Target], balancer: Balancer) -> None:
        self.name = name
        self.targets = targets
        self.balancer = balancer

    def __repr__(self) -> str:
        return f"<Pool {self.name} {self.targets!r}>"

    @property
    def available(self) -> bool:
        return any(t.available for t in self.targets)


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one request goes first, and the sticky cookie to set, if any."""

    pool: Pool
    key: str
    set_cookie: bytes | None = None


@dataclass(frozen=True, slots=True)
class StickyChoice(Choice):
    """A choice in a service with `sticky`: also the target its cookie names
    (if it may go there) and that cookie. A class of its own so a request to
    any other service builds no more than a Choice (the hot path)."""

    bound: Target | None = None
    presented: bytes | None = None  # the instance cookie's value as the client sent it


def parse_cookies(header: bytes | None) -> dict[bytes, bytes]:
    cookies: dict[bytes, bytes] = {}
    if header:
        for part in header.split(b";"):
            name, _, value = part.strip().partition(b"=")
            cookies.setdefault(name, value)
    return cookies


class Service:
    def __init__(
        self,
        spec: ServiceSpec,
        settings: ProxySettings,
        previous: Service | None = None,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        checks: bool = True,
        on_health: HealthHook | None = None,
        buckets: BucketTable | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.host = spec.host
        self.path = spec.path
        self.prefix = spec.path.encode()
        self.settings = settings
        self._clock = clock
        self._rng = rng or random.Random()
        # False in a worker of several: one process checks for all of them.
        self._checks = checks
        self._on_health = on_health
        # The budget outlives table swaps: a swap must not reset retry accounting.
        self.budget: RetryBudget = (
            previous.budget
            if previous
            else RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min)
        )
        # Refusal counters outlive table swaps too; None when no rule is set.
        self.refused: GuardCounters = previous.refused if previous else GuardCounters()
        guard = spec.guard
        self.guard = (
            Guard(spec.name, guard, self.refused, buckets, clock)
            if guard is not None and not guard.empty
            else None
        )
        known = previous.targets_by_address() if previous else {}
        _check_buildable(spec, known)
        # Kept while the releases taking traffic are the same; purged when not.
        self.cache: ServiceCache | None = carried_over(spec, previous.cache if previous else None)
        self.checkers: dict[Target, HealthChecker] = {}
        self._panic_turn = 0
        self.stable = self._build_pool("stable", spec.stable, known, previous)
        self.canary = self._build_pool("canary", spec.canary, known, previous)
        self.sticky: StickyCookie | None = None
        if spec.sticky is not None:
            key = key_bytes(settings.sticky_key)
            self.sticky = StickyCookie(spec.sticky, key, spec.name, self.targets())
        self._needs_cookies = bool(
            spec.sticky
            or spec.split.sticky_cookie
            or any(rule.cookie for rule in spec.split.cohorts)
            or spec.hash_key.startswith("cookie:")
        )

    def __repr__(self) -> str:
        return f"<Service {self.name} {self.host}{self.path} {self.stable!r} {self.canary!r}>"

    # -- building ------------------------------------------------------------

    def _build_pool(
        self,
        name: PoolName,
        spec: PoolSpec,
        known: dict[str, Target],
        previous: Service | None,
    ) -> Pool:
        same_health = previous is not None and _health_key(previous.spec) == _health_key(self.spec)
        targets = []
        for target_spec in spec.targets:
            target = known.get(target_spec.address)
            if target is None:
                target = self._new_target(target_spec.address, target_spec.weight)
            elif not same_health:
                target.health = self._new_health()
            target.weight = target_spec.weight
            target.version = target_spec.version
            target.set_state(target_spec.state)
            targets.append(target)
            self._keep_checker(target, previous if same_health else None)
        balancer = make_balancer(self.spec.balance, targets, clock=self._clock, rng=self._rng)
        return Pool(name, targets, balancer)

    def _new_health(self) -> TargetHealth:
        return TargetHealth(self.spec.health, self.spec.passive, self.spec.slow_start)

    def _new_target(self, address: str, weight: int) -> Target:
        target = Target(address, weight=weight, health=self._new_health())
        target.connections = ConnectionPool(target, self.settings)
        target.metrics = TargetMetrics()
        return target

    def _keep_checker(self, target: Target, previous: Service | None) -> None:
        spec = self.spec.health
        if spec is None or not self._checks:
            return
        old = previous.checkers.get(target) if previous else None
        if old is None:
            old = HealthChecker(target.host, target.port, spec, self._check_reporter(target))
        self.checkers[target] = old

    def _check_reporter(self, target: Target) -> Callable[[CheckResult], None]:
        # The checker outlives this Service (table swaps keep it), so the
        # callback holds only what does not change: the clock, name and hook.
        clock, name, hook = self._clock, self.name, self._on_health

        def report(result: CheckResult) -> None:
            before = target.health.state
            target.health.on_check(result == "pass", clock(), timed_out=result == "timeout")
            if hook is not None and target.health.state != before:
                hook(name, target)

        return report

    def targets(self) -> Iterator[Target]:
        yield from self.stable.targets
        yield from self.canary.targets

    def targets_by_address(self) -> dict[str, Target]:
        return {t.address: t for t in self.targets()}

    def start(self, previous: Service | None) -> None:
        """Start checkers this service owns that the previous one did not."""
        old = set(previous.checkers.values()) if previous else set()
        for checker in self.checkers.values():
            if checker not in old:
                checker.start()

    def retire(self, successor: Service | None) -> list[HealthChecker]:
        """Mark targets the successor dropped as gone; return checkers to stop."""
        kept = successor.targets_by_address() if successor else {}
        keep_checkers = set(successor.checkers.values()) if successor else set()
        for target in self.targets():
            if kept.get(target.address) is not target:
                target.set_state("gone")
                if target.connections is not None:
                    target.connections.close()
        return [c for c in self.checkers.values() if c not in keep_checkers]

    # -- per request ---------------------------------------------------------

    def choose(self, head: RequestHead, client_ip: str, path: bytes) -> Choice:
        cookies = parse_cookies(head.header(b"cookie")) if self._needs_cookies else {}
        if self.sticky is None:
            pool, set_cookie = self._choose_pool(head, cookies, None)
            return Choice(pool, self._balance_key(head, cookies, client_ip, path), set_cookie)
        return self._choose_sticky(head, cookies, client_ip, path, self.sticky)

    def _choose_sticky(
        self,
        head: RequestHead,
        cookies: dict[bytes, bytes],
        client_ip: str,
        path: bytes,
        sticky: StickyCookie,
    ) -> Choice:
        presented = cookies.get(sticky.name)
        bound = sticky.target(presented)
        if bound is not None and not may_follow(bound, self._clock()):
            bound = None
        pool, set_cookie = self._choose_pool(head, cookies, bound)
        if bound is not None and bound not in pool.targets:
            bound = None  # a cohort rule sent it to the other pool
        key = self._balance_key(head, cookies, client_ip, path)
        return StickyChoice(pool, key, set_cookie, bound, presented)

    def sticky_header(
        self, choice: Choice, target: Target, head: RequestHead, forwarded: Forwarded
    ) -> bytes | None:
        """The Set-Cookie value(s) for an attempt at `target`: the pool cookie
        of the choice, and the instance cookie unless the client's names it."""
        assert self.sticky is not None
        assert isinstance(choice, StickyChoice)
        if choice.presented is not None and target is choice.bound:
            return choice.set_cookie  # the common sticky path: already bound here
        mine = self.sticky.header(target, choice.presented, came_over_tls(head, forwarded))
        return join_set_cookies(choice.set_cookie, mine)

    def _choose_pool(
        self, head: RequestHead, cookies: dict[bytes, bytes], bound: Target | None
    ) -> tuple[Pool, bytes | None]:
        split = self.spec.split
        if not self.canary.targets:
            return self.stable, None
        for rule in split.cohorts:
            value = (
                head.header(rule.header.lower().encode())
                if rule.header
                else cookies.get((rule.cookie or "").encode())
            )
            if value is not None and value.decode("latin-1") in rule.values:
                return self._pool(rule.pool), None
        sticky = split.sticky_cookie.encode() if split.sticky_cookie else None
        remembered = cookies.get(sticky) if sticky else None
        if bound is not None:
            # The instance cookie is the finer choice: its pool wins, and the
            # pool cookie is made to agree, so that when this instance is gone
            # the client stays on its version (one version per client in a canary).
            pool = self.canary if bound in self.canary.targets else self.stable
            agree = sticky is None or remembered == pool.name.encode()
            return pool, None if agree else self._pool_cookie(sticky, pool)
        if remembered in (b"stable", b"canary"):
            pool = self._pool("canary" if remembered == b"canary" else "stable")
            if pool.available:
                return pool, None
        pool = self.canary if self._rng.random() * 100 < split.canary_weight else self.stable
        if not pool.available:
            pool = self.stable if pool is self.canary else self.canary
        return pool, self._pool_cookie(sticky, pool)

    @staticmethod
    def _pool_cookie(name: bytes | None, pool: Pool) -> bytes | None:
        return name + b"=" + pool.name.encode() + b"; Path=/; HttpOnly" if name else None

    def _pool(self, name: PoolName) -> Pool:
        return self.canary if name == "canary" else self.stable

    def _balance_key(
        self, head: RequestHead, cookies: dict[bytes, bytes], client_ip: str, path: bytes
    ) -> str:
        balance = self.spec.balance
        if balance == "ip_hash":
            return client_ip
        if balance != "hash":
            return ""
        kind, _, name = self.spec.hash_key.partition(":")
        if kind == "ip":
            return client_ip
        if kind == "header":
            return (head.header(name.lower().encode()) or b"").decode("latin-1")
        if kind == "cookie":
            return cookies.get(name.encode(), b"").decode("latin-1")
        return path.partition(b"?")[0].decode("latin-1")

    def pick(self, choice: Choice, tried: Collection[Target]) -> Target | None:
        """The target for a request's next attempt: the one its sticky cookie
        names, else from its pool, else the other, else panic."""
        if self.sticky is not None:
            bound = self._bound(choice, tried)
            if bound is not None:
                return bound
        target = choice.pool.balancer.pick(choice.key, tried)
        if target is None:
            # Prefer a target with a free connection slot; queue only when all are full.
            fallback = self.fallback(choice.pool)
            if fallback is not None:
                target = fallback.balancer.pick(choice.key, tried)
            if target is None:
                target = self.panic_pick(choice.pool, tried)
                if target is not None and target.metrics is not None:
                    target.metrics.panic()
        return target

    def _bound(self, choice: Choice, tried: Collection[Target]) -> Target | None:
        bound = choice.bound if isinstance(choice, StickyChoice) else None
        if bound is not None and bound not in tried and may_follow(bound, self._clock()):
            return bound
        return None

    def panic_pick(self, pool: Pool, tried: Collection[Target]) -> Target | None:
        """Every target is out by health: pick one anyway, or None.

        Envoy's panic threshold at 100%: when health leaves nothing, it is
        more likely wrong (checks timing out on a busy app) than every
        instance dead, and a dead one costs a connect error and a retry where
        refusing costs every request. Only targets the table sends traffic to
        (`ready`, weight > 0) are candidates, never a draining or removed one.
        The chosen pool first, then the other; least in flight per weight,
        ties in turn. A cold path: the balancers found nothing.
        """
        if self.stable.available or self.canary.available:
            return None  # some target is healthy; the ones left were tried already
        for candidates in (pool.targets, self.fallback_targets(pool)):
            best: Target | None = None
            best_load = math.inf
            self._panic_turn += 1
            for i in range(len(candidates)):
                target = candidates[(self._panic_turn + i) % len(candidates)]
                if target.state != "ready" or target.weight <= 0 or target in tried:
                    continue
                load = target.in_flight / target.weight
                if load < best_load:
                    best, best_load = target, load
            if best is not None:
                return best
        return None

    def fallback_targets(self, pool: Pool) -> list[Target]:
        return self.canary.targets if pool is self.stable else self.stable.targets

    def unavailable_reason(self) -> str:
        """Why no target may take a request: one line for a 503's body and the log."""
        targets = list(self.targets())
        if not targets:
            return f"no healthy target for {self.name} (it has no targets)"
        states = Counter(_why_out(t) for t in targets)
        if len(states) == 1:
            why = f"all {len(targets)} targets {next(iter(states))}"
        else:
            parts = ", ".join(f"{n} {why}" for why, n in sorted(states.items()))
            why = f"{len(targets)} targets: {parts}"
        return f"no healthy target for {self.name} ({why})"

    def fallback(self, pool: Pool) -> Pool | None:
        """The other pool, when the chosen one has nothing left to try."""
        other = self.stable if pool is self.canary else self.canary
        return other if other.targets else None

    def observe(self, target: Target, ok: bool) -> None:
        """Passive health: a connect error or 5xx counts against the target."""
        now = self._clock()
        if target.health.on_response(ok, now) and may_eject(self._peers(target), now):
            target.health.eject(now)
            if target.metrics is not None:
                target.metrics.eject()
            if self._on_health is not None:
                self._on_health(self.name, target)
            if self.spec.health is None:
                # No active checks to bring it back: the passing of time must.
                self._return_when_due(target)

    def _return_when_due(self, target: Target) -> None:
        """Tick `target` once its ejection is over, by our clock, not the loop's.

        The loop's timers (uvloop rounds to whole milliseconds and caches its
        time) can fire a hair before `ejected_until`; a tick then is a no-op,
        so re-arm instead of leaving the target out for good.
        """
        until = target.health.ejected_until
        if target.health.state != "ejected" or until is None:
            return
        now = self._clock()
        if now >= until:
            target.health.tick(now)
            if self._on_health is not None and target.health.state != "ejected":
                self._on_health(self.name, target)
            return
        asyncio.get_running_loop().call_later(
            max(until - now, MIN_TICK_DELAY), self._return_when_due, target
        )

    def adopt_health(self, target: Target, share: HealthShare) -> None:
        """Copy a verdict reached elsewhere; an adopted ejection still ends on time."""
        target.health.adopt(share)
        if share.state == "ejected" and self.spec.health is None:
            self._return_when_due(target)

    def _peers(self, target: Target) -> list[TargetHealth]:
        # Only admin-ready targets count: a draining one is leaving anyway and
        # must not make "never eject the last serving target" believe it has a spare.
        pool = self.canary if target in self.canary.targets else self.stable
        return [t.health for t in pool.targets if t.state == "ready"]


def _why_out(target: Target) -> str:
    """What keeps `target` from traffic, in the vocabulary of the stats."""
    if target.state != "ready":
        return target.state  # adding, down, draining (gone never stays in a pool)
    if target.weight <= 0:
        return "at weight 0"
    return target.health.state  # down or ejected (panic would have used it otherwise)


def all_targets(services: Iterable[Service]) -> Iterator[tuple[Service, Target]]:
    for service in services:
        for target in service.targets():
            yield service, target


def _check_buildable(spec: ServiceSpec, known: dict[str, Target]) -> None:
    """Raise what building `spec` would raise, before any live Target changes.

    Targets carry over by address, so building the pools changes weight, state
    and health of objects the table in force still routes with; a table that
    is refused half-way must not have half-applied itself.
    """
    balancer_type(spec.balance)
    for target_spec in (*spec.stable.targets, *spec.canary.targets):
        parse_address(target_spec.address)
        target = known.get(target_spec.address)
        if target is not None:
            admin_transition(target.state, target_spec.state)


def _health_key(spec: ServiceSpec) -> tuple[object, ...]:
    return (spec.health, spec.passive, spec.slow_start)
