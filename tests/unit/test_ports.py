"""PortAllocator: the pure bookkeeping, with the socket probe replaced by a set."""

from __future__ import annotations

from pathlib import Path

import pytest

from zerodown.runtime.ports import NoFreePort, PortAllocator, ephemeral_overlap


class Busy:
    """A probe that reports the ports in `self.ports` busy and records what it was asked."""

    def __init__(self, *ports: int) -> None:
        self.ports = set(ports)
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> bool:
        self.asked.append((host, port))
        return port not in self.ports


def allocator(first: int = 100, last: int = 104, *busy: int) -> PortAllocator:
    return PortAllocator(first, last, host="10.0.0.1", probe=Busy(*busy))


def test_takes_ports_in_order_and_holds_them() -> None:
    ports = allocator()
    assert [ports.take() for _ in range(3)] == [100, 101, 102]
    assert ports.held == {100, 101, 102}


def test_a_released_port_comes_back_only_after_the_rest_of_the_range() -> None:
    ports = allocator()
    first = ports.take()
    ports.release(first)
    assert [ports.take() for _ in range(4)] == [101, 102, 103, 104]
    assert ports.take() == first  # the cursor wrapped round to it


def test_held_ports_are_skipped_when_the_cursor_wraps() -> None:
    ports = allocator()
    taken = [ports.take() for _ in range(5)]
    for port in (101, 103):
        ports.release(port)
    assert taken == [100, 101, 102, 103, 104]
    assert [ports.take(), ports.take()] == [101, 103]


def test_the_cursor_can_start_anywhere_in_the_range_and_wraps() -> None:
    ports = PortAllocator(100, 104, probe=Busy(), start=103)
    assert [ports.take() for _ in range(5)] == [103, 104, 100, 101, 102]
    with pytest.raises(ValueError, match="start 99 is outside the port range 100-104"):
        PortAllocator(100, 104, start=99)


def test_busy_ports_are_skipped_and_asked_about_on_our_host() -> None:
    probe = Busy(100, 102)
    ports = PortAllocator(100, 104, host="10.0.0.1", probe=probe)
    assert [ports.take(), ports.take()] == [101, 103]
    assert [port for _, port in probe.asked] == [100, 101, 102, 103]
    assert {host for host, _ in probe.asked} == {"10.0.0.1"}


def test_held_ports_are_not_probed() -> None:
    probe = Busy()
    ports = PortAllocator(100, 101, probe=probe)
    ports.hold(100)
    assert ports.take() == 101
    assert [port for _, port in probe.asked] == [101]


def test_a_port_that_became_free_is_taken_on_a_later_round() -> None:
    probe = Busy(100)
    ports = PortAllocator(100, 101, probe=probe)
    assert ports.take() == 101
    probe.ports.clear()
    assert ports.take() == 100


def test_exhausted_range_says_how_many_are_held_and_busy() -> None:
    ports = allocator(100, 103, 101)
    ports.hold(100)
    ports.hold(9999)  # an adopted instance outside the range does not count
    assert ports.take() == 102
    assert ports.take() == 103
    with pytest.raises(NoFreePort, match=r"100-103 on 10\.0\.0\.1: 3 held by instances, .* 1 busy"):
        ports.take()


def test_release_of_an_unknown_port_is_harmless() -> None:
    ports = allocator()
    ports.release(7)
    assert ports.held == frozenset()


def test_one_port_range() -> None:
    ports = allocator(100, 100)
    assert ports.take() == 100
    ports.release(100)
    assert ports.take() == 100


@pytest.mark.parametrize(("first", "last"), [(0, 10), (10, 9), (65535, 65536)])
def test_bad_ranges_are_refused(first: int, last: int) -> None:
    with pytest.raises(ValueError, match="1-65535"):
        PortAllocator(first, last)


def test_allocators_sharing_claims_never_hand_out_each_others_ports() -> None:
    claimed: set[int] = set()
    web = PortAllocator(100, 103, probe=Busy(), claimed=claimed)
    api = PortAllocator(100, 103, probe=Busy(), claimed=claimed)
    assert [web.take(), api.take(), web.take()] == [100, 101, 102]
    assert web.held == {100, 102}
    assert api.held == {101}
    assert claimed == {100, 101, 102}
    api.release(100)  # not api's to give back
    assert claimed == {100, 101, 102}
    web.release(100)
    assert api.take() == 103
    assert api.take() == 100
    with pytest.raises(NoFreePort, match="4 held by instances, the other 0 busy"):
        web.take()


def test_ephemeral_overlap_names_the_shared_part_of_the_two_ranges(tmp_path: Path) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("32768\t60999\n")
    assert ephemeral_overlap(20000, 29999, str(ranges)) is None
    assert ephemeral_overlap(30000, 40000, str(ranges)) == (32768, 40000)
    assert ephemeral_overlap(60000, 61000, str(ranges)) == (60000, 60999)
    assert ephemeral_overlap(30000, 40000, str(tmp_path / "missing")) is None
