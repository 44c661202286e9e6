"""Which services' requests HAProxy logs to zerodown (dataplane/request_stats.py).

With `request_stats = "canary"`, each backend silences its requests' log
line unless its service is in a map the driver keeps: written whole before
every start and reload, and changed at run time (`add map` / `del map`)
around a deploy step's server commands, so that a canary is logged from its
first request and a service stops costing a line a request once its canary
ends. The refusals (guard.py) come before the rule and are final, so every
refused request is still logged, with its rule. Pure.
"""

from __future__ import annotations

from pathlib import Path

from zerodown.dataplane.request_stats import RequestStats, counted
from zerodown.routing import RoutingTable, ServiceSpec

__all__ = ["counted_map", "map_moves", "silence_rule"]


def counted_map(table: RoutingTable, mode: RequestStats) -> str:
    """The map file: one line per service whose requests are logged now."""
    return "".join(f"{s.name} 1\n" for s in table.http_services if counted(s, mode))


def silence_rule(spec: ServiceSpec, mode: RequestStats, path: Path) -> list[str]:
    """The backend's rule, after its refusals and before its cache: a map
    lookup costs a fraction of the line it saves (bench/README.md)."""
    if mode == "always":
        return []
    return [f"http-request set-log-level silent unless {{ str({spec.name}),map({path}) -m found }}"]


def map_moves(
    old: RoutingTable, new: RoutingTable, mode: RequestStats, path: Path
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(before, after) a step's server commands: a service counted from now on
    is added first, so its canary's first requests are logged; one no longer
    counted is removed last."""
    was = {s.name for s in old.http_services if counted(s, mode)}
    now = {s.name for s in new.http_services if counted(s, mode)}
    before = tuple(f"add map {path} {name} 1" for name in sorted(now - was))
    after = tuple(f"del map {path} {name}" for name in sorted(was - now))
    return before, after
