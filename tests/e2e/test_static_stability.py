"""The data plane outlives its controller (issue 9, items 1 and 2).

`zerodown serve` is SIGKILLed under load: the data plane keeps serving the
table in force (no failed request, no refused connection), keeps checking
health while nobody controls it, and a new `serve` adopts it; then deploys
work again. A hot restart adopts it too, and one that changes the number of
workers replaces it by a new data plane on the same sockets. Each is run
with keep-alive clients and with a new connection per request.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import pytest

from .conftest import (
    INSTANCES,
    Cluster,
    ClusterFactory,
    Load,
    alive,
    assert_no_failures,
    served_between,
    wait_for,
)

HANDOVER_TIMEOUT = 30.0
ONE_CONNECTION_PER_REQUEST: dict[str, Any] = {"headers": {"Connection": "close"}}
CONNECTIONS = {"keep-alive": {}, "new-connection": ONE_CONNECTION_PER_REQUEST}


def successor_of(cluster: Cluster, old: int) -> int | None:
    for match in re.finditer(r"handed over to pid (\d+)", cluster.log_path.read_text()):
        if int(match.group(1)) not in (old, cluster.successor):
            return int(match.group(1))
    return None


def hot_restart(cluster: Cluster) -> None:
    assert cluster.daemon is not None
    old = cluster.daemon.pid
    os.kill(old, signal.SIGUSR2)
    new = wait_for("a new generation", lambda: successor_of(cluster, old), HANDOVER_TIMEOUT)
    assert cluster.daemon.wait(HANDOVER_TIMEOUT) == 0, cluster.log_tail()
    cluster.successor = int(new)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("connections", list(CONNECTIONS))
def test_killing_the_controller_under_load_fails_nothing_and_the_next_one_adopts(
    make_cluster: ClusterFactory, connections: str
) -> None:
    cluster = make_cluster()
    host = cluster.dataplane_pid()
    assert host is not None
    with Load(cluster.url, **CONNECTIONS[connections]) as load:
        time.sleep(0.5)
        cluster.kill_daemon()
        killed_at = time.time()
        # Nobody controls the data plane now. It serves on, and its health
        # checks still run: an app that dies is taken out of the traffic.
        victim = cluster.processes()[0].pid
        os.kill(victim, signal.SIGKILL)
        time.sleep(2.0)
        restarted_at = time.time()
        cluster.start()
        # The new controller adopts the data plane, and replaces the dead app.
        wait_for("the fleet whole again", lambda: cluster.settled("v1"), 30)
        cluster.deploy_ok("v2")
    report = assert_no_failures(load)
    assert served_between(load, killed_at, restarted_at) > 0
    assert list(report.versions) == ["v1", "v2"], report.summary()
    assert cluster.dataplane_pid() == host  # adopted, never restarted
    assert not alive(victim)
    assert cluster.settled("v2")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("connections", list(CONNECTIONS))
def test_a_hot_restart_with_services_zerodown_runs_fails_nothing(
    make_cluster: ClusterFactory, connections: str
) -> None:
    cluster = make_cluster()
    host = cluster.dataplane_pid()
    apps = sorted(p.pid for p in cluster.processes())
    with Load(cluster.url, **CONNECTIONS[connections]) as load:
        time.sleep(0.5)
        hot_restart(cluster)
        time.sleep(0.5)
        cluster.deploy_ok("v2")
    report = assert_no_failures(load)
    assert list(report.versions) == ["v1", "v2"], report.summary()
    assert cluster.dataplane_pid() == host
    assert len(apps) == INSTANCES


@pytest.mark.timeout(150)
def test_a_hot_restart_with_more_workers_replaces_the_data_plane_socket_for_socket(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster()
    host = cluster.dataplane_pid()
    config = cluster.config.read_text()
    cluster.config.write_text(config.replace("[proxy]\n", "[proxy]\nworkers = 2\n", 1))
    with Load(cluster.url) as load:
        time.sleep(0.5)
        hot_restart(cluster)
        new_host = wait_for(
            "a new data plane", lambda: (p := cluster.dataplane_pid()) != host and p, 30
        )
        wait_for("the old data plane gone", lambda: host is None or not alive(host), 30)
        time.sleep(0.5)
        cluster.deploy_ok("v2")
    report = assert_no_failures(load)
    assert list(report.versions) == ["v1", "v2"], report.summary()
    assert cluster.dataplane_pid() == new_host
