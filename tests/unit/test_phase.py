"""proxy/phase.py: the exchange's transition table, move by move (no sockets)."""

from __future__ import annotations

import itertools

import pytest

from zerodown.proxy.phase import ANSWERING, ATTEMPTING, TRANSITIONS, Phase, PhaseError, advance

P = Phase
# Every legal move, written out by hand: the table must say exactly this.
LEGAL = {
    (P.QUEUED, P.ROUTING),
    (P.QUEUED, P.DONE),  # answered from the cache (caching.py)
    (P.QUEUED, P.FAILED),  # refused on its head alone
    (P.ROUTING, P.CONNECTING),
    (P.ROUTING, P.FAILED),  # no target, hold timeout, maintenance page
    (P.CONNECTING, P.SENT),
    (P.CONNECTING, P.ROUTING),  # connect failed: the next target
    (P.CONNECTING, P.FAILED),
    (P.SENT, P.STREAMING),
    (P.SENT, P.ROUTING),  # failed before any response byte: the next target
    (P.SENT, P.CONNECTING),  # the keep-alive race: same target, fresh connection
    (P.SENT, P.FAILED),
    (P.STREAMING, P.DONE),
    (P.STREAMING, P.TUNNEL),  # a 101's head, then the switch
    (P.STREAMING, P.FAILED),  # cut mid-body: the client connection is cut
    (P.TUNNEL, P.DONE),
    (P.TUNNEL, P.FAILED),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product(Phase, Phase)))
def test_every_move_is_legal_or_raises(current: Phase, new: Phase) -> None:
    if (current, new) in LEGAL:
        assert advance(current, new) is new
    else:
        with pytest.raises(PhaseError, match=f"from {current.value} to {new.value}"):
            advance(current, new)


def test_table_and_successors_agree() -> None:
    assert set(TRANSITIONS) == set(Phase)
    for phase, successors in TRANSITIONS.items():
        assert phase.successors == successors
        assert len(set(successors)) == len(successors)


def test_done_and_failed_are_final() -> None:
    assert [p for p in Phase if not p.successors] == [P.DONE, P.FAILED]


def test_every_phase_is_reachable_and_every_life_ends() -> None:
    reached, frontier = {P.QUEUED}, [P.QUEUED]
    while frontier:
        for new in frontier.pop().successors:
            if new not in reached:
                reached.add(new)
                frontier.append(new)
    assert reached == set(Phase)
    for phase in Phase:  # FAILED is one move away from every unfinished phase
        assert not phase.successors or P.FAILED in phase.successors


def test_no_response_byte_before_streaming() -> None:
    # A retry (back to ROUTING or CONNECTING) is only possible before the
    # client got a byte: never from a phase in ANSWERING.
    for phase in ANSWERING:
        assert P.ROUTING not in phase.successors
        assert P.CONNECTING not in phase.successors
    assert set(ANSWERING) < set(ATTEMPTING)
    assert P.QUEUED not in ATTEMPTING
    assert P.ROUTING not in ATTEMPTING
