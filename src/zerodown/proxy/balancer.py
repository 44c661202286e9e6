"""Load balancing: which target of a pool gets the next request.

Pure: no sockets, no event loop. A Balancer is built once per pool per
routing-table version, so its list of targets never changes under it; what
does change (admin state, weight, health, in_flight, ewma) is read live on
every pick. `pick` is on the hot path of every request: rings are built at
construction and per-pick scratch lists reused, so a pick is one or two
O(targets) scans and builds no containers.

Every algorithm chooses among targets that are `available` and not in
`exclude` (the targets a retry already tried), and returns None when there is
none. The weighted ones use `effective_weight(now)`, so a target returning
from an outage ramps up by slow start. The hashes do not: their ring follows
the configured weights, since ramping a ring would move a key twice (off the
target and back) instead of once.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import math
import random
import struct
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Final, final

from zerodown.proxy.target import Target

Clock = Callable[[], float]


class Balancer(ABC):
    """Picks the target for one request from a fixed list of targets."""

    __slots__ = ("_clock", "_rng", "targets")

    name: ClassVar[str]

    @final
    def __init__(
        self,
        targets: Sequence[Target],
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.targets: tuple[Target, ...] = tuple(targets)
        self._clock = clock
        # Only randomized algorithms draw from it; it is here so make_balancer
        # builds every algorithm the same way.
        self._rng = rng if rng is not None else random.Random()
        self._prepare()

    def _prepare(self) -> None:  # noqa: B027 - a hook: round robin precomputes nothing
        """Build what an algorithm precomputes from `targets` (rings, scratch lists).

        The one constructor is Balancer's; an algorithm extends this instead,
        so every one is built with the same arguments, by make_balancer.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {[t.address for t in self.targets]}>"

    @abstractmethod
    def pick(self, key: str, exclude: Collection[Target] = ()) -> Target | None:
        """The target for a request with balancing key `key`, or None if none is usable.

        `key` is the client IP for ip_hash, the configured hash key's value for
        hash, and ignored by the others. `exclude` holds targets already tried
        for this request, so a retry lands elsewhere.
        """


def make_balancer(
    name: str,
    targets: Sequence[Target],
    *,
    clock: Clock = time.monotonic,
    rng: random.Random | None = None,
) -> Balancer:
    """Build the balancer the config names; ValueError for an unknown name."""
    return balancer_type(name)(targets, clock, rng)


def balancer_type(name: str) -> type[Balancer]:
    """The algorithm the config names; ValueError for an unknown name."""
    cls = BALANCERS.get(name)
    if cls is None:
        known = ", ".join(sorted(BALANCERS))
        raise ValueError(f"unknown balancing algorithm {name!r}; known: {known}")
    return cls


# --- lowest score, ties shared by smooth weighted round robin ---------------


class _LowestScore(Balancer):
    """The usable target with the lowest score wins; ties share by weight.

    Round robin is the case where every usable target scores the same, so
    round_robin, least_conn and least_time are one loop with different scores.
    """

    __slots__ = ("_current", "_scores", "_weights")

    def _prepare(self) -> None:
        super()._prepare()
        count = len(self.targets)
        self._current = [0.0] * count  # nginx's per-peer current_weight
        # Scratch filled on each pick, so a pick allocates no lists.
        self._weights = [0.0] * count
        self._scores = [math.inf] * count

    def pick(self, key: str, exclude: Collection[Target] = ()) -> Target | None:
        best = self._fill(self._clock(), exclude)
        return None if best == math.inf else self._share(best)

    @abstractmethod
    def _score(self, target: Target, weight: float) -> float:
        """Lower is better; `weight` is the target's effective weight, > 0."""

    def _fill(self, now: float, exclude: Collection[Target]) -> float:
        """Fill the weight and score scratch lists; return the lowest score."""
        best = math.inf
        weights, scores, score_of = self._weights, self._scores, self._score
        for i, target in enumerate(self.targets):
            weight = target.effective_weight(now) if target.available else 0.0
            if weight > 0 and target not in exclude:
                score = score_of(target, weight)
                best = score if score < best else best
            else:
                weight, score = 0.0, math.inf
            weights[i] = weight
            scores[i] = score
        return best

    def _share(self, best: float) -> Target:
        """Smooth weighted round robin among the targets scoring `best`.

        nginx's ngx_http_upstream_get_peer (commit 52327e062): each candidate
        gains its weight, the one furthest ahead wins and pays back the total.
        Weights 5,1,1 give a a b a c a a rather than a a a a a b c, so a light
        target is not starved for a burst and a heavy one not hit in a burst.
        """
        current, weights = self._current, self._weights
        chosen, total, lead = -1, 0.0, -math.inf
        for i, score in enumerate(self._scores):
            if score != best:
                continue
            weight = weights[i]
            total += weight
            current[i] += weight
            if current[i] > lead:
                chosen, lead = i, current[i]
        current[chosen] -= total
        return self.targets[chosen]


