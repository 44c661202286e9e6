"""NginxDataPlane: zerodown's routing table carried by a real nginx.

A change whose configuration text is the live one's (upstreams = "lua":
targets, weights, drains, health verdicts; upstreams.py) is a table: write
it beside the config, POST it to the control socket, wait until every
worker reports routing by it. Any other change is render -> write to a
side file -> `nginx -t` it -> rename over the live file -> SIGHUP -> wait
until the control location answers the new generation (so the new workers
serve it before apply returns).
Concurrent applies coalesce: whoever holds the lock next renders the last
table asked for, and the ones it covered return without a reload.

The master outlives the driver. `start` adopts a master that the pid file
under state_dir names and that still runs, with the table and listen
addresses the last driver saved beside it (state.json), instead of
starting a second one on the same ports.

Drain: nginx cannot say how many requests a target has open (the access
log sees a request only when it ends). By reload: after the reload that
marks a target down, no new request can reach it, and the requests it
still has all live in the workers of the configurations before: those
workers exit exactly when their last request ends (or at
worker_shutdown_timeout). So a drain is complete when the workers that
existed before its reload are gone. That may wait on other targets' long
requests as well -- never shorter than the truth, bounded by the drain's
timeout. By table: once the workers route by a table without the target,
the drain is complete when no connection to it is open (sockets.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import pwd
import secrets
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Final

from zerodown.dataplane.accesslog import LogSocket, LogTarget, RefusalLog
from zerodown.dataplane.base import ManagedDataPlane
from zerodown.dataplane.nginx import process, sockets, upstreams
from zerodown.dataplane.nginx.accesslog import AccessCounters, Try
from zerodown.dataplane.nginx.health import ActiveHealth
from zerodown.dataplane.nginx.hold import HoldServers
from zerodown.dataplane.nginx.logfile import LogFile
from zerodown.dataplane.nginx.orphans import Orphans
from zerodown.dataplane.nginx.render import in_panic, render, uses_lua
from zerodown.dataplane.nginx.render import table as upstreams_table
from zerodown.dataplane.nginx.report import build_stats
from zerodown.dataplane.nginx.settings import NginxSettings, Paths
from zerodown.dataplane.nginx.streamlog import STREAM_LOG, StreamCounters
from zerodown.dataplane.prometheus import render_prometheus
from zerodown.dataplane.sticky_key import sticky_key
from zerodown.errors import DataPlaneError
from zerodown.routing import DrainResult, RoutingTable, parse_address, with_target_state
from zerodown.stats import Stats

__all__ = ["NginxDataPlane"]

log = logging.getLogger(__name__)

ERROR_LOG_TAIL: Final = 5  # lines of nginx's error log quoted in a failure
WATCH_INTERVAL: Final = 0.5  # seconds between looks at whether the master still runs
REPORT_POLL: Final = 0.02  # seconds between reads of the workers' reports (upstreams.py)
DRAIN_POLL: Final = 0.05  # seconds between counts of a draining target's connections
REQUEST_ID_PREFIX_BYTES: Final = 4  # 8 hex digits lead this host's X-Request-IDs


class NginxDataPlane(ManagedDataPlane):
    # Weighted pools, and recreate's hold (hold.py); no request rules to a
    # pool or sticky cookie (config/support.py).
    carries = frozenset({"hold"})

    def __init__(self, settings: NginxSettings, table: RoutingTable | None = None) -> None:
        self.settings = _with_user(settings)
        self.paths = Paths(settings.state_dir)
        self._table = table or RoutingTable()
        self._wanted = self._table
        self._rendered: tuple[RoutingTable, frozenset[tuple[str, str]]] | None = None
        self._listen: list[str] = []
        self._generation = 0
        self._master: int | None = None
        self._binary = ""
        self._lock = asyncio.Lock()
        self._refusals = RefusalLog(log)
        self._counters = AccessCounters(on_refusal=self._refusals)
        self._health = ActiveHealth(self._health_changed)
        self._holds = HoldServers(self.paths.prefix)
        # A second past nginx's own deadline: a quitting worker ends itself first.
        self._orphans = Orphans(self.settings.worker_shutdown_timeout + 1.0)
        self._log_socket = LogSocket(self._read_log)
        self._log_file = LogFile(self.paths.access_log, self._read_log_lines)
        self._log_file.master = lambda: self._master
        # tcp services' connections: a file of their own, always (streamlog.py).
        self._stream_counters = StreamCounters(self._counters)
        self._stream_file = LogFile(
            self.paths.access_log.with_name(STREAM_LOG), self._stream_counters.feed_lines
        )
        self._stream_file.master = lambda: self._master
        self._log = LogTarget(f"unix:{self.paths.access_socket}")
        # With upstreams = "lua": the configuration nginx runs, and the table
        # its workers route by (a change of the table alone reloads nothing).
        self._live_conf: str | None = None
        self._live_table = ""
        self._rerender: asyncio.Task[None] | None = None
        self._health_dirty = False
        self._watch: asyncio.Task[None] | None = None
        self.adopted = False  # start found a master serving this state_dir and kept it

    def __repr__(self) -> str:
        return (
            f"<NginxDataPlane master={self._master} generation={self._generation} "
            f"listen={self._listen} {self._health!r}>"
        )

    # -- lifecycle ------------------------------------------------------------

    async def start(self, listen: list[str] | list[socket.socket]) -> None:
        if any(isinstance(a, socket.socket) for a in listen):
            raise DataPlaneError("nginx binds its own sockets: give it host:port addresses")
        self._listen = [str(a) for a in listen]
        self._binary = process.find_binary(self.settings.binary)
        self.paths.temp.mkdir(parents=True, exist_ok=True)
        if self.settings.upstreams == "lua":
            _install_lua(self.paths)
        self.paths.cache.mkdir(exist_ok=True)  # nginx makes each service's directory in it
        saved = self._saved()
        self._keep_request_id_prefix(saved)
        self._open_log(saved)
        try:
            self._master = process.master_pid(self.paths)
            if self._master is not None:
                self.adopted = True
                await self._adopt(saved)
            else:
                # A master that died alone may have left workers (orphans.py).
                if (dead := process.recorded_pid(self.paths)) is not None:
                    await self._orphans.quit(dead)
                self._generation = _int(saved.get("generation"))
                await self._reload(self._table)
        except BaseException:
            self._close_log()
            raise
        await self._health.follow(self._table)
        self._watch = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        """Start nginx again, on the live table, if its master dies (kill -9, OOM)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            self._orphans.reap()
            if self._master is None or process.alive(self._master):
                continue
            log.error("nginx master %s died; starting it again", self._master)
            self._rendered = None  # whatever it served is gone: render and start
            try:
                await self._converge()
            except DataPlaneError:
                log.exception("nginx: restart failed; trying again in %ss", WATCH_INTERVAL)

    async def _adopt(self, saved: dict[str, object]) -> None:
        self._generation = await process.probe_generation(self.paths) or _int(
            saved.get("generation")
        )
        if "table" in saved:
            self._table = self._wanted = RoutingTable.model_validate(saved["table"])
        with contextlib.suppress(OSError):
            self._live_conf = self.paths.conf.read_text()
            self._live_table = self.paths.upstreams.read_text()
        # What the last driver's checks had taken out stays out until our own
        # checks (which start optimistic, every target up) re-render.
        out = {(str(k[0]), str(k[1])) for k in _list(saved.get("unhealthy")) if len(k) == 2}
        self._rendered = (self._table, frozenset(out))
        self._counters.in_panic = in_panic(self._table, frozenset(out))
        if out:
            self._health_changed()
        log.info("adopted nginx master %s at generation %s", self._master, self._generation)
        # A driver that died in a recreate's gap left nginx sending to the
        # hold socket: listen there again at once (held requests were lost).
        await self._holds.listen(self._table)
        self._holds.update(self._table)
        if saved.get("listen") != self._listen or saved.get("log") != self._log.server:
            await self._reload(self._table)

    async def stop(self, timeout: float | None = None) -> None:
        """Graceful quit (SIGQUIT); fast shutdown, then kill, past `timeout`."""
        await self.detach()
        self._orphans.reap(now=math.inf)  # a stop ends them too, at once
        master, self._master = self._master, None
        if master is None:
            return
        pids = {master, *process.workers(master)}
        wait = self.settings.reload_timeout if timeout is None else timeout
        for sig, grace in ((signal.SIGQUIT, wait), (signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)):
            # The master tells its workers; only a kill must reach each one.
            for pid in pids if sig == signal.SIGKILL else {master}:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if await process.wait_gone(pids, grace):
                return
        raise DataPlaneError(f"nginx master {master} did not exit after SIGKILL")

    async def detach(self) -> None:
        """Let go of nginx without stopping it: it keeps serving the last table."""
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait([self._watch])
            self._watch = None
        if self._rerender is not None:
            self._rerender.cancel()
            await asyncio.wait([self._rerender])
            self._rerender = None
        await self._health.stop()
        await self._holds.close()
        self._close_log()

    @property
    def out_by_health(self) -> frozenset[tuple[str, str]]:
        """(service, address) the live configuration keeps out because checks failed them."""
        return self._rendered[1] if self._rendered is not None else frozenset()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [parse_address(a) for a in self._listen]

    @property
    def sockets(self) -> list[socket.socket]:
        return []  # nginx holds its listening sockets; a reload keeps them

    @property
    def pids(self) -> list[int]:
        if self._master is None:
            return []
        return [self._master, *sorted(process.workers(self._master))]

    # -- the table --------------------------------------------------------------

    async def apply(self, table: RoutingTable) -> None:
        self._wanted = table
        await self._converge()

    async def _converge(self) -> None:
        """Make the last table asked for, with today's health, the live config."""
        async with self._lock:
            wanted = self._wanted  # whoever asked: applies waiting here coalesce
            unhealthy = self._unhealthy(wanted)
            if self._rendered != (wanted, unhealthy):
                try:
                    if self._same_config(wanted, unhealthy):
                        await self._load(wanted, unhealthy)
                    else:
                        await self._reload(wanted)
                except DataPlaneError:
                    # Nobody gets this table; health re-renders go on with the live one.
                    if self._wanted is wanted:
                        self._wanted = self._table
                    raise
        await self._health.follow(self._table)

    def routing(self) -> RoutingTable:
        return self._table

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        started = time.monotonic()
        spec = self._table.service(service)
        if spec is None or address not in {
            t.address for t in (*spec.stable.targets, *spec.canary.targets)
        }:
            raise DataPlaneError(f"cannot drain {address}: no such target in service {service!r}")
        before, generation = self._workers(), self._generation
        await self.apply(with_target_state(self._table, service, address, "draining"))
        if self._generation == generation:  # no reload: already out; wait on old workers
            before = {p for p in before if process.shutting_down(p)}
        left = max(0.0, timeout - (time.monotonic() - started))
        if uses_lua(spec, self.settings):
            completed = await self._wait_idle(address, before, left)
        else:
            completed = await process.wait_gone(before, left)
        return DrainResult(service, address, completed, 0, time.monotonic() - started)

    async def _wait_idle(self, address: str, old: set[int], timeout: float) -> bool:
        """A drain under zerodown_upstreams.lua: the workers before the last
        reload are gone, and no connection to `address` is open any more
        (sockets.py: a request in flight holds one; an idle one closes
        within upstreams.IDLE_TIMEOUT)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # The old workers first; the kernel's table off the loop: on a
            # busy host it is long.
            gone = not any(process.alive(p) for p in old)
            if gone and await asyncio.to_thread(sockets.count_open, address) == 0:
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(DRAIN_POLL)

    async def stats(self) -> Stats:
        self._catch_up_log()
        connections = await process.client_connections(self.paths) or 0
        unhealthy, mode = self._health.unhealthy(), self.settings.request_stats
        return build_stats(self._table, self._counters, unhealthy, connections, mode)

    async def prometheus(self) -> str:
        return render_prometheus(await self.stats())

    # -- reloads ----------------------------------------------------------------

    async def reload_tls(self) -> None:
        """nginx's graceful reload: new workers read the certificate files, old
        ones finish their connections (worker_shutdown_timeout)."""
        if self.settings.tls is not None:
            async with self._lock:
                await self._reload(self._table)

    def _same_config(self, table: RoutingTable, unhealthy: frozenset[tuple[str, str]]) -> bool:
        """Whether `table` changes only what zerodown_upstreams.lua routes by:
        then it is loaded as a table, with no reload (upstreams.py)."""
        if self.settings.upstreams != "lua" or self._live_conf is None:
            return False
        if self._master is None or not process.alive(self._master):
            return False  # nginx must start again: from the files
        self._sticky_key(table)
        text = render(
            table.services, self._listen, self.settings, self._generation, unhealthy, self._log
        )
        return text == self._live_conf

    async def _load(self, table: RoutingTable, unhealthy: frozenset[tuple[str, str]]) -> None:
        """Make `table` live with no reload: the file first (what nginx loads
        when it starts or reloads), then the workers, confirmed by their reports."""
        text = upstreams_table(table.services, self.settings, self._generation, unhealthy)
        _write_atomic(self.paths.upstreams, text)
        try:
            version = await process.load_table(self.paths, text, self._timeout)
        except DataPlaneError:
            _write_atomic(self.paths.upstreams, self._live_table)  # what nginx routes by
            raise
        self._live_table = text
        try:
            await self._caught_up(version)
        except DataPlaneError:
            # Stored, so workers may route by it yet: what is live is not
            # known now, and the next apply of any table must load it.
            self._rendered = None
            raise
        self._holds.update(table)
        self._table, self._rendered = table, (table, unhealthy)
        self._counters.in_panic = in_panic(table, unhealthy)
        self._save()

    async def _caught_up(self, version: int) -> None:
        """Wait until every serving worker routes by table `version`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            reports = await process.reports(self.paths)
            if reports is not None and reports.caught_up(self._serving_workers(), version):
                return
            if loop.time() > deadline:
                raise DataPlaneError(
                    f"nginx's workers did not take upstreams table {version} within "
                    f"{self._timeout}s: {self._error_tail()}"
                )
            await asyncio.sleep(REPORT_POLL)

    def _serving_workers(self) -> set[int]:
        return process.serving_workers(self._master) if self._master is not None else set()

    async def _reload(self, table: RoutingTable) -> None:
        """Render, test, swap in and make live `table`; the old config serves on failure."""
        unhealthy = self._unhealthy(table)
        generation = self._generation + 1
        self._sticky_key(table)
        await self._holds.listen(table)  # before nginx is told to send there
        text = render(table.services, self._listen, self.settings, generation, unhealthy, self._log)
        _write_private(self.paths.pending, text)
        lua_table = upstreams_table(table.services, self.settings, generation, unhealthy)
        if self.settings.upstreams == "lua":  # the master loads it at the SIGHUP (not `-t`)
            _write_atomic(self.paths.upstreams, lua_table)
        try:
            await process.test_config(self._binary, self.paths, self.paths.pending, self._timeout)
        except DataPlaneError:
            self.paths.pending.unlink(missing_ok=True)
            if self.settings.upstreams == "lua":
                _write_atomic(self.paths.upstreams, self._live_table)
            self._holds.update(self._table)
            raise
        os.replace(self.paths.pending, self.paths.conf)  # atomic: nginx never reads half a file
        old = self._workers()
        if self._master is None or not process.alive(self._master):
            if self._master is not None:  # died: its workers may serve on, holding the port
                await self._orphans.quit(self._master)
            self._master = await process.launch(self._binary, self.paths, self._timeout)
        else:
            process.signal_master(self._master, signal.SIGHUP)
        try:
            await self._confirm(generation, old)
        except DataPlaneError:
            self._holds.update(self._table)
            raise
        self._holds.update(table)  # held requests go to the targets nginx now routes to
        self._generation, self._table, self._rendered = generation, table, (table, unhealthy)
        self._live_conf, self._live_table = text, lua_table
        self._counters.in_panic = in_panic(table, unhealthy)
        self._save()

    def _keep_request_id_prefix(self, saved: dict[str, object]) -> None:
        """The last driver's prefix (an adopted nginx's text names it), else a new one."""
        prefix = saved.get("request_id_prefix")
        if not isinstance(prefix, str) or not prefix.isalnum():  # as the log keys (logfile.py)
            prefix = secrets.token_hex(REQUEST_ID_PREFIX_BYTES)
        self.settings = replace(self.settings, request_id_prefix=prefix)

    def _sticky_key(self, table: RoutingTable) -> None:
        """The key of sticky cookies, from state_dir when the config gave none
        (made once there: cookies outlive a restart of nginx and of us)."""
        if not self.settings.sticky_key and any(s.sticky for s in table.services):
            key = sticky_key(self.settings.state_dir)
            self.settings = replace(self.settings, sticky_key=key)

    async def _confirm(self, generation: int, old: set[int]) -> None:
        """Wait until new workers answer `generation` and `old` ones accept nothing more.

        Old workers keep accepting on the shared listening sockets until they
        handle the master's quit (they close them and retitle themselves in
        one step), so a connection made just after the new generation
        answers could still reach the old table.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while await process.probe_generation(self.paths) != generation or any(
            process.alive(p) and not process.shutting_down(p) for p in old
        ):
            if loop.time() > deadline:
                raise DataPlaneError(
                    f"nginx did not take configuration {generation} within {self._timeout}s "
                    f"(it keeps serving the one before): {self._error_tail()}"
                )
            await asyncio.sleep(process.POLL)

    def _health_changed(self) -> None:
        # Called from a checker's callback: one re-render task at a time; a
        # verdict that changes while it reloads makes it go round once more.
        self._health_dirty = True
        if self._rerender is None or self._rerender.done():
            self._rerender = asyncio.get_running_loop().create_task(self._render_health())

    async def _render_health(self) -> None:
        while self._health_dirty:
            self._health_dirty = False
            try:
                await self._converge()  # never apply(): it would replace a deploy's wanted table
            except DataPlaneError:
                log.exception("nginx: re-render after a health change failed")

    def _unhealthy(self, table: RoutingTable) -> frozenset[tuple[str, str]]:
        routed = {(s.name, t.address) for s in table.services for t in s.stable.targets}
        routed |= {(s.name, t.address) for s in table.services for t in s.canary.targets}
        return self._health.unhealthy() & routed

    @property
    def _timeout(self) -> float:
        return self.settings.reload_timeout

    def _workers(self) -> set[int]:
        return process.workers(self._master) if self._master is not None else set()

    # -- files under state_dir -------------------------------------------------

    def _save(self) -> None:
        state = {
            "generation": self._generation,
            "listen": self._listen,
            "table": self._table.model_dump(mode="json"),
            "unhealthy": sorted(self.out_by_health),
            "log": self._log.server,
            "log_key": self._log.key,
            "request_id_prefix": self.settings.request_id_prefix,
        }
        _write_atomic(self.paths.state, json.dumps(state))

    def _saved(self) -> dict[str, object]:
        try:
            value = json.loads(self.paths.state.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _error_tail(self) -> str:
        try:
            lines = self.paths.error_log.read_text(errors="replace").splitlines()
        except OSError:
            return f"no error log at {self.paths.error_log}"
        return "; ".join(lines[-ERROR_LOG_TAIL:]) or "the error log is empty"

    # -- the access log ----------------------------------------------------------

    def _open_log(self, saved: dict[str, object]) -> None:
        """Bind where nginx sends its log: where the last driver had it, if free."""
        server, key = saved.get("log"), saved.get("log_key")
        last = (
            LogTarget(server, key if isinstance(key, str) else "")
            if isinstance(server, str)
            else None
        )
        transport = self.settings.log_transport
        if transport == "file":
            self._log = self._log_file.open(last)
        else:
            self._log = self._log_socket.open(transport, self.paths.access_socket, last)
        self._counters.key = self._log.key
        self._stream_file.open(LogTarget("", self._log.key))  # the same key (render.py)

    def _close_log(self) -> None:
        self._log_socket.close()
        self._log_file.close()
        self._stream_file.close()
        self._refusals.flush()

    def _catch_up_log(self) -> None:
        """Count what the log file holds now, so stats() lag only nginx's buffers."""
        files = [self._stream_file]
        if self.settings.log_transport == "file":
            files.append(self._log_file)
        for file in files:
            try:
                file.read()
            except OSError as error:
                log.warning("nginx access log %s: %s", file.path, error)

    def _read_log(self, datagram: bytes) -> None:
        self._answered(self._counters.feed(datagram))

    def _read_log_lines(self, chunk: bytes) -> None:
        self._answered(self._counters.feed_lines(chunk))

    def _answered(self, tries: list[Try]) -> None:
        for one in tries:
            if one.status is not None and one.status < 500:
                self._health.answered((one.service, one.address))


