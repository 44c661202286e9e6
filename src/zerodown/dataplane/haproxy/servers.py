"""What HAProxy should run for a service: its backend's servers, pure.

One backend per service holds the stable and the canary pool together, each
target a server. HAProxy has no weight between backends that the runtime API
can move, but it moves a server's weight at once (`set server ... weight`):
so the canary split is carried by server weights, computed here so that the
canary pool as a whole gets `Split.canary_weight` percent of new requests,
and inside each pool the targets share their pool's part by their own
weights. One backend also keeps `add server`/`del server`, health checks and
`retries`/`redispatch` working across the pools with no reload.

HAProxy weights are 0-256; the largest share maps to 256 and the others in
proportion (rounded, and never below 1 when the share is not 0, since a
weight of 0 would take a target out that the table keeps in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from zerodown.routing import PoolName, ServiceSpec, TargetSpec, TargetState

MAX_HAPROXY_WEIGHT: Final = 256
ServerState = Literal["ready", "drain", "maint"]

# HAProxy's names take letters, digits and "-_.:" (cfgparse's invalid_char).
_NAME_BAD: Final = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass(frozen=True, slots=True)
class Server:
    """One target as an HAProxy server."""

    name: str
    address: str  # host:port, as HAProxy writes it (v6 in brackets)
    weight: int  # 0-256
    state: ServerState
    pool: PoolName
    version: str | None


def backend_name(service: str) -> str:
    return "be_" + _NAME_BAD.sub("_", service)


def server_name(address: str) -> str:
    """A server's name from its address: stable, so a target keeps its server
    (and counters) as it moves from the canary to the stable pool."""
    return "t_" + _NAME_BAD.sub("_", address)


def servers(spec: ServiceSpec) -> tuple[Server, ...]:
    """The backend's servers, stable pool first, each with its HAProxy weight."""
    shares = _shares(spec)
    top = max(shares.values(), default=0.0)
    out = []
    for pool, target in _targets(spec):
        share = shares[target.address]
        out.append(
            Server(
                name=server_name(target.address),
                address=target.address,
                weight=_scaled(share, top),
                state=_state(target.state),
                pool=pool,
                version=target.version,
            )
        )
    return tuple(out)


def _targets(spec: ServiceSpec) -> list[tuple[PoolName, TargetSpec]]:
    stable: list[tuple[PoolName, TargetSpec]] = [("stable", t) for t in spec.stable.targets]
    canary: list[tuple[PoolName, TargetSpec]] = [("canary", t) for t in spec.canary.targets]
    return stable + canary


def _shares(spec: ServiceSpec) -> dict[str, float]:
    """Each target's share of the service's traffic, in percent.

    Only ready targets share: a draining or down one is out of rotation
    anyway (state drain/maint), and counting it would starve its pool.
    A pool with nothing ready gives its part to the other (as the embedded
    proxy does: the split is between pools that can serve).
    """
    canary_part = spec.split.canary_weight
    stable_w = _ready_weight(spec.stable.targets)
    canary_w = _ready_weight(spec.canary.targets)
    if canary_w == 0:
        canary_part = 0.0
    elif stable_w == 0:
        canary_part = 100.0
    parts = {"stable": (100.0 - canary_part, stable_w), "canary": (canary_part, canary_w)}
    shares = {}
    for pool, target in _targets(spec):
        part, total = parts[pool]
        ready = target.state == "ready" and total > 0
        shares[target.address] = part * target.weight / total if ready else 0.0
    return shares


def _ready_weight(targets: tuple[TargetSpec, ...]) -> int:
    return sum(t.weight for t in targets if t.state == "ready")


def _scaled(share: float, top: float) -> int:
    if share <= 0 or top <= 0:
        return 0
    return max(1, round(MAX_HAPROXY_WEIGHT * share / top))


_STATES: Final[dict[TargetState, ServerState]] = {
    "ready": "ready",
    "draining": "drain",
    "down": "maint",
}


def _state(state: TargetState) -> ServerState:
    return _STATES[state]
