"""The life of one exchange as a state machine: phases, the moves between
them, and the one function that applies a move (as h11's `_state.py` does).

Pure: no I/O. The exchange asks `advance` for every change of phase, so a
move the table does not list is a bug that raises at once (PhaseError)
instead of a response written twice or a connection reused mid-body.

    QUEUED ─▶ ROUTING ─▶ CONNECTING ─▶ SENT ─▶ STREAMING ─▶ DONE
       └──────────────── a cache hit (caching.py) ──────────────▶ DONE
                 ▲           │  ▲        │         │    ╲
                 └───────────┴──┼────────┘ retry   ▼     ╲
                                └── keep-alive race  TUNNEL ─▶ DONE
    any phase before DONE ─▶ FAILED (the proxy answered, or cut the client)

Why an exchange is cut from outside (a drain deadline, the client breaking
protocol mid-body) is not a phase: the phase still says how far it got, and
that decides what the client is told (a status, or a cut connection).
"""

from __future__ import annotations

import enum
from typing import Final


class PhaseError(RuntimeError):
    """A move the transition table does not allow: a bug in the proxy, never input."""


class Phase(enum.Enum):
    QUEUED = "queued"  # parsed; waits its turn behind pipelined requests
    ROUTING = "routing"  # choosing a target (a held request waits here); retries come back
    CONNECTING = "connecting"  # an attempt: waiting for a connection slot, or connecting
    SENT = "sent"  # the request head is on the wire; waiting for the response head
    STREAMING = "streaming"  # response head forwarded; the body flows to the client
    TUNNEL = "tunnel"  # the target switched protocols (101): bytes pass both ways
    DONE = "done"  # the target's response was forwarded in full
    FAILED = "failed"  # the proxy answered itself, or cut the client connection

    # Filled in below from TRANSITIONS: a tuple, so `advance` tests membership
    # by identity and hashes nothing (Enum.__hash__ is a Python-level call).
    successors: tuple[Phase, ...]


TRANSITIONS: Final[dict[Phase, tuple[Phase, ...]]] = {
    Phase.QUEUED: (Phase.ROUTING, Phase.DONE, Phase.FAILED),  # DONE: answered from the cache
    Phase.ROUTING: (Phase.CONNECTING, Phase.FAILED),
    Phase.CONNECTING: (Phase.SENT, Phase.ROUTING, Phase.FAILED),
    # Back to CONNECTING: the keep-alive race, once more on a fresh connection.
    Phase.SENT: (Phase.STREAMING, Phase.ROUTING, Phase.CONNECTING, Phase.FAILED),
    Phase.STREAMING: (Phase.DONE, Phase.TUNNEL, Phase.FAILED),
    Phase.TUNNEL: (Phase.DONE, Phase.FAILED),
    Phase.DONE: (),
    Phase.FAILED: (),
}
for _phase, _next in TRANSITIONS.items():
    _phase.successors = _next

# An attempt holds (or waits for) a target in these phases: drains count it.
ATTEMPTING: Final = (Phase.CONNECTING, Phase.SENT, Phase.STREAMING, Phase.TUNNEL)
# Response bytes reached the client: a failure now can only cut the connection.
ANSWERING: Final = (Phase.STREAMING, Phase.TUNNEL)


def advance(current: Phase, new: Phase) -> Phase:
    """The phase after moving from `current` to `new`; PhaseError if the table forbids it."""
    if new not in current.successors:
        raise PhaseError(f"exchange cannot move from {current.value} to {new.value}")
    return new
