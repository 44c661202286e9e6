"""HaproxyDataPlane: zerodown's DataPlane carried by a real HAProxy.

start renders the config once and starts HAProxy (or adopts the one already
serving this state_dir); apply changes servers through the runtime API and
reads them back; only what the runtime API cannot change is a reload,
checked first (`haproxy -c`). The table in force and the listen addresses
are kept in a file under state_dir, so an adopting driver knows them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Final

from zerodown.dataplane.accesslog import LogTarget, RefusalLog
from zerodown.dataplane.base import DrainResult, ManagedDataPlane
from zerodown.dataplane.haproxy import process
from zerodown.dataplane.haproxy.cache import cache_map, switching
from zerodown.dataplane.haproxy.commands import converge, expected, plan, sweep
from zerodown.dataplane.haproxy.counted import counted_map, map_moves
from zerodown.dataplane.haproxy.guard import refusal_rules
from zerodown.dataplane.haproxy.hold import HOLD_SCRIPT
from zerodown.dataplane.haproxy.latency import LatencyLog
from zerodown.dataplane.haproxy.render import render, unsupported
from zerodown.dataplane.haproxy.runtime import (
    ServerRow,
    backend_cache,
    command,
    frontend_sessions,
    parse_servers_state,
    parse_stat,
    reply_error,
)
from zerodown.dataplane.haproxy.servers import backend_name, server_name
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.dataplane.haproxy.stats import build_stats
from zerodown.dataplane.haproxy.tls import write_cert_files
from zerodown.dataplane.logstream import LogStream
from zerodown.dataplane.prometheus import render_prometheus
from zerodown.dataplane.request_stats import counted
from zerodown.dataplane.sticky_key import sticky_key
from zerodown.errors import DataPlaneError
from zerodown.proxy.metrics import Histogram
from zerodown.routing import RoutingTable, parse_address, with_target_state
from zerodown.stats import Stats

__all__ = ["HaproxyDataPlane"]

log = logging.getLogger("zerodown.dataplane.haproxy")

DRAIN_POLL: Final = 0.02
WATCH_EVERY: Final = 1.0  # seconds between looks at the master while driving it


class HaproxyDataPlane(ManagedDataPlane):
    # Weighted pools, and recreate's hold (hold.py); no request rules to a
    # pool or sticky cookie (config/support.py).
    carries = frozenset({"hold"})

    def __init__(self, settings: HaproxySettings, table: RoutingTable | None = None) -> None:
        self.settings = settings
        self.table = table or RoutingTable()
        self.listen: list[str] = []
        self.master: int | None = None
        self.workers: list[int] = []
        self.adopted = False
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self.latency = LatencyLog(on_refusal=self._log_refusal)
        self._refusals = RefusalLog(log)
        # The table the rules were named from, and per backend: service, (kind, rule) by index.
        self._rules: tuple[RoutingTable, dict[str, tuple[str, list[tuple[str, str]]]]] | None = None
        self._log_stream = LogStream(self.latency.feed_lines)
        self._log: LogTarget | None = None

    def __repr__(self) -> str:
        return (
            f"<HaproxyDataPlane master={self.master} workers={self.workers} listen={self.listen}>"
        )

    # -- lifetime ---------------------------------------------------------------

    async def start(self, listen: list[str] | list[socket.socket]) -> None:
        """Adopt the HAProxy serving this state_dir, or start one; then watch it."""
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        if self._log is None:  # a start again (after a death) keeps the socket it has
            self._open_log()
        try:
            await self._start(listen)
        except BaseException:
            self._close_log()
            raise
        self.watch()

    def _open_log(self) -> None:
        """Where HAProxy logs each request (latency.py): where the last driver
        had it, if free, so an adopted HAProxy goes on sending here."""
        saved = self._saved_log()
        self._log = self._log_stream.open(saved)
        self.latency.key = self._log.key

    async def _start(self, listen: list[str] | list[socket.socket]) -> None:
        if any(isinstance(item, socket.socket) for item in listen):
            raise DataPlaneError(
                "the HAProxy data plane binds its own listeners: give it host:port addresses"
            )
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        wanted = [str(item) for item in listen]
        if await self._adopt():
            # The config moved the listeners, or the log socket moved: a reload.
            if wanted != self.listen or self._saved_log() != self._log:
                log.info(
                    "haproxy listeners %s -> %s, log to %s: reload", self.listen, wanted, self._log
                )
                async with self._lock:
                    self.listen = wanted
                    await self._write_config(process.find_binary(self.settings.binary), self.table)
                    await self._reload()
                    self._save()
            return
        binary = process.find_binary(self.settings.binary)
        self._refuse_unsupported(self.table)
        self.listen = wanted
        await self._write_config(binary, self.table)
        if not self.settings.server_state_file.exists():
            self.settings.server_state_file.write_text("1\n")  # none saved yet
        child = process.spawn(binary, self.settings)
        try:
            self.workers = await process.wait_serving(self.settings, child, set())
        except DataPlaneError:
            await process.stop(child.pid, 0.0)  # never leave a half-started one behind
            raise
        self.master = child.pid
        self._save()
        await self._confirm(self.table)

    async def _adopt(self) -> bool:
        """Adopt the HAProxy serving this state_dir, if one does: its pid file
        names a live master whose socket answers, and the saved table says
        what it serves."""
        pid = process.read_pid(self.settings)
        if pid is None or not process.pid_alive(pid) or not self.settings.table_file.exists():
            return False
        try:
            self.workers = await process.workers(self.settings)
        except DataPlaneError:
            return False  # a pid reused by something else, or a master on its way out
        saved = json.loads(self.settings.table_file.read_text())
        self.listen = list(saved["listen"])
        self.table = RoutingTable.model_validate(saved["table"])
        self.master, self.adopted = pid, True
        log.info(
            "adopted haproxy master %d (workers %s) in %s",
            pid,
            self.workers,
            self.settings.state_dir,
        )
        return True

    def watch(self) -> None:
        """While driven, start HAProxy again on the table in force if its master dies."""
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_master())

    async def _watch_master(self) -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self.master is not None and not self.alive():
                log.error("haproxy master %d died: starting it again", self.master)
                async with self._lock:
                    self.master, self.workers = None, []
                try:
                    await self._start(list(self.listen))
                except DataPlaneError as exc:
                    log.error("haproxy could not be started again: %s", exc)

    async def detach(self) -> None:
        """Stop driving; HAProxy serves on for the next controller to adopt."""
        await self._end_watch()
        self._close_log()

    async def _end_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def stop(self, timeout: float | None = None) -> None:
        await self._end_watch()
        self._close_log()
        if self.master is None:
            return
        wait = self.settings.stop_timeout if timeout is None else timeout
        if not await process.stop(self.master, wait):
            log.warning("haproxy %d did not finish within %.1fs: killed", self.master, wait)
        self.settings.pid_file.unlink(missing_ok=True)
        if self.settings.socket_dir != self.settings.state_dir:
            shutil.rmtree(self.settings.socket_dir, ignore_errors=True)  # the short one
        self.master, self.workers = None, []

    def alive(self) -> bool:
        """The master runs (for a supervisor: a dead one is started again on
        the table in force, by a new start())."""
        return self.master is not None and process.running(self.master)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [parse_address(address) for address in self.listen]

    @property
    def sockets(self) -> list[socket.socket]:
        return []  # HAProxy holds its listeners; a reload hands them over (expose-fd)

    @property
    def pids(self) -> list[int]:
        return ([self.master] if self.master is not None else []) + self.workers

    # -- the table ----------------------------------------------------------------

    def routing(self) -> RoutingTable:
        return self.table

    async def apply(self, table: RoutingTable) -> None:
        self._refuse_unsupported(table)
        async with self._lock:
            binary = process.find_binary(self.settings.binary)
            await self._sweep()
            step = plan(self.table, table)
            previous = await self._write_config(binary, table)  # a rejected one raises here
            try:
                if step.reload is not None:
                    log.info("haproxy reload: %s", step.reload)
                    await self._reload()
                else:
                    await self._send_all(*self._step(table, step.commands))
            except DataPlaneError:
                # HAProxy runs the old table: the file says so again, or the
                # next reload would bring in what this one refused.
                _write_atomic(self.settings.config, previous)
                raise
            await self._converge(table)
            self.table = table
            self._save()

    def _step(
        self, table: RoutingTable, commands: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """A step's server commands with the map moves around them (cache
        generations, counted services), and what puts it all back."""
        once, where = os.urandom(4).hex(), self.settings.cache_map
        mode, counted_at = self.settings.request_stats, self.settings.counted_map
        undo = plan(table, self.table).commands
        first, last = map_moves(self.table, table, mode, counted_at)
        back_first, back_last = map_moves(table, self.table, mode, counted_at)
        return (
            (*first, *switching(self.table, table, where, commands, once), *last),
            (*back_first, *switching(table, self.table, where, undo, once), *back_last),
        )

    async def _send_all(self, commands: tuple[str, ...], undo: tuple[str, ...]) -> None:
        """Send in order; at the first refusal put back what was sent (best
        effort: each undo command is tried, its own refusal logged) and raise."""
        for line in commands:
            problem = await self._send(line)
            if problem is not None:
                for back in undo:
                    if (refused := await self._send(back)) is not None:
                        log.warning("undo %r refused: %s", back, refused)
                raise DataPlaneError(
                    f"HAProxy refused {line!r}: {problem}; the previous table was put back"
                )

    async def _send(self, line: str) -> str | None:
        problem = reply_error(line, await command(self.settings.stats_socket, line))
        # "Server still has connections attached to it, cannot remove it.":
        # its requests finish; it stays in maintenance until a later sweep.
        if problem is not None and line.startswith("del server") and "connections" in problem:
            log.info("%s: %s; deleted later", line, problem)
            return None
        return problem

    async def reload_tls(self) -> None:
        """The certificate files again, then HAProxy's graceful reload: the new
        worker shakes hands with them, the old one finishes its connections."""
        if self.settings.tls is None:
            return
        async with self._lock:
            await self._write_config(process.find_binary(self.settings.binary), self.table)
            await self._reload()

    async def _sweep(self) -> None:
        for line in sweep(await self._servers(), self.table):
            await self._send(line)

    async def _reload(self) -> None:
        """Save the servers' states (so a reload keeps health verdicts and
        drains), ask the master to reload, and wait for the new worker."""
        state = await command(self.settings.stats_socket, "show servers state")
        self.settings.server_state_file.write_text(state)
        old = set(self.workers)
        failed = await process.failed_reloads(self.settings)
        await command(self.settings.master_socket, "reload")  # the master closes on reload
        self.workers = await process.wait_serving(self.settings, None, old, failed)

    async def _converge(self, table: RoutingTable) -> None:
        """Read the servers back; fix what differs (a reload's state file may
        restore an older weight); raise if it still differs."""
        fixes, _ = converge(await self._servers(), expected(table))
        for line in fixes:
            if (problem := await self._send(line)) is not None:
                raise DataPlaneError(f"HAProxy refused {line!r}: {problem}")
        await self._confirm(table)

    async def _confirm(self, table: RoutingTable) -> None:
        left, missing = converge(await self._servers(), expected(table))
        if left or missing:
            raise DataPlaneError(
                "HAProxy's servers do not read back as the table says: "
                f"missing {', '.join(missing) or 'none'}; "
                f"still to do: {'; '.join(left) or 'nothing'}"
            )

    async def _servers(self) -> list[ServerRow]:
        return parse_servers_state(await command(self.settings.stats_socket, "show servers state"))

    async def _write_config(self, binary: str, table: RoutingTable) -> str:
        """Render, check with `haproxy -c`, then replace the config: a rejected
        file never replaces the one in force. Returns the text it replaced."""
        try:
            previous = self.settings.config.read_text()
        except FileNotFoundError:
            previous = ""
        if self.settings.tls is not None:  # `haproxy -c` loads them: written first
            write_cert_files(self.settings.state_dir, self.settings.tls)
        if any(spec.hold is not None for spec in table.services):
            _write_atomic(self.settings.hold_script, HOLD_SCRIPT)  # the config's lua-load
        candidate = self.settings.config.with_suffix(".cfg.new")
        self._sticky_key(table)
        # Read only when HAProxy starts or reloads; at run time `set map` (apply).
        _write_atomic(self.settings.cache_map, cache_map(table))
        _write_atomic(self.settings.counted_map, counted_map(table, self.settings.request_stats))
        candidate.write_text(render(table, self.listen, self.settings, self._log))
        await process.check_config(binary, candidate)
        os.replace(candidate, self.settings.config)
        return previous

    def _sticky_key(self, table: RoutingTable) -> None:
        """The dynamic-cookie key, from state_dir when the config gave none
        (made once there: cookies outlive a restart of HAProxy and of us)."""
        if not self.settings.sticky_key and any(s.sticky for s in table.services):
            key = sticky_key(self.settings.state_dir)
            self.settings = dataclasses.replace(self.settings, sticky_key=key)

    def _save(self) -> None:
        doc: dict[str, object] = {
            "listen": self.listen,
            "table": self.table.model_dump(mode="json"),
        }
        if self._log is not None:
            doc["log"] = {"server": self._log.server, "key": self._log.key}
        _write_atomic(self.settings.table_file, json.dumps(doc))

    def _close_log(self) -> None:
        self._log_stream.close()
        self._log = None
        self._refusals.flush()

    def _saved_log(self) -> LogTarget | None:
        """The log target the running HAProxy's config names (the last save)."""
        try:
            last = json.loads(self.settings.table_file.read_text())["log"]
            return LogTarget(str(last["server"]), str(last["key"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _refuse_unsupported(self, table: RoutingTable) -> None:
        problems = unsupported(table)
        if problems:
            raise DataPlaneError("HAProxy cannot carry: " + "; ".join(problems))

    # -- drain and stats --------------------------------------------------------------

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        started = time.monotonic()
        spec = self.table.service(service)
        if spec is None or all(
            t.address != address for t in (*spec.stable.targets, *spec.canary.targets)
        ):
            raise DataPlaneError(f"no target {address} in service {service!r} to drain")
        await self.apply(with_target_state(self.table, service, address, "draining"))
        where = f"{backend_name(service)}/{server_name(address)}"
        deadline = started + timeout
        # In `drain`, HAProxy still sends a server its cookie clients: for
        # the first half of the drain only, as the embedded proxy does, so
        # that they cannot keep it busy past the deadline (maint moves them;
        # requests in flight stay).
        release = started + timeout / 2 if spec.sticky is not None else math.inf
        while (busy := await self._sessions(service, address)) > 0:
            if time.monotonic() >= release:
                await self._send(f"set server {where} state maint")
                release = math.inf
            if time.monotonic() >= deadline:
                # The deadline cuts what is left, WebSockets included.
                await self._send(f"shutdown sessions server {where}")
                return DrainResult(service, address, False, busy, time.monotonic() - started)
            await asyncio.sleep(DRAIN_POLL)
        return DrainResult(service, address, True, 0, time.monotonic() - started)

    async def _sessions(self, service: str, address: str) -> int:
        backend, name = backend_name(service), server_name(address)
        for row in parse_stat(await command(self.settings.stats_socket, "show stat")):
            if row.backend == backend and row.name == name:
                return row.sessions + row.queued
        return 0

    async def stats(self) -> Stats:
        text = await command(self.settings.stats_socket, "show stat")
        self._histograms_of_counted()
        rows = parse_stat(text)
        return build_stats(
            self.table,
            rows,
            frontend_sessions(text),
            self.latency.servers,
            self.latency.backends,
            backend_cache(text),
        )

    def _log_refusal(self, backend: str, kind: str, index: int, client: str, times: int) -> None:
        """A refused request's record, its rule named from its index (guard.py)."""
        if self._rules is None or self._rules[0] is not self.table:  # once per table
            by_backend = {
                backend_name(s.name): (s.name, refusal_rules(s)) for s in self.table.services
            }
            self._rules = (self.table, by_backend)
        service, rules = self._rules[1].get(backend, (backend, []))
        if 0 <= index < len(rules) and rules[index][0] == kind:
            rule = rules[index][1]
        else:  # the table changed between the request and this read
            rule = f"rule #{index} of a table no longer in force"
        self._refusals(service, kind, rule, client, times)

    def _histograms_of_counted(self) -> None:
        """A histogram for every server of a service whose requests are logged
        now, empty until its first line (so a canary's first look reads a
        histogram, not show stat's mean); none for the others, whose latency
        is then show stat's (stats.target_stats), and memory stays bounded."""
        mode = self.settings.request_stats
        names = {backend_name(s.name) for s in self.table.services if counted(s, mode)}
        keep = {key for key in expected(self.table) if key[0] in names}
        self.latency.forget_all_but(keep)
        for key in keep:
            self.latency.servers.setdefault(key, Histogram())

    async def prometheus(self) -> str:
        return render_prometheus(await self.stats())


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_suffix(path.suffix + ".new")
    temp.write_text(text)
    os.replace(temp, path)
