"""The proxy process itself under a deploy's load: two workers, and hot restarts.

`zerodown serve` with `workers = 2` deploys under load; then SIGUSR2 starts
a new generation of the daemon while the load runs, which adopts the data
plane (the same host and workers keep serving) and deploys again. Counts,
never timings: failed requests, processes in /proc, pids of the apps and of
the data plane before and after (a hot restart adopts them, it does not
restart them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    Cluster,
    ClusterFactory,
    Load,
    alive,
    assert_no_failures,
    children,
    wait_for,
)

HANDOVER_TIMEOUT = 30.0


def proxy_workers(daemon: int) -> list[int]:
    """The proxy workers of the daemon's data plane (serve -> host -> workers)."""
    found = []
    for pid in [grandchild for child in children(daemon) for grandchild in children(child)]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"zerodown.dataplane.worker" in cmdline and alive(pid):
            found.append(pid)
    return found


def two_workers(daemon: int) -> list[int] | None:
    found = proxy_workers(daemon)
    return found if len(found) == 2 else None


def admin_json(cluster: Cluster, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.admin}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def hand_over(cluster: Cluster, old: int) -> int:
    """SIGUSR2 to generation `old`; wait until it exited; the new generation's pid."""
    os.kill(old, signal.SIGUSR2)

    def successor() -> int | None:
        for match in re.finditer(r"handed over to pid (\d+)", cluster.log_path.read_text()):
            pid = int(match.group(1))
            if pid != old and pid != cluster.successor:
                return pid
        return None

    new = wait_for("a new generation took over", successor, HANDOVER_TIMEOUT)
    wait_for(f"old generation {old} exited", lambda: not alive(old), HANDOVER_TIMEOUT)
    return int(new)


@pytest.mark.timeout(180)
def test_two_workers_deploy_and_hot_restart_fail_no_request(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster(proxy={"workers": "2"})
    assert cluster.daemon is not None
    first = cluster.daemon.pid
    workers: list[int] = wait_for("two proxy workers", lambda: two_workers(first), 10)

    host = cluster.dataplane_pid()
    with Load(cluster.url) as load:
        cluster.deploy_ok("v2")
        apps = sorted(p.pid for p in cluster.processes())
        second = hand_over(cluster, first)
        cluster.successor = second
        assert cluster.daemon.wait(HANDOVER_TIMEOUT) == 0, cluster.log_tail()
        # The apps and the data plane were adopted, not restarted: the same
        # processes serve, and the old daemon's exit took none of them along.
        assert sorted(p.pid for p in cluster.processes()) == apps
        assert cluster.dataplane_pid() == host
        assert all(alive(w) for w in workers)
        cluster.deploy_ok("v3")

    report = assert_no_failures(load)
    assert list(report.versions) == ["v1", "v2", "v3"], report.summary()
    stats = admin_json(cluster, "/v1/stats")
    assert stats["workers"] == 2
    totals = stats["services"]["web"]["pools"]["stable"]["totals"]
    assert totals["available"] == 2
    assert totals["targets"] == 2


def failed_restart_logged(cluster: Cluster) -> bool:
    return "hot restart failed" in cluster.log_tail()


@pytest.mark.timeout(120)
def test_a_hot_restart_that_cannot_start_leaves_the_old_generation_serving(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster()
    assert cluster.daemon is not None
    good = cluster.config.read_text()
    cluster.config.write_text(good.replace('shutdown_timeout = "10s"', "workers = 0"))
    with Load(cluster.url) as load:
        os.kill(cluster.daemon.pid, signal.SIGUSR2)
        wait_for("the failed restart logged", lambda: failed_restart_logged(cluster), 30)
        assert cluster.daemon.poll() is None
        assert cluster.get() == (200, "v1")
    assert_no_failures(load)
    # The admin API serves again, and deploys still work in the old generation.
    cluster.config.write_text(good)
    cluster.deploy_ok("v2")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_stops_every_worker_cleanly(
    make_cluster: ClusterFactory, sig: signal.Signals
) -> None:
    # systemd's stop and a terminal's Ctrl-C signal the whole process group:
    # the workers leave the order to the daemon, which stops them and exits 0.
    cluster = make_cluster(first=None, proxy={"workers": "2"})
    daemon = cluster.daemon
    assert daemon is not None
    workers: list[int] = wait_for("two proxy workers", lambda: two_workers(daemon.pid), 10)
    assert cluster.get()[0] == 503  # nothing deployed yet: the proxy itself answers
    os.killpg(daemon.pid, sig)
    assert daemon.wait(HANDOVER_TIMEOUT) == 0, cluster.log_tail()
    # The data plane is in a session of its own: the daemon stopped it, in order.
    wait_for("every worker exited", lambda: not any(alive(w) for w in workers), 10)
    assert cluster.dataplane_pid() is None
    assert "restarting" not in cluster.log_tail()  # no worker was taken for a crash


@pytest.mark.timeout(90)
def test_systemd_hears_ready_then_the_new_main_pid_then_stopping(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    # What a `Type=notify`, `NotifyAccess=all` unit needs so that a hot
    # restart's exit of the first pid is not taken for the end of the service.
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(address)
        manager.settimeout(HANDOVER_TIMEOUT)
        cluster = make_cluster(env={"NOTIFY_SOCKET": address})
        assert cluster.daemon is not None
        assert manager.recv(4096) == b"READY=1"
        second = hand_over(cluster, cluster.daemon.pid)
        cluster.successor = second
        assert manager.recv(4096) == f"MAINPID={second}\nREADY=1".encode()
        # The apps do not get the socket: they would speak for zerodown's unit.
        for app in cluster.processes():
            assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{app.pid}/environ").read_bytes()
        assert cluster.stop_daemon() == 0
        assert manager.recv(4096) == b"STOPPING=1"
