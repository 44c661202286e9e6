"""The processes under test and in support: the fixed nginx backends, the
proxies (zerodown on each data plane, nginx, HAProxy), and zerodown's demo
app. Each is rendered from a template in bench/templates into its own
temporary directory and started under the Supervisor, never as a system
service.
"""

from __future__ import annotations

import os
import socket
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zdbench import procfs
from zdbench.model import EXTRA, Variant
from zdbench.procs import StartError, Supervisor, tail

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
READY_TIMEOUT = 20.0  # seconds a server has to answer 200 after it was started
PORT_FREE_TIMEOUT = 10.0  # seconds a stopped proxy has to release the front port
POLL = 0.05
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"


class _Template(string.Template):
    delimiter = "@"  # nginx and HAProxy configs are full of '$', '%' and '{'


def render(template: str, **values: object) -> str:
    text = (TEMPLATES / template).read_text()
    return _Template(text).substitute({k: str(v) for k, v in values.items()})


@dataclass(frozen=True, slots=True)
class Ports:
    front: int
    admin: int
    backends: tuple[int, int]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_user_line() -> str:
    # As root, nginx would run its workers as 'nobody', who cannot use the temp dirs.
    return "user root;" if os.geteuid() == 0 else ""


def start_backend(sup: Supervisor, port: int, work: Path) -> subprocess.Popen[bytes]:
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(render("nginx-backend.conf", dir=work, port=port, user=nginx_user_line()))
    proc = sup.start(_nginx_argv(work, conf), log=work / "stdout.log")
    wait_ready(proc, port, work / "stdout.log", work / "error.log")
    return proc


def start_proxy(
    sup: Supervisor,
    variant: Variant,
    ports: Ports,
    work: Path,
    *,
    cpus: str | None,
    upstreams: tuple[int, ...] | None = None,
    zerodown_extra: str = "",
) -> subprocess.Popen[bytes]:
    """Start one proxy on the front port and wait until it answers 200."""
    work.mkdir(parents=True, exist_ok=True)
    b1, b2 = ports.backends
    values = {"dir": work, "port": ports.front, "workers": variant.workers}
    log = work / "stdout.log"
    if variant.proxy == "nginx":
        conf = work / "nginx.conf"
        conf.write_text(
            render("nginx-proxy.conf", **values, backend1=b1, backend2=b2, user=nginx_user_line())
        )
        argv = _nginx_argv(work, conf)
    elif variant.proxy == "haproxy":
        conf = work / "haproxy.cfg"
        conf.write_text(render("haproxy.cfg", **values, backend1=b1, backend2=b2))
        argv = [HAPROXY, "-db", "-f", str(conf)]  # -db: foreground, no daemon
    else:
        conf = work / "zerodown.toml"
        addresses = ", ".join(f'"127.0.0.1:{p}"' for p in (upstreams or ports.backends))
        # zerodown-nginx / zerodown-haproxy: the same config, the proxy it drives as its data plane.
        lines = (f'dataplane = "{variant.dataplane}"', EXTRA.get(variant.proxy, ""), zerodown_extra)
        extra = "\n".join(line for line in lines if line)
        conf.write_text(
            render("zerodown.toml", **values, admin=ports.admin, upstreams=addresses, extra=extra)
        )
        argv = [str(Path(sys.executable).parent / "zerodown"), "serve", "-c", str(conf)]
    proc = sup.start(argv, log=log, cpus=cpus)
    wait_ready(proc, ports.front, log, work / "error.log")
    return proc


def proxy_tree(pid: int, work: Path) -> dict[int, int]:
    """pid -> CPU ticks of the proxy's tree, and of the nginx master zerodown's nginx
    driver started under `work`: it daemonizes (the data plane outlives its
    controller), so it is nobody's child and is found by its pid file."""
    ticks = procfs.tree(pid)
    for pid_file in work.glob("state/**/nginx.pid"):
        try:
            ticks.update(procfs.tree(int(pid_file.read_text().strip())))
        except (OSError, ValueError):
            continue
    return ticks


def start_demo(sup: Supervisor, port: int, work: Path) -> subprocess.Popen[bytes]:
    """zerodown's demo app (POST echoes, GET /bytes?n=N streams), the stream test's backend."""
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "zerodown.demo", "--port", str(port), "--version", "v1"]
    proc = sup.start(argv, log=work / "demo.log")
    wait_ready(proc, port, work / "demo.log")
    return proc


def wait_ready(proc: subprocess.Popen[bytes], port: int, *logs: Path) -> None:
    """Until GET / on the port answers 200; StartError if the process exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with {proc.returncode}: {_tails(logs)}")
        if http_status(port) == 200:
            return
        time.sleep(POLL)
    raise StartError(f"no 200 on port {port} within {READY_TIMEOUT:g}s: {_tails(logs)}")


def wait_listening(proc: subprocess.Popen[bytes], port: int, *logs: Path) -> None:
    """Until the port accepts connections (whatever it answers); StartError as `wait_ready`."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"exited with {proc.returncode}: {_tails(logs)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(POLL)
    raise StartError(f"nothing listening on port {port} within {READY_TIMEOUT:g}s: {_tails(logs)}")


def wait_port_free(port: int) -> None:
    deadline = time.monotonic() + PORT_FREE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
        except OSError:
            return
        time.sleep(POLL)
    raise StartError(f"port {port} still accepts connections after its proxy stopped")


def http_status(port: int, path: str = "/") -> int | None:
    """Status of one GET on a fresh connection, None when it cannot be had."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode())
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def version(argv: list[str]) -> str:
    """First line a program prints about its version ('' when it cannot be run)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _nginx_argv(work: Path, conf: Path) -> list[str]:
    # -e: nginx opens its compiled-in error log before reading the config otherwise.
    return [NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]


def _tails(logs: tuple[Path, ...]) -> str:
    return " / ".join(t for t in (tail(p) for p in logs) if t) or "no output"
