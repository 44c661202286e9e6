"""Every process the suite starts, and the guarantee that none outlives it.

Each child starts in its own session (so its process group id is its pid)
and is stopped by signalling the whole group: SIGTERM, then SIGKILL after a
grace. `Supervisor.close` stops whatever is left; `guard` makes sure it runs
on a normal exit, an exception, Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a group
RUN_SLACK = 20.0  # seconds a timed command (wrk -d N) may run past its own N


class StartError(RuntimeError):
    """A process exited, or never became ready, when started."""


class Supervisor:
    def __init__(self) -> None:
        self._live: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        cpus: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """argv in its own session, output to `log`, pinned to `cpus` ('0', '1-3') if given."""
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]  # taskset execs: the pid stays argv's
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        self._live.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, timeout: float, cpus: str | None = None) -> str:
        """Run to completion and return stdout; the group is killed past `timeout`."""
        return self.call(argv, timeout=timeout, cpus=cpus)[1]

    def call(
        self, argv: Sequence[str], *, timeout: float, cpus: str | None = None
    ) -> tuple[int, str]:
        """As `run`, with the exit code: (code, stdout and stderr)."""
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._live.append(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            self.stop(proc)
        return proc.returncode, out.decode(errors="replace")

    def stop(self, proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
        """SIGTERM the group, SIGKILL it after `grace`, reap."""
        try:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
            # Workers may outlive a leader that exited: the group goes either way.
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(grace)
        finally:
            if proc in self._live:
                self._live.remove(proc)

    def close(self) -> None:
        """Stop every process still running, newest first."""
        for proc in reversed(list(self._live)):
            with contextlib.suppress(Exception):
                self.stop(proc, grace=2.0)


@contextlib.contextmanager
def guard(supervisor: Supervisor) -> Iterator[Supervisor]:
    """Close the supervisor however the run ends, SIGTERM and SIGHUP included."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    atexit.register(supervisor.close)
    try:
        yield supervisor
    finally:
        supervisor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
