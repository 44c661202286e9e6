"""How an instance's process is made: argv, cwd and environment from the
release, its own session, and its output on a pipe we read.

`subprocess.Popen` rather than asyncio's subprocesses on purpose: closing an
asyncio subprocess transport kills its process (stock loop and uvloop), and
on Python 3.12+ the stock loop's transport is collected, and so closed, once
the loop is gone. Instances must outlive the daemon (a restart adopts them),
so the runtime watches exits itself (`until_exit`); a Popen never kills.
"""

from __future__ import annotations

import asyncio
import io
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from zerodown.errors import DeployError
from zerodown.release import Release
from zerodown.runtime.base import ExitReport, exit_text

EXIT_POLL: Final = 0.2  # how often liveness is polled where there is no pidfd
# The daemon's admin credential is not the app's business; nor is systemd's
# notify socket (an app that used it would speak for zerodown's unit).
WITHHELD_ENV: Final = frozenset({"ZERODOWN_TOKEN", "NOTIFY_SOCKET"})

_TEMPLATE_ERRORS = (ValueError, LookupError, AttributeError)


class RuntimeStartError(DeployError):
    """An instance could not be started at all: bad command, program not found, bad cwd."""


class InstanceExited(RuntimeStartError):
    """An instance exited while its batch was still being started."""

    def __init__(
        self,
        instance_id: str,
        code: int | None,
        started: int,
        wanted: int,
        report: ExitReport | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.code = code
        self.report = report
        said = f"; {report.output()}" if report is not None else ""
        super().__init__(
            f"instance {instance_id} exited ({exit_text(code)}) while its release was starting; "
            f"stopped after starting {started} of {wanted}{said}"
        )


@dataclass(frozen=True, slots=True)
class Spawned:
    child: subprocess.Popen[bytes]
    output: asyncio.StreamReader  # stdout and stderr, interleaved as written
    pipe: asyncio.ReadTransport  # our end of the pipe; closing it is up to the caller


async def spawn(release: Release, port: int) -> Spawned:
    """Start an instance of `release` on `port`; RuntimeStartError if it cannot start."""
    argv = command_line(release, port)
    cwd = working_directory(release)
    env = environment(release, port)
    read_end, write_fd = _pipe()
    try:
        output, pipe = await _read_end(read_end)
    except BaseException:
        os.close(write_fd)
        raise
    try:
        # On the loop's thread, as asyncio's own subprocesses do: in a worker
        # thread, a cancelled spawn would leave a child nobody knows about.
        child = subprocess.Popen(  # noqa: ASYNC220 - see the module docstring
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,  # own group: a stop signals the app and its children
        )
    except OSError as exc:
        pipe.close()
        raise RuntimeStartError(_why_not_started(release, argv, cwd, exc)) from exc
    finally:
        os.close(write_fd)  # the child has its copy; ours would keep EOF from coming
    return Spawned(child, output, pipe)


def command_line(release: Release, port: int) -> list[str]:
    """The argv of an instance: split first, then filled in, so that a version
    label with spaces or quotes stays one argument and cannot add others."""
    values = {"port": port, "version": release.version}
    try:
        argv = [arg.format_map(values) for arg in shlex.split(release.command)]
    except _TEMPLATE_ERRORS as exc:
        raise RuntimeStartError(f"bad command {release.command!r}: {exc!r}") from exc
    if not argv:
        raise RuntimeStartError(f"empty command for {release.service} {release.version}")
    return argv


def working_directory(release: Release) -> str:
    """The cwd of an instance, checked up front: uvloop would blame the program."""
    try:
        cwd = release.cwd.format_map({"version": release.version})
    except _TEMPLATE_ERRORS as exc:
        raise RuntimeStartError(f"bad cwd {release.cwd!r}: {exc!r}") from exc
    if not os.path.isdir(cwd):
        raise RuntimeStartError(
            f"cannot start {release.service} {release.version}: "
            f"working directory {cwd!r} is not a directory"
        )
    return cwd


def environment(release: Release, port: int) -> dict[str, str]:
    """The daemon's environment (less what is withheld), the release's, then ours."""
    env = {name: value for name, value in os.environ.items() if name not in WITHHELD_ENV}
    return env | dict(release.env) | {"PORT": str(port), "ZERODOWN_VERSION": release.version}


async def until_exit(pid: int, alive: Callable[[], bool]) -> None:
    """Return once process `pid` has exited (`alive()` says whether it still runs).

    A pidfd (Linux 5.3+) turns readable the moment the process exits, child
    or not; without one, `alive` is polled.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd here, or the pid is already gone
        # Not ours to be told of (not our child, maybe): the process table is all there is.
        while alive():  # noqa: ASYNC110
            await asyncio.sleep(EXIT_POLL)
        return
    try:
        # Asked after opening: had the pid been reused before we opened it,
        # the pidfd would watch a stranger, and `alive` (start time) says so.
        if alive():
            await _readable(pidfd)
    finally:
        os.close(pidfd)


async def _readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:  # called on every loop turn while readable
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def _pipe() -> tuple[io.FileIO, int]:
    """The instance's output pipe: our read end as the file asyncio's pipe
    transport takes, and the write end that Popen dups onto stdout and stderr.
    Both non-inheritable. Wrapping an fd opens no path, so nothing here blocks."""
    read_fd, write_fd = os.pipe()
    try:
        return io.FileIO(read_fd, "rb"), write_fd
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise


async def _read_end(pipe: io.FileIO) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    """A stream over `pipe`; the transport owns the file from here (closed with it)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return reader, transport


def _why_not_started(release: Release, argv: list[str], cwd: str, exc: OSError) -> str:
    return (
        f"cannot start {release.service} {release.version}: `{shlex.join(argv)}` "
        f"in {cwd!r}: {exc.filename or argv[0]!r}: {exc.strerror or exc}"
    )