class RoundRobin(_LowestScore):
    """nginx's smooth weighted round robin over every usable target."""

    __slots__ = ()
    name = "round_robin"

    def _score(self, target: Target, weight: float) -> float:
        return 0.0


class LeastConn(_LowestScore):
    """Fewest requests in flight per unit of weight (nginx `least_conn`).

    Ties (an idle pool, most of all) go by weighted round robin as in nginx,
    so equal targets share rather than the first one taking every request.
    """

    __slots__ = ()
    name = "least_conn"

    def _score(self, target: Target, weight: float) -> float:
        return target.in_flight / weight


# Stand-in response time when no target has one yet: any positive constant
# turns least_time into weighted least_conn until the first answers arrive.
_NO_EWMA: Final = 1.0


class LeastTime(_LowestScore):
    """Lowest expected wait: ewma x (in_flight + 1) / weight (nginx `least_time`).

    A target with no response time yet (ewma 0: new, or just added) would
    never win on a measured score, so it is explored: while idle it scores 0
    and gets the next request. Once one is in flight it is assumed as fast as
    the fastest known target, so it gets its share without a whole burst
    piling onto a cold instance before its first answer.
    """

    __slots__ = ("_guess",)
    name = "least_time"

    def _prepare(self) -> None:
        super()._prepare()
        self._guess = _NO_EWMA

    def _fill(self, now: float, exclude: Collection[Target]) -> float:
        fastest = math.inf
        for target in self.targets:
            if 0.0 < target.ewma < fastest:
                fastest = target.ewma
        self._guess = fastest if fastest != math.inf else _NO_EWMA
        return super()._fill(now, exclude)

    def _score(self, target: Target, weight: float) -> float:
        if target.ewma > 0.0:
            return target.ewma * (target.in_flight + 1) / weight
        if target.in_flight == 0:
            return 0.0
        return self._guess * (target.in_flight + 1) / weight


# --- power of two choices ---------------------------------------------------


class RandomTwo(Balancer):
    """Power of two choices: two distinct weighted-random targets, the less busy wins.

    Nearly as good as least_conn at spreading load, without every proxy
    worker (each with its own in_flight view) herding onto the same idlest
    target at once.
    """

    __slots__ = ("_weights",)
    name = "random_two"

    def _prepare(self) -> None:
        super()._prepare()
        self._weights = [0.0] * len(self.targets)  # scratch, refilled per pick

    def pick(self, key: str, exclude: Collection[Target] = ()) -> Target | None:
        total, usable = self._fill(self._clock(), exclude)
        if usable == 0:
            return None
        first = self._draw(total, skip=-1)
        if usable == 1:
            return self.targets[first]
        second = self._draw(total - self._weights[first], skip=first)
        a, b = self.targets[first], self.targets[second]
        return b if b.in_flight < a.in_flight else a

    def _fill(self, now: float, exclude: Collection[Target]) -> tuple[float, int]:
        total, usable = 0.0, 0
        for i, target in enumerate(self.targets):
            weight = target.effective_weight(now) if target.available else 0.0
            if weight <= 0 or target in exclude:
                weight = 0.0
            else:
                total += weight
                usable += 1
            self._weights[i] = weight
        return total, usable

    def _draw(self, total: float, skip: int) -> int:
        """Index of a weighted-random usable target other than `skip`."""
        left = self._rng.random() * total
        last = -1
        for i, weight in enumerate(self._weights):
            if weight <= 0 or i == skip:
                continue
            last = i
            left -= weight
            if left < 0:
                return i
        # Float rounding can leave `left` a hair above 0 past the end.
        return last


# --- consistent hashing -----------------------------------------------------

# Ketama's (and nginx `hash ... consistent`'s) points per unit of weight: with
# 160 points a target's share of the ring is within ~10% of its weight's share.
POINTS_PER_WEIGHT: Final = 160
RING_SIZE: Final = 2**32
# One 64-byte blake2b digest yields 16 ring points of 4 bytes (ketama takes 4
# from each md5), so a weight-1000 target costs 10,000 digests, not 160,000.
_POINT_DIGEST: Final = struct.Struct("<16I")
_POINTS_PER_DIGEST: Final = 16


