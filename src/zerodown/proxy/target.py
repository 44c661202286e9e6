"""A target: one address the data plane sends traffic to.

The routing table says what a target should be (weight, `ready`/`draining`/
`down`); the Target object carries what the data plane knows of it at run
time (in-flight count, response-time EWMA, health, connections). It outlives
table swaps: a new table that still names the address keeps the same object,
so in-flight counts, health and idle connections carry over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from zerodown.errors import IllegalTransition
from zerodown.proxy.health import TargetHealth
from zerodown.routing import AdminState, parse_address

if TYPE_CHECKING:
    from zerodown.proxy.metrics import TargetMetrics
    from zerodown.proxy.upstream import ConnectionPool


# adding -> ready <-> down, any live state -> draining -> gone. A drain can be
# called off (a rollback puts the old release back), so draining -> ready or
# down. Nothing comes back from gone: a removed address returns as a new Target.
TRANSITIONS: Final[dict[AdminState, frozenset[AdminState]]] = {
    "adding": frozenset({"ready", "down", "draining", "gone"}),
    "ready": frozenset({"down", "draining", "gone"}),
    "down": frozenset({"ready", "draining", "gone"}),
    "draining": frozenset({"ready", "down", "gone"}),
    "gone": frozenset(),
}

# Weight of the newest response time in the EWMA (nginx least_time uses a
# similar short memory so a target that slows down is noticed within ~10 requests).
EWMA_ALPHA: Final = 0.1


def transition(current: AdminState, new: AdminState) -> AdminState:
    """The one choke point for admin-state moves; raises on an illegal one."""
    if new == current:
        return current
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"target cannot go from {current} to {new}")
    return new


class Target:
    __slots__ = (
        "address",
        "connections",
        "ewma",
        "health",
        "host",
        "in_flight",
        "metrics",
        "port",
        "state",
        "sticky_until",
        "version",
        "weight",
    )

    def __init__(
        self,
        address: str,
        *,
        weight: int = 1,
        version: str | None = None,
        health: TargetHealth | None = None,
    ) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.weight = weight
        self.version = version
        self.state: AdminState = "adding"
        self.in_flight = 0
        self.ewma = 0.0  # seconds; 0 until the first response
        self.health = health if health is not None else TargetHealth()
        # Set by the data plane that owns the target; None in pure tests.
        self.connections: ConnectionPool | None = None
        self.metrics: TargetMetrics | None = None
        # While draining, sticky clients may follow it until then (monotonic
        # seconds; 0: not at all). The drain sets it (proxy/sticky.py).
        self.sticky_until = 0.0

    def __repr__(self) -> str:
        return (
            f"<Target {self.address} {self.state} w={self.weight} "
            f"in_flight={self.in_flight} serving={self.health.serving}>"
        )

    def set_state(self, new: AdminState) -> None:
        self.state = transition(self.state, new)

    @property
    def available(self) -> bool:
        """May this target get a new request now?"""
        return self.state == "ready" and self.weight > 0 and self.health.serving

    def effective_weight(self, now: float) -> float:
        """Configured weight scaled by slow start (a returning target ramps up)."""
        return self.weight * self.health.weight_factor(now)

    def record_response_time(self, seconds: float) -> None:
        if self.ewma == 0.0:
            self.ewma = seconds
        else:
            self.ewma += EWMA_ALPHA * (seconds - self.ewma)
