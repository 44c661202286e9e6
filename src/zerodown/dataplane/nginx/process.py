"""The nginx master process: find the binary, test a config, start, adopt, signal.

nginx daemonizes (its default): the command we run forks the master and
exits, so the master is nobody's child here -- it outlives zerodown, is
never a zombie of ours, and is found again from its pid file under
state_dir. It is started in a session of its own so a terminal's ^C to
zerodown does not reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from zerodown.dataplane import binaries
from zerodown.dataplane.nginx import upstreams
from zerodown.dataplane.nginx.render import CONTROL_PATH, STATUS_PATH
from zerodown.dataplane.nginx.settings import Paths
from zerodown.dataplane.nginx.upstreams import LOAD_PATH, REPORTS_PATH, Reports, parse_reports
from zerodown.errors import DataPlaneError

__all__ = [
    "alive",
    "client_connections",
    "find_binary",
    "group",
    "launch",
    "load_table",
    "lua_works",
    "master_pid",
    "probe_generation",
    "recorded_pid",
    "reports",
    "serving_workers",
    "shutting_down",
    "test_config",
    "wait_gone",
    "workers",
]

POLL = 0.01  # seconds between looks at another process's state
ANSWER_MARGIN = 0.5  # seconds a table's answer may take past the table's expiry
PROBE_TIMEOUT = 10.0  # seconds for `nginx -t` of lua_works's probe


def find_binary(binary: str) -> str:
    return binaries.find_binary(binary, "nginx", "[proxy.nginx] binary")


def command(binary: str, paths: Paths, conf: Path, *extra: str) -> list[str]:
    # -p: relative paths resolve under state_dir; -e: errors before the
    # config's own error_log is read go there too, not to /var/log/nginx.
    return [binary, "-p", f"{paths.prefix}/", "-c", str(conf), "-e", str(paths.error_log), *extra]


@functools.cache
def lua_works(binary: str) -> bool:
    """Whether `binary` loads the Lua module upstreams = "lua" needs, by
    `nginx -t` of a configuration that loads it: Debian's module is built
    for Debian's nginx, and nginx refuses one built for another."""
    if upstreams.lua_missing():
        return False
    try:
        path = find_binary(binary)
    except DataPlaneError:
        return False
    with tempfile.TemporaryDirectory(prefix="zerodown-lua-") as tmp:
        paths = Paths(Path(tmp))
        conf = paths.prefix / "probe.conf"
        conf.write_text(
            "\n".join(
                [
                    *upstreams.main_lines(),
                    f"pid {paths.pid};",
                    f"error_log {paths.error_log};",
                    "events {}",
                    f"http {{ lua_shared_dict {upstreams.DICT} 16k; }}",
                    "",
                ]
            )
        )
        try:
            done = subprocess.run(
                command(path, paths, conf, "-t", "-q"),
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    return done.returncode == 0


async def test_config(binary: str, paths: Paths, conf: Path, timeout: float) -> None:
    """`nginx -t` on `conf`; DataPlaneError with nginx's own words when it fails."""
    code, output = await _run(command(binary, paths, conf, "-t"), timeout)
    if code != 0:
        raise DataPlaneError(f"nginx rejected the generated configuration {conf}: {output}")


async def launch(binary: str, paths: Paths, timeout: float) -> int:
    """Start a master on the live conf; its pid once it wrote its pid file."""
    # A master killed with SIGKILL leaves its unix socket file behind, and
    # nginx refuses to bind over one. None runs here (we checked): remove it.
    paths.control_socket.unlink(missing_ok=True)
    # Its output goes to a file, not a pipe: the master inherits the
    # descriptors and keeps them open, so a pipe would never reach EOF.
    out = paths.prefix / "start.log"
    # nginx retries a busy listen address 5 times, 0.5s apart, before it gives up.
    with out.open("wb") as sink:
        try:
            code, _ = await _run(command(binary, paths, paths.conf), timeout, sink.fileno())
        except DataPlaneError as exc:
            raise DataPlaneError(f"{exc}; it said: {_one_line(out)}") from None
    output = _one_line(out)
    if code != 0:
        raise DataPlaneError(f"nginx did not start (exit {code}): {output}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (pid := master_pid(paths)) is None:
        if loop.time() > deadline:
            raise DataPlaneError(
                f"nginx started but wrote no pid file {paths.pid}: see {paths.error_log}"
            )
        await asyncio.sleep(POLL)
    return pid


def master_pid(paths: Paths) -> int | None:
    """The running master of this state_dir, from its pid file; None if none runs."""
    pid = recorded_pid(paths)
    return pid if pid is not None and alive(pid) and _is_nginx(pid) else None


def recorded_pid(paths: Paths) -> int | None:
    """The pid in the pid file, whether or not that master still runs."""
    try:
        return int(paths.pid.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it


def workers(master: int) -> set[int]:
    """The master's children now (workers, old ones still finishing included)."""
    return {pid for pid, (ppid, _) in _parents_and_groups().items() if ppid == master}


def group(leader: int) -> set[int]:
    """The nginx processes of the process group `leader` led: a daemonized
    master calls setsid(), so its workers' group is its pid, even once it died."""
    return {
        pid for pid, (_, pgrp) in _parents_and_groups().items() if pgrp == leader and _is_nginx(pid)
    }


def serving_workers(master: int) -> set[int]:
    """The master's worker processes that take requests now: not those
    shutting down, nor the cache manager and loader, which run no worker's
    init (so report no table to the driver: upstreams.py)."""
    serving = set()
    for pid in workers(master):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"worker process" in title and b"shutting down" not in title:
            serving.add(pid)
    return serving


def shutting_down(pid: int) -> bool:
    """A worker told to quit retitles itself as it closes its listeners."""
    try:
        return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _parents_and_groups() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process now."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            found[int(entry.name)] = (int(fields[1]), int(fields[2]))
        except (OSError, IndexError, ValueError):
            continue
    return found


async def wait_gone(pids: set[int], timeout: float) -> bool:
    """Wait until none of `pids` runs; False at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(alive(p) for p in pids):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL)
    return True


def signal_master(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError as exc:
        raise DataPlaneError(f"nginx master {pid} is gone: see its error log") from exc


async def probe_generation(paths: Paths) -> int | None:
    """The generation the workers serving now were rendered with; None if no answer."""
    body = await _control_get(paths, CONTROL_PATH)
    return int(body) if body is not None and body.isdigit() else None


async def client_connections(paths: Paths) -> int | None:
    """Open client connections (stub_status's "Active connections"), ours excluded."""
    body = await _control_get(paths, STATUS_PATH)
    if body is None or not body.startswith(b"Active connections:"):
        return None
    active = body.split(b"\n", 1)[0].rpartition(b":")[2].strip()
    return max(0, int(active) - 1) if active.isdigit() else None  # - this probe


async def load_table(paths: Paths, text: str, timeout: float) -> int:
    """POST a table to the workers (upstreams.py); the version it became.

    Past `timeout` the workers refuse it (X-Zerodown-Expires), so one that
    reads it late never loads a table this call reported as not loaded; the
    answer gets a moment more to arrive.
    """
    expires = {"X-Zerodown-Expires": f"{time.time() + timeout:.3f}"}
    answer = await _control(paths, LOAD_PATH, text.encode(), timeout + ANSWER_MARGIN, expires)
    if answer is None:
        raise DataPlaneError(
            f"nginx did not answer on {paths.control_socket} within {timeout + ANSWER_MARGIN:g}s: "
            "the table was not loaded (it keeps routing by the one before)"
        )
    status, body = answer
    if status != 200 or not body.isdigit():
        reason = body.decode(errors="replace") or f"status {status}"
        raise DataPlaneError(f"nginx refused the upstreams table: {reason}")
    return int(body)


async def reports(paths: Paths) -> Reports | None:
    """The workers' versions and requests in flight; None if nginx does not answer."""
    body = await _control_get(paths, REPORTS_PATH)
    return None if body is None else parse_reports(body)


async def _control_get(paths: Paths, path: str, timeout: float = 0.5) -> bytes | None:
    """GET `path` on the control socket; the body, or None if nginx does not answer."""
    answer = await _control(paths, path, None, timeout)
    return None if answer is None else answer[1]


async def _control(
    paths: Paths,
    path: str,
    body: bytes | None,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes] | None:
    """GET `path` (POST `body` to it) on the control socket: (status, body),
    or None if nginx does not answer."""
    head = f"GET {path} HTTP/1.0\r\nHost: zerodown\r\n"
    if body is not None:
        head = f"POST {path} HTTP/1.0\r\nHost: zerodown\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(str(paths.control_socket))
            try:
                writer.write(head.encode("ascii") + b"\r\n" + (body or b""))
                data = await reader.read(-1)
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    status_line, _, rest = data.partition(b"\r\n")
    words = status_line.split()
    status = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
    return status, rest.partition(b"\r\n\r\n")[2].strip()


def _one_line(path: Path) -> str:
    return path.read_text(errors="replace").strip().replace("\n", "; ")


def _is_nginx(pid: int) -> bool:
    # A stale pid file's number may belong to another program by now.
    try:
        return b"nginx" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


async def _run(argv: list[str], timeout: float, sink: int | None = None) -> tuple[int, str]:
    """Run to its exit; (exit code, its output on one line unless sent to `sink`)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if sink is None else sink,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise DataPlaneError(f"{' '.join(argv)} did not finish within {timeout}s") from None
    text = (output or b"").decode(errors="replace").strip().replace("\n", "; ")
    return process.returncode or 0, text
