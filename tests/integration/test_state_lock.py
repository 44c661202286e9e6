"""One `zerodown serve` per state_dir (issue 8, item 5).

A second daemon on the same state directory used to start, adopt the first
one's app instances and stop them when it exited. Now it exits 2 at once
with one line naming the holder's pid, and a hot restart's new generation
takes the lock over from the old one without a gap. Real processes, real
files; the services are fixed upstreams, so no app is started."""

from __future__ import annotations

import functools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from zerodown.errors import ConfigError, StateDirBusy
from zerodown.store.statedir import LOCK_FILENAME, StateDirLock

DEADLINE = 15.0  # bounds a wait only: a daemon's start-up, a hand-over
POLL = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(POLL)
    return value


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def gone(pid: int) -> bool:
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class Serve:
    """`zerodown serve` on its own ports and the given state_dir."""

    def __init__(self, root: Path, name: str, state_dir: Path) -> None:
        self.admin = free_port()
        self.config = root / f"{name}.toml"
        self.out = root / f"{name}.out"
        self.config.write_text(
            f"""
[proxy]
listen = ["127.0.0.1:{free_port()}"]
admin = "127.0.0.1:{self.admin}"
state_dir = "{state_dir}"

[services.web]
route = {{ host = "*", path = "/" }}
upstreams = ["127.0.0.1:9"]
"""
        )
        env = {k: v for k, v in os.environ.items() if k != "ZERODOWN_TOKEN"}
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zerodown", "serve", "-c", str(self.config)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def serving(self) -> bool:
        assert self.proc.poll() is None, self.output()
        return listening(self.admin)


@pytest.fixture
def serves(tmp_path: Path) -> Iterator[Callable[[str, Path], Serve]]:
    started: list[Serve] = []
    pids: list[int] = []  # hot restarts' new generations, not our children

    def start(name: str, state_dir: Path) -> Serve:
        started.append(Serve(tmp_path, name, state_dir))
        return started[-1]

    yield start
    for serve in started:
        pids += [int(p) for p in re.findall(r"handed over to pid (\d+)", serve.output())]
        if serve.proc.poll() is None:
            serve.proc.send_signal(signal.SIGTERM)
            serve.proc.wait(DEADLINE)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_for(f"pid {pid} to exit", functools.partial(gone, pid))


# -- the lock itself ------------------------------------------------------------


def test_a_second_holder_is_refused_naming_the_pid_until_the_first_lets_go(
    tmp_path: Path,
) -> None:
    first = StateDirLock.acquire(tmp_path / "state")
    assert (tmp_path / "state" / LOCK_FILENAME).read_text() == f"{os.getpid()}\n"
    with pytest.raises(StateDirBusy) as refused:
        StateDirLock.acquire(tmp_path / "state")  # flock is per open file: refused here too
    assert refused.value.pid == os.getpid()
    assert isinstance(refused.value, ConfigError)  # the CLI's exit 2
    assert f"pid {os.getpid()}" in str(refused.value)
    assert str(tmp_path / "state") in str(refused.value)
    assert "\n" not in str(refused.value)
    first.close()
    StateDirLock.acquire(tmp_path / "state").close()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; "
        "from zerodown.store.statedir import StateDirLock; "
        "StateDirLock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(StateDirBusy, match=f"pid {holder.pid}"):
            StateDirLock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    StateDirLock.acquire(tmp_path).close()


# -- zerodown serve ------------------------------------------------------------------


def test_a_second_serve_on_one_state_dir_exits_2_naming_the_first(
    tmp_path: Path, serves: Callable[[str, Path], Serve]
) -> None:
    first = serves("first", tmp_path / "state")
    wait_for("the first daemon", first.serving)
    second = serves("second", tmp_path / "state")  # its own ports, the same state_dir
    assert second.proc.wait(DEADLINE) == 2, second.output()
    lines = second.output().splitlines()
    assert len(lines) == 1, lines
    assert f"pid {first.proc.pid}" in lines[0], lines
    assert "state_dir" in lines[0], lines
    assert not listening(second.admin)  # it bound nothing
    assert first.serving()
    # Another state_dir is fine.
    third = serves("third", tmp_path / "other")
    wait_for("a daemon on another state_dir", third.serving)


def test_a_hot_restart_hands_the_lock_to_the_new_generation(
    tmp_path: Path, serves: Callable[[str, Path], Serve]
) -> None:
    state_dir = tmp_path / "state"
    old = serves("old", state_dir)
    wait_for("the first generation", old.serving)
    old.proc.send_signal(signal.SIGUSR2)
    found = wait_for("the hand-over", lambda: re.search(r"handed over to pid (\d+)", old.output()))
    new = int(found.group(1))
    # While both generations run, and after the old one left, the new one holds it.
    assert (state_dir / LOCK_FILENAME).read_text() == f"{new}\n"
    assert old.proc.wait(DEADLINE) == 0, old.output()
    assert alive(new)
    assert listening(old.admin)
    late = serves("late", state_dir)
    assert late.proc.wait(DEADLINE) == 2, late.output()
    assert f"pid {new}" in late.output()
