"""CPU time and memory of a process tree, and processes by their environment, from /proc.

A proxy under test is a tree: nginx's master and workers, HAProxy's one
process with threads, zerodown's supervisor and workers. Its CPU is the sum
over the tree of utime + stime (all threads of a process are in its own
/proc/<pid>/stat line) plus cutime + cstime: a child that exits during a run
moves its time into its parent's c-fields, so the total stays monotonic and
nothing is counted twice. The parsing and the arithmetic are pure; only
`snapshot`, `tree`, `status_kb` and `with_environ` read /proc.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Stat:
    pid: int
    ppid: int
    ticks: int  # utime + stime + cutime + cstime, in clock ticks


def parse_stat(line: str) -> Stat:
    """One /proc/<pid>/stat line. The command (field 2) may hold spaces and ')'."""
    head, _, rest = line.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = rest.split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    ppid = int(fields[1])
    ticks = sum(int(f) for f in fields[11:15])
    return Stat(pid, ppid, ticks)


def descendants(root: int, parent_of: Mapping[int, int]) -> list[int]:
    """root and every process below it, root first."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parent_of.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(sorted(children.get(pid, ())))
    return out


def tree_ticks(root: int, stats: Mapping[int, Stat]) -> dict[int, int]:
    """pid -> ticks for root's tree (empty when root is gone)."""
    if root not in stats:
        return {}
    parent_of = {s.pid: s.ppid for s in stats.values()}
    return {pid: stats[pid].ticks for pid in descendants(root, parent_of)}


def ticks_delta(before: Mapping[int, int], after: Mapping[int, int]) -> int:
    """CPU ticks the tree used between two samples.

    A process born between them counts whole; one that died is in its
    parent's c-fields in `after`, and its `before` share is taken off.
    """
    return sum(after.values()) - sum(before.values())


def cpu_us_per_request(ticks: int, requests: int, clk_tck: int = CLK_TCK) -> float | None:
    """Microseconds of CPU per request; None when nothing was served."""
    if requests <= 0:
        return None
    return ticks * 1e6 / clk_tck / requests


def busy_processes(
    before: Mapping[int, int], after: Mapping[int, int], share: float = 0.1
) -> list[int]:
    """Processes that used at least `share` of the tree's CPU between two samples."""
    used = {pid: t - before.get(pid, 0) for pid, t in after.items()}
    total = sum(max(0, t) for t in used.values())
    if total <= 0:
        return []
    return sorted(pid for pid, t in used.items() if t >= share * total)


# -- reading /proc ---------------------------------------------------------------------


def snapshot(pids: Iterable[int] | None = None) -> dict[int, Stat]:
    """Stat of every process (or of `pids`), skipping those that vanish while read."""
    if pids is None:
        pids = (int(p.name) for p in PROC.iterdir() if p.name.isdigit())
    out: dict[int, Stat] = {}
    for pid in pids:
        try:
            out[pid] = parse_stat((PROC / str(pid) / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return out


def tree(root: int) -> dict[int, int]:
    """pid -> ticks for root's process tree, now."""
    return tree_ticks(root, snapshot())


def status_kb(pid: int, key: str) -> int | None:
    """A 'kB' line of /proc/<pid>/status (VmRSS, VmHWM), or None when gone."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    return parse_status_kb(text, key)


def parse_status_kb(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    return None


def tree_status_kb(root: int, key: str) -> int:
    """Sum of a status field over root's tree (shared pages of forked workers count twice)."""
    return sum(status_kb(pid, key) or 0 for pid in tree(root))


def set_affinity(pids: Iterable[int], cpus: set[int]) -> None:
    """Pin every thread of every pid (sched_setaffinity on a pid moves only its main thread)."""
    for pid in pids:
        try:
            tids = [int(t.name) for t in (PROC / str(pid) / "task").iterdir()]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                continue


def with_environ(entry: str) -> dict[int, dict[str, str]]:
    """pid -> environment of every live process whose environment holds `entry`
    ('NAME=value'): how the deploy extra finds the app instances it caused,
    which run in sessions of their own."""
    needle = entry.encode()
    found: dict[int, dict[str, str]] = {}
    for path in PROC.iterdir():
        if not path.name.isdigit():
            continue
        try:
            items = (path / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if needle in items:
            pairs = (i.decode(errors="replace").partition("=") for i in items if b"=" in i)
            found[int(path.name)] = {name: value for name, _, value in pairs}
    return found