def _with_user(settings: NginxSettings) -> NginxSettings:
    # As root with no `user`, nginx would run its workers as nobody, who
    # cannot reach the sockets and temp files under a private state_dir:
    # run them as the owner of state_dir (give `user` to drop privileges).
    if settings.user is not None or os.geteuid() != 0:
        return settings
    owner = Path(settings.state_dir)
    while not owner.exists():
        owner = owner.parent
    return replace(settings, user=pwd.getpwuid(owner.stat().st_uid).pw_name)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def _list(value: object) -> list[list[object]]:
    return [v for v in value if isinstance(v, list)] if isinstance(value, list) else []


def _install_lua(paths: Paths) -> None:
    """zerodown_upstreams.lua where nginx's workers read it; a clear error
    when the Lua module is missing."""
    missing = upstreams.lua_missing()
    if missing:
        raise DataPlaneError(
            f'[proxy.nginx] upstreams = "lua" needs nginx\'s Lua module, and '
            f"{', '.join(str(p) for p in missing)} is missing: install {upstreams.LUA_PACKAGES} "
            f'(Debian and Ubuntu), or set upstreams = "reload"'
        )
    paths.lua.mkdir(parents=True, exist_ok=True)
    target = paths.lua / upstreams.SOURCE.name
    source = upstreams.SOURCE.read_text()
    with contextlib.suppress(OSError):
        if target.read_text() == source:
            return
    _write_atomic(target, source, mode=0o644)


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Written beside, then renamed over: a reader never sees half of it."""
    side = path.with_name(path.name + ".tmp")
    _write_private(side, text, mode)
    os.replace(side, path)


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    # Owner-only by default: the config and state hold the access-log key,
    # which keeps other local users from forging the counts the canary
    # judge decides on (the Lua module, which nginx's workers read, is 0o644).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as file:
        file.write(text)
