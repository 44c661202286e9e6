"""The demo app as a child process: start it, learn its address, stop it.

Used by `zerodown demo` and by tests that need a real backend. Children get
their own session, so a Ctrl-C at the terminal reaches only the parent, which
then stops them in the order it chooses.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from zerodown.errors import ZerodownError

START_TIMEOUT = 15.0  # from spawn to the "listening" line, on top of any --startup-delay
STOP_TIMEOUT = 10.0  # from SIGTERM to exit; then SIGKILL

_BANNER = re.compile(r" listening on (?P<host>\S+):(?P<port>\d+)$")


class DemoError(ZerodownError):
    """A demo process did not start, or died while it should be running."""


@dataclass(frozen=True, slots=True)
class AppProcess:
    version: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        return stop_process(self.proc, timeout)


def spawn_app(
    version: str,
    *args: str,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = START_TIMEOUT,
) -> AppProcess:
    """Start `python -m zerodown.demo` and return once it listens (port 0: a free one).

    `args` are extra flags, e.g. "--error-rate", "0.3". With `--startup-delay`,
    add the delay to `timeout`.
    """
    command = [sys.executable, "-m", "zerodown.demo", "--host", host, "--port", str(port)]
    command += ["--version", version, *args]
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        line = read_line(proc, timeout)
        match = _BANNER.search(line)
        if match is None:
            raise DemoError(f"demo {version} printed {line!r}, not its listening line")
    except BaseException:
        stop_process(proc, 0)
        raise
    return AppProcess(version, match["host"].strip("[]"), int(match["port"]), proc)


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line `proc` writes to its stdout pipe, waiting at most `timeout`.

    Reads a byte at a time, so nothing after the line is consumed: lines here
    are few and short, and the next reader finds the pipe as it was.
    """
    assert proc.stdout is not None, "start the process with stdout=PIPE"
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    line = bytearray()
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DemoError(f"{describe(proc)} printed no line within {timeout:g}s")
        # poll(), not select(): a process with many files open (a test run)
        # has descriptors past select()'s limit of 1024.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if poller.poll(remaining * 1000):
            byte = os.read(fd, 1)
            if not byte:
                raise DemoError(f"{describe(proc)} exited with code {proc.wait()}")
            line += byte
    return line[:-1].decode(errors="replace")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait up to `timeout`, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    code = proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return code


def describe(proc: subprocess.Popen[bytes]) -> str:
    """The command line of `proc`, for messages."""
    args = proc.args
    return " ".join(map(str, args)) if isinstance(args, list) else str(args)
