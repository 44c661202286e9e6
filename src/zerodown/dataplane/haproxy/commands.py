"""The table in force and the next one -> runtime API commands, or a reload. Pure.

What the runtime API can change without a reload is a backend's servers:
added, removed, weighted, set ready, draining or in maintenance. Everything
else (a new or removed service, a changed route, balance, health check,
timeouts) is in the config only, so it takes a reload; `plan` says which,
and why, so the driver can log it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zerodown.dataplane.haproxy.render import server_line
from zerodown.dataplane.haproxy.runtime import ServerRow
from zerodown.dataplane.haproxy.servers import Server, ServerState, backend_name, servers
from zerodown.routing import PoolSpec, RoutingTable, ServiceSpec, Split

__all__ = ["Plan", "converge", "expected", "plan", "removals", "sweep"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Either `reload` says why a reload is needed, or `commands` do it all."""

    commands: tuple[str, ...] = ()
    reload: str | None = None


def plan(old: RoutingTable, new: RoutingTable) -> Plan:
    reason = _reload_reason(old, new)
    if reason is not None:
        return Plan(reload=reason)
    commands: list[str] = []
    for spec in new.services:
        before = old.service(spec.name)
        assert before is not None  # same shapes: same services
        commands += _service_commands(before, spec)
    return Plan(commands=tuple(commands))


def _reload_reason(old: RoutingTable, new: RoutingTable) -> str | None:
    old_names = {s.name for s in old.services}
    new_names = {s.name for s in new.services}
    if old_names != new_names:
        added = ", ".join(sorted(new_names - old_names)) or "none"
        gone = ", ".join(sorted(old_names - new_names)) or "none"
        return f"services changed (added: {added}; removed: {gone})"
    for spec in new.services:
        before = old.service(spec.name)
        if before is not None and _shape(before) != _shape(spec):
            return f"service {spec.name}: its route, balance, checks, retries or hold changed"
    return None


def _shape(spec: ServiceSpec) -> ServiceSpec:
    """A service without its targets and split: what only a reload changes."""
    return spec.model_copy(update={"stable": PoolSpec(), "canary": PoolSpec(), "split": Split()})


def _service_commands(old: ServiceSpec, new: ServiceSpec) -> list[str]:
    """Every command that gives traffic somewhere before any that takes it
    away: sent one by one, they must never leave a moment with no server to
    take a request (a blue-green switch raises green, then drains blue)."""
    backend = backend_name(new.name)
    before = {s.name: s for s in servers(old)}
    up: list[str] = []
    down: list[str] = []
    for server in servers(new):
        where = f"{backend}/{server.name}"
        was = before.pop(server.name, None)
        if was is None:
            up += _added(new, backend, server)
            continue
        if was.address != server.address:  # never: the name is the address
            raise AssertionError(f"{where} changed address")
        if was.weight != server.weight:
            (up if server.weight > was.weight else down).append(
                f"set server {where} weight {server.weight}"
            )
        if was.state != server.state:
            (up if server.state == "ready" else down).append(
                f"set server {where} state {server.state}"
            )
    for gone in before.values():
        down += removals(backend, gone.name)
    return up + down


def _added(spec: ServiceSpec, backend: str, server: Server) -> list[str]:
    """A dynamic server starts with its health check off, whatever `check`
    says (management.txt, "add server"): `enable health` turns it on. Its
    state is set explicitly rather than trusting the version's default."""
    where = f"{backend}/{server.name}"
    line = server_line(spec, server).split(" ", 1)[1]  # its name is in `where`
    commands = [f"add server {where} {line}", f"set server {where} state {server.state}"]
    if spec.health is not None:
        commands.append(f"enable health {where}")
    return commands + _dynamic_cookie(spec, backend)


def _dynamic_cookie(spec: ServiceSpec, backend: str) -> list[str]:
    """A server added at run time has no sticky cookie until the backend's
    dynamic cookies are enabled again, which makes one for every server
    from the key and its address (HAProxy 2.6: else it answers with a
    cookie that deletes the client's, and no client can stick to it)."""
    return [f"enable dynamic-cookie backend {backend}"] if spec.sticky is not None else []


def removals(backend: str, name: str) -> list[str]:
    """Maintenance first (`del server` refuses a server in any other state),
    which also closes its idle connections. Requests still in flight keep
    their server (base.DataPlane.apply): `del server` is then refused, and
    the server, out of rotation, is deleted by a later apply (`sweep`)."""
    where = f"{backend}/{name}"
    return [f"set server {where} state maint", f"del server {where}"]


def sweep(rows: Sequence[ServerRow], table: RoutingTable) -> list[str]:
    """`del server` for servers of the table's backends that it no longer
    lists and that wait in maintenance for their last requests to end."""
    want = expected(table)
    backends = {backend for backend, _ in want}
    commands = []
    for row in rows:
        if row.backend in backends and (row.backend, row.name) not in want and row.maint:
            where = f"{row.backend}/{row.name}"
            # Entering maintenance closes a server's idle connections; the
            # ones its last requests left idle came after: out and in again.
            commands += [f"set server {where} state drain", *removals(row.backend, row.name)]
    return commands


def expected(table: RoutingTable) -> dict[tuple[str, str], Server]:
    """(backend, server) -> what `show servers state` must read back after apply."""
    return {
        (backend_name(spec.name), server.name): server
        for spec in table.services
        for server in servers(spec)
    }


def converge(
    rows: Sequence[ServerRow], want: dict[tuple[str, str], Server]
) -> tuple[list[str], list[str]]:
    """What `show servers state` read back against what the table wants:
    (commands that make it so, servers missing that no command here adds)."""
    have = {(row.backend, row.name): row for row in rows}
    commands, missing = [], []
    for (backend, name), server in want.items():
        row = have.get((backend, name))
        where = f"{backend}/{name}"
        if row is None:
            missing.append(where)
            continue
        if row.weight != server.weight:
            commands.append(f"set server {where} weight {server.weight}")
        if _state_of(row) != server.state:
            commands.append(f"set server {where} state {server.state}")
    backends = {backend for backend, _ in want}
    for (backend, name), row in have.items():
        # A server the table dropped whose `del server` found connections.
        if backend in backends and (backend, name) not in want and not row.maint:
            commands.append(f"set server {backend}/{name} state maint")
    return commands, missing


def _state_of(row: ServerRow) -> ServerState:
    return "maint" if row.maint else "drain" if row.drain else "ready"
