"""Hot restart: a new `zerodown serve` takes over the listening sockets.

On SIGUSR2 the running daemon (the old generation) starts a new one from
the same command line, so a new zerodown version or a changed config is
picked up, and gives it its listening sockets, proxy and admin, as
inherited file descriptors. The sockets never close, so no client is ever
refused: connections wait in the kernel's accept queue until one of the
two generations accepts them. The new generation serves, then says it is
ready over a pipe; only then does the old one stop accepting, let its
in-flight requests finish and exit, leaving the app instances for the new
one to adopt. If the new one fails to start, it exits and the old one
simply goes on serving. nginx's binary upgrade (USR2, then QUIT to the
old master) and HAProxy's `-x` socket transfer do the same job.

The state directory's lock (store/statedir.py) crosses too: both
generations hold it until the old one exits, so no third `zerodown serve`
can take the state directory between them.

What crosses the exec is one environment variable naming the descriptors:

    ZERODOWN_INHERIT={"listen": [5, 6], "admin": 7, "ready": 8, "state_lock": 9}
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from dataclasses import dataclass
from typing import Final

from zerodown.errors import ZerodownError

INHERIT_ENV: Final = "ZERODOWN_INHERIT"
READY: Final = b"ready\n"
READY_TIMEOUT: Final = 60.0  # a new generation that is not serving by then is given up


class HandoverError(ZerodownError):
    """The new generation did not start; the old one keeps serving."""


@dataclass(frozen=True, slots=True)
class Inherited:
    """What an old generation handed to this process."""

    listen: list[socket.socket]
    admin: socket.socket
    ready_fd: int
    state_lock_fd: int | None = None  # the state directory's lock, held with the old one

    def signal_ready(self) -> None:
        """Tell the old generation we serve; it stops accepting when it reads this."""
        try:
            os.write(self.ready_fd, READY)
        finally:
            os.close(self.ready_fd)


def inherited() -> Inherited | None:
    """The sockets an old generation passed us, or None on an ordinary start.

    The variable is removed at once, so neither our proxy workers nor the
    apps we start believe they were handed anything.
    """
    value = os.environ.pop(INHERIT_ENV, None)
    if not value:
        return None
    fds = json.loads(value)
    return Inherited(
        listen=[socket.socket(fileno=fd) for fd in fds["listen"]],
        admin=socket.socket(fileno=fds["admin"]),
        ready_fd=int(fds["ready"]),
        state_lock_fd=fds.get("state_lock"),
    )


async def start_successor(
    argv: list[str],
    listen: list[socket.socket],
    admin: socket.socket,
    state_lock_fd: int | None = None,
) -> int:
    """Start `zerodown <argv>` with our sockets (and our state directory's
    lock); return its pid once it serves.

    Raises HandoverError when it exits or stays silent past READY_TIMEOUT
    (then it is killed): the caller keeps serving as if nothing happened.
    """
    read_end, write_end = os.pipe()
    fds = [s.fileno() for s in listen]
    given: dict[str, object] = {"listen": fds, "admin": admin.fileno(), "ready": write_end}
    passed = [*fds, admin.fileno(), write_end]
    if state_lock_fd is not None:
        given["state_lock"] = state_lock_fd
        passed.append(state_lock_fd)
    env = dict(os.environ)
    env[INHERIT_ENV] = json.dumps(given)
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zerodown",
            *argv,
            pass_fds=passed,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        os.close(read_end)
        raise HandoverError(f"could not start the new generation: {exc}") from exc
    finally:
        os.close(write_end)
    try:
        said = await _read_ready(read_end, process)
    finally:
        os.close(read_end)
    if said != READY:
        if process.returncode is None:
            process.kill()
        code = await process.wait()
        raise HandoverError(f"the new generation (pid {process.pid}) did not start: exit {code}")
    return process.pid


async def _read_ready(fd: int, process: asyncio.subprocess.Process) -> bytes:
    """What the successor wrote before closing the pipe (it closes on exit too)."""
    loop = asyncio.get_running_loop()
    said = loop.create_future()

    def readable() -> None:
        if not said.done():
            said.set_result(os.read(fd, len(READY)))

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(said, READY_TIMEOUT)
    except TimeoutError:
        return b""
    finally:
        loop.remove_reader(fd)