def ring_points(address: str, weight: int) -> list[int]:
    """A target's points on the ring, derived from its address alone.

    So a target keeps its points whoever else is in the pool: removing one
    moves only the keys that were on it, and adding it back restores them.
    Weight 0 gets weight-1 points: the target is skipped while unavailable,
    which moves its keys exactly as removing it would.
    """
    count = POINTS_PER_WEIGHT * max(weight, 1)
    points: list[int] = []
    for block in range(-(-count // _POINTS_PER_DIGEST)):
        digest = hashlib.blake2b(f"{address}-{block}".encode(), digest_size=64).digest()
        points.extend(_POINT_DIGEST.unpack(digest))
    return points[:count]


def key_hash(key: str) -> int:
    """Position of a balancing key on the ring: stable across processes and runs.

    crc32 (as nginx uses) spreads keys over the ring as evenly as a
    cryptographic hash here, at a fifth of the cost; Python's hash() would
    differ per worker process.
    """
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, slots=True)
class Ring:
    """The ketama ring of a set of (address, weight) members, sorted by address.

    Owners are member indexes, not Targets, so one Ring serves every
    balancer over the same members.
    """

    points: tuple[int, ...]  # every point, ascending
    owners: tuple[int, ...]  # the member each point belongs to
    member_points: tuple[tuple[int, ...], ...]  # each member's own points, ascending


# A table swap rebuilds every balancer, and most swaps (a canary step, a
# target of another pool draining) leave a pool's members as they were; a ring
# of heavy targets is ~100k points and takes a second to sort, so reuse it.
@lru_cache(maxsize=16)
def build_ring(members: tuple[tuple[str, int], ...]) -> Ring:
    # Sort (point, member) pairs packed into one int: ties on a point go to
    # the lower address, and sorting ints is several times faster than tuples.
    shift = max(len(members) - 1, 1).bit_length()
    packed = sorted(
        point << shift | rank
        for rank, (address, weight) in enumerate(members)
        for point in ring_points(address, weight)
    )
    mask = (1 << shift) - 1
    owners = tuple(p & mask for p in packed)
    points = tuple(p >> shift for p in packed)
    mine: list[list[int]] = [[] for _ in members]
    for point, owner in zip(points, owners, strict=True):
        mine[owner].append(point)
    return Ring(points, owners, tuple(tuple(m) for m in mine))


class Hash(Balancer):
    """Consistent hashing, ketama style: the key's first ring point at or after it.

    Unusable and excluded targets are skipped, which sends their keys to the
    next target on the ring and nowhere else.
    """

    __slots__ = ("_members", "_ring")
    name = "hash"

    def _prepare(self) -> None:
        super()._prepare()
        # Members in address order, so the ring does not depend on the order
        # the table lists targets in. Points follow the weights at
        # construction (a new table builds a new balancer); a live weight of
        # 0 still takes a target out, as unavailable.
        self._members = tuple(sorted(self.targets, key=lambda t: t.address))
        self._ring = build_ring(tuple((t.address, t.weight) for t in self._members))

    def pick(self, key: str, exclude: Collection[Target] = ()) -> Target | None:
        points = self._ring.points
        if not points:
            return None
        position = self._position(key)
        i = bisect.bisect_left(points, position)
        owner = self._members[self._ring.owners[i if i < len(points) else 0]]
        if owner.available and owner not in exclude:
            return owner
        return self._next_usable(position, exclude)

    def _position(self, key: str) -> int:
        return key_hash(key)

    def _next_usable(self, position: int, exclude: Collection[Target]) -> Target | None:
        """The usable target whose next point after `position` is nearest.

        The same answer as walking the ring past unusable points, in
        O(targets x log points) however many points are unusable. Members are
        in address order, so strict `<` keeps the lower address on a tie, as
        the ring does.
        """
        best: Target | None = None
        best_distance = RING_SIZE + 1
        for target, points in zip(self._members, self._ring.member_points, strict=True):
            if not target.available or target in exclude:
                continue
            i = bisect.bisect_left(points, position)
            distance = points[i] - position if i < len(points) else points[0] + RING_SIZE - position
            if distance < best_distance:
                best, best_distance = target, distance
        return best


class IpHash(Hash):
    """Clients of one network stick to one target (nginx `ip_hash`).

    Keyed on the /24 of an IPv4 client, as nginx does, or the /64 of an IPv6
    one, so a client whose address moves within its network (NAT pools,
    privacy addresses) keeps its target. A target that is unavailable hands
    its clients to the next one on the consistent ring, and only those.
    """

    __slots__ = ()
    name = "ip_hash"

    def _position(self, key: str) -> int:
        return key_hash(client_network(key))


def client_network(ip: str) -> str:
    """The network of a client address that ip_hash keys on, as a string."""
    if ":" not in ip:
        return ip.rpartition(".")[0] or ip
    if ip.startswith("::ffff:") and "." in ip:
        # IPv4-mapped: how a dual-stack listener sees an IPv4 client.
        return ip[7:].rpartition(".")[0]
    return _ipv6_network(ip)


# Parsing IPv6 costs microseconds; a client sends many requests, so remember.
@lru_cache(maxsize=4096)
def _ipv6_network(ip: str) -> str:
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        return ip  # not an IP (a unix-socket peer, say): hash it whole
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped).rpartition(".")[0]
    return address.packed[:8].hex()


BALANCERS: Final[dict[str, type[Balancer]]] = {
    cls.name: cls for cls in (RoundRobin, LeastConn, IpHash, Hash, RandomTwo, LeastTime)
}
