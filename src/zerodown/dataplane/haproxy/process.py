"""The HAProxy process: found, checked, started in its own session, adopted, stopped.

HAProxy runs in master-worker mode (`-W`) with a master CLI socket (`-S`):
the master outlives reloads and is the one pid to remember (pid file); its
workers serve. It is started in its own session, so it keeps serving when
zerodown exits or dies, and a later zerodown finds it again by the pid file
and the master socket, both under state_dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Final

from zerodown.dataplane import binaries
from zerodown.dataplane.haproxy.runtime import ProcEntry, command, parse_proc
from zerodown.dataplane.haproxy.settings import HaproxySettings
from zerodown.errors import DataPlaneError

START_TIMEOUT: Final = 10.0
CHECK_TIMEOUT: Final = 10.0
KILL_GRACE: Final = 2.0  # after the stop timeout, SIGTERM gets this long before SIGKILL
LOG_TAIL: Final = 2000  # characters of HAProxy's log quoted in an error


def find_binary(name: str) -> str:
    return binaries.find_binary(name, "haproxy", "[proxy.haproxy] binary")


async def check_config(binary: str, config: Path) -> None:
    """`haproxy -c`: DataPlaneError with what HAProxy said when it rejects the file."""
    proc = await asyncio.create_subprocess_exec(
        binary, "-c", "-q", "-f", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        raise DataPlaneError(
            f"`{binary} -c -f {config}` did not finish in {CHECK_TIMEOUT}s"
        ) from None
    if proc.returncode != 0:
        said = out.decode("utf-8", "replace").strip()
        raise DataPlaneError(
            f"HAProxy rejected the generated configuration ({config}); the running one "
            f"is untouched. HAProxy said:\n{said}"
        )


def spawn(binary: str, settings: HaproxySettings) -> subprocess.Popen[bytes]:
    """Start the master in its own session; its output goes to the log under state_dir."""
    args = [
        binary, "-W",
        "-S", f"{settings.master_socket},mode,600",
        "-f", str(settings.config),
        "-p", str(settings.pid_file),
    ]  # fmt: skip
    with settings.log_file.open("ab") as log:
        # Its own session: a signal to zerodown's process group (Ctrl-C, a
        # supervisor's stop) is not one to the proxy, which outlives it.
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


def read_pid(settings: HaproxySettings) -> int | None:
    try:
        text = settings.pid_file.read_text().split()
    except FileNotFoundError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def processes(settings: HaproxySettings) -> list[ProcEntry]:
    return parse_proc(await command(settings.master_socket, "show proc"))


async def workers(settings: HaproxySettings) -> list[int]:
    """The current (not old) workers' pids, from the master's `show proc`."""
    return [e.pid for e in await processes(settings) if e.kind == "worker" and not e.old]


async def failed_reloads(settings: HaproxySettings) -> int:
    return sum(e.failed for e in await processes(settings) if e.kind == "master")


async def wait_serving(
    settings: HaproxySettings,
    process: subprocess.Popen[bytes] | None,
    old: set[int],
    failed: int | None = None,
) -> list[int]:
    """Wait until a worker that is not one of `old` answers on the stats socket.

    The master writes its pid file and opens its socket before the worker
    has bound anything; the stats socket answering `show info` with the new
    worker's pid is what says the new configuration serves.
    """
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process is not None and process.poll() is not None:
            raise DataPlaneError(
                f"haproxy exited at start (status {process.returncode}); its log "
                f"{settings.log_file} ends with:\n{log_tail(settings)}"
            )
        if failed is not None and await _failed_again(settings, failed):
            raise DataPlaneError(
                "HAProxy's reload failed: the previous configuration keeps serving; "
                f"its log {settings.log_file} ends with:\n{log_tail(settings)}"
            )
        with contextlib.suppress(DataPlaneError):
            pids = await workers(settings)
            info = await command(settings.stats_socket, "show info")
            if pids and not set(pids) & old and _info_pid(info) in pids:
                return pids
        if time.monotonic() > deadline:
            raise DataPlaneError(
                f"haproxy did not serve within {START_TIMEOUT}s; its log "
                f"{settings.log_file} ends with:\n{log_tail(settings)}"
            )
        await asyncio.sleep(0.02)


async def _failed_again(settings: HaproxySettings, before: int) -> bool:
    try:
        return await failed_reloads(settings) > before
    except DataPlaneError:
        return False  # the master's socket closes across its re-exec


def _info_pid(info: str) -> int | None:
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key == "Pid" and value.strip().isdigit():
            return int(value)
    return None


def log_tail(settings: HaproxySettings) -> str:
    try:
        return settings.log_file.read_text(errors="replace")[-LOG_TAIL:]
    except FileNotFoundError:
        return "(no log)"


async def stop(pid: int, timeout: float) -> bool:
    """Soft-stop (SIGUSR1: stop listening, finish what is in flight, exit),
    then SIGTERM and SIGKILL to the session at the deadline. True if it
    ended by itself."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGUSR1)
    if await _exited(pid, timeout):
        return True
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # the master leads its session: workers are in its group
        if await _exited(pid, grace):
            break
    return False


async def _exited(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie: a master we started and that exited stays a
    zombie until reaped, and reaping it here is harmless (it is ours)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return pid_alive(pid)
