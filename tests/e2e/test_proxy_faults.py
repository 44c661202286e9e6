"""The proxy process killed with SIGKILL in the middle of a deploy, under load.

HAProxy or nginx -- master and workers, their whole process group, as a
crash or an OOM kill of the unit leaves it -- dies while a blue-green deploy
starts the new release. zerodown notices (it watches the master while it
drives it) and starts the proxy again on the table in force, the old
release's instances (not the configuration's first table); the deploy then
goes on through the new process and completes. With the embedded data plane
the same is a SIGKILL of its host process and workers.

What the contract allows, and what is asserted, by count:

- a failure only of the kinds a dead process causes: `connect` (nothing
  listens) or `reset` (a connection it held is gone) -- never a 5xx, a
  timeout or a broken response: the restarted proxy knows the old release;
- only for a request in flight at the kill or started before the proxy was
  back (accepting connections again): at most the load's rate over that
  outage plus one request per load connection;
- nothing failed once it was back; the old release served until the deploy
  moved the traffic; the deploy completed and only the new release runs.

The first test's kill lands while the new release starts (the "slow"
label: 4 s), a window in which the deploy sends the proxy nothing, so no
step races the restart. The second's lands in a canary's manual pause, where
the judge looks at the proxy's counters every second: a look that meets the
dead proxy is skipped (no sample is no evidence), and the promote or the
abort that follows waits for the restarted proxy (dataplane/restarts.py),
so the deploy ends cleanly: succeeded, or rolled back with the old release
serving alone -- never both releases left behind a restarted proxy.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

import pytest

from .conftest import (
    DATAPLANES,
    LOAD_CONCURRENCY,
    LOAD_RATE,
    Cluster,
    ClusterFactory,
    Load,
    group_members,
    served_between,
    through,
    wait_for,
)

RESTART_TIMEOUT = 10.0  # the drivers look at the master every 0.5-1 s, then start it
DYING = frozenset({"connect", "reset"})  # what a killed process can do to a request


def starting(cluster: Cluster) -> bool:
    return (cluster.status()["deploying"] or {}).get("state") in ("starting", "gating")


def started_again(cluster: Cluster, old: int) -> int | None:
    pid = cluster.dataplane_pid()
    return pid if pid is not None and pid != old else None


def accepting(cluster: Cluster) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", cluster.listen)) == 0


def first_shift(view: dict[str, Any]) -> float:
    """When the deploy first sent the proxy a new table (wall clock, from its journal)."""
    return min(
        float(s["at"])
        for s in view["steps"]
        if s["kind"] == "set_traffic" and s["phase"] == "before"
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_proxy_killed_mid_deploy_is_started_again_on_the_table_in_force(
    make_cluster: ClusterFactory, dataplane: str
) -> None:
    # Blue-green: the new release starts in one round, so one window to kill in.
    cluster = make_cluster(wrapper=True, strategy='"blue_green"', proxy=through(dataplane))
    with Load(cluster.url) as load:
        deploy = cluster.cli_background("deploy", "web", "slow", "--json")
        wait_for("the new release starting", lambda: starting(cluster), 30)
        old = cluster.dataplane_pid()
        assert old is not None
        killing_at = time.time()
        cluster.kill_dataplane()
        wait_for("the proxy started again", lambda: started_again(cluster, old), RESTART_TIMEOUT)
        wait_for("the proxy accepting", lambda: accepting(cluster), RESTART_TIMEOUT)
        back_at = time.time()
        out, err = deploy.communicate(timeout=60)
    view: dict[str, Any] = json.loads(out) if out else {}
    assert deploy.returncode == 0, (view, err, cluster.log_tail())
    assert view["outcome"] == "succeeded", view
    shifted_at = first_shift(view)
    assert back_at < shifted_at, (back_at, view["steps"])  # no step raced the restart

    report = load.report
    failed = [s for s in load.result.samples if s.failure is not None]
    outage = back_at - killing_at
    summary = f"outage {outage:.2f}s, {report.summary()}\nfailures: {failed[:10]}"
    assert {s.failure for s in failed} <= DYING, summary
    for sample in failed:
        start, end = load.wall(sample)
        assert start <= back_at, summary  # nothing fails once the proxy is back
        assert end >= killing_at, summary  # nor before it was killed
    assert len(failed) <= LOAD_RATE * outage + LOAD_CONCURRENCY, summary
    # The restarted proxy carried the old release: the table in force.
    assert served_between(load, back_at, shifted_at) > 0, summary
    assert list(report.versions) == ["v1", "slow"], summary
    wait_for("only the new release running", lambda: cluster.settled("slow"), 15)


# A canary whose one step waits for a person: the kill lands in that pause.
MANUAL_CANARY = '{ steps = [{ weight = 50, pause = "manual" }], min_requests = 20 }'
LOOKS = 2.0  # seconds of the judge's looks (one a second) against the restarted proxy


def waiting_for_promote(cluster: Cluster) -> bool:
    return bool(cluster.status()["paused"])


# Both verdicts where a restart loses the proxy's runtime state (HAProxy's
# servers, the embedded host's table); nginx starts again from its rendered
# file, as any reload does: one verdict (~25 s each, kept to five).
CASES = [
    ("embedded", "promote"),
    ("embedded", "abort"),
    ("haproxy", "promote"),
    ("haproxy", "abort"),
    ("nginx", "abort"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("dataplane", "verdict"), CASES)
def test_proxy_killed_in_a_canary_pause_then_promote_or_abort_ends_cleanly(
    make_cluster: ClusterFactory, dataplane: str, verdict: str
) -> None:
    cluster = make_cluster(strategy='"canary"', canary=MANUAL_CANARY, proxy=through(dataplane))
    with Load(cluster.url) as load:
        deploy = cluster.cli_background("deploy", "web", "v2", "--json")
        wait_for("the manual pause", lambda: waiting_for_promote(cluster), 30)
        old = cluster.dataplane_pid()
        assert old is not None
        killing_at = time.time()
        cluster.kill_dataplane()
        wait_for("the proxy started again", lambda: started_again(cluster, old), RESTART_TIMEOUT)
        wait_for("the proxy accepting", lambda: accepting(cluster), RESTART_TIMEOUT)
        back_at = time.time()
        time.sleep(LOOKS)  # the pause goes on: its looks skipped the outage, none failed it
        assert waiting_for_promote(cluster), cluster.log_tail()
        assert cluster.cli(verdict, "web").returncode == 0, cluster.log_tail()
        out, err = deploy.communicate(timeout=40)
    view: dict[str, Any] = json.loads(out) if out else {}
    wanted, version = ("succeeded", "v2") if verdict == "promote" else ("aborted", "v1")
    assert view.get("outcome") == wanted, (view, err, cluster.log_tail())
    assert "crashed" not in cluster.log_tail(200), cluster.log_tail(200)

    report = load.report
    failed = [s for s in load.result.samples if s.failure is not None]
    outage = back_at - killing_at
    summary = f"outage {outage:.2f}s, {report.summary()}\nfailures: {failed[:10]}"
    assert {s.failure for s in failed} <= DYING, summary
    for sample in failed:
        start, end = load.wall(sample)
        assert start <= back_at, summary
        assert end >= killing_at, summary
    assert len(failed) <= LOAD_RATE * outage + LOAD_CONCURRENCY, summary
    # One release serves, alone, behind the restarted proxy.
    wait_for(f"only {version} running", lambda: cluster.settled(version), 15)
    assert cluster.status()["traffic"] == {version: 100.0}, cluster.status()


@pytest.mark.timeout(60)
def test_nginx_master_killed_alone_mid_deploy_leaves_no_orphan(
    make_cluster: ClusterFactory,
) -> None:
    # kill -9 of the master only: its workers serve on, holding the port,
    # until zerodown tells them to quit and starts a master that can bind.
    cluster = make_cluster(wrapper=True, strategy='"blue_green"', proxy=through("nginx"))
    with Load(cluster.url) as load:
        deploy = cluster.cli_background("deploy", "web", "slow", "--json")
        wait_for("the new release starting", lambda: starting(cluster), 30)
        old = cluster.dataplane_pid()
        assert old is not None
        assert len(group_members(old)) > 1  # the master leads its workers' group
        killing_at = time.time()
        os.kill(old, signal.SIGKILL)
        wait_for("the proxy started again", lambda: started_again(cluster, old), RESTART_TIMEOUT)
        wait_for("the orphaned workers gone", lambda: not group_members(old), RESTART_TIMEOUT)
        wait_for("the proxy accepting", lambda: accepting(cluster), RESTART_TIMEOUT)
        back_at = time.time()
        out, err = deploy.communicate(timeout=60)
    view: dict[str, Any] = json.loads(out) if out else {}
    assert view.get("outcome") == "succeeded", (view, err, cluster.log_tail())
    failed = [s for s in load.result.samples if s.failure is not None]
    outage = back_at - killing_at
    summary = f"outage {outage:.2f}s, {load.report.summary()}\nfailures: {failed[:10]}"
    assert {s.failure for s in failed} <= DYING, summary
    assert all(load.wall(s)[0] <= back_at for s in failed), summary
    assert len(failed) <= LOAD_RATE * outage + LOAD_CONCURRENCY, summary
    wait_for("only the new release running", lambda: cluster.settled("slow"), 15)
