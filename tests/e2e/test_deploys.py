"""Deploys that drop nothing, end to end: `zerodown serve` as a process, the
demo app (2 s to start) as real instances, `zerodown deploy` as the CLI a CI
job runs, and zerodown's load generator counting every request.

How many deploys per strategy: 5 through the embedded proxy (issue 3 asked
for 10), 3 through HAProxy and nginx. What changes from one deploy to the
next shows by the third: the previous release's instances still stopping or
kept warm (blue-green) as the next one starts, the lock and journal of the
deploy before, and a release pruned at each end (keep_releases = 1 here; by
default the first prune came with the 8th release). Port reuse never shows
within 10 either (the port cursor rotates over a 200-port window). Deploys
6-10 repeated deploys 1-5; they cost 100 s of the suite's 20-minute budget,
which the same tests through HAProxy and nginx needed more. With the app's
2 s start, one deploy of 2 instances costs about 6 s rolling (max_surge 1:
two start-gate-drain-stop rounds), 5.5 s canary (two 1 s steps), 3.5 s
recreate and blue-green, CLI included.

Assertions are counts, never timings: failed requests (all kinds: connect,
reset, 5xx, timeout), versions seen, processes alive in /proc.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import (
    DATAPLANES,
    INSTANCES,
    Cluster,
    ClusterFactory,
    Load,
    assert_no_failures,
    through,
    wait_for,
)

DEPLOYS_PER_STRATEGY = 5  # see the module docstring for why 5 and what they cost
# Through HAProxy and nginx the same test runs 3 deploys per strategy: the
# suite's 20-minute budget on 2 cores cannot take 5 per strategy three times.
DEPLOYS_PER_DRIVER = 3
# keep_releases: 1, so that from the third deploy on every deploy ends by
# pruning a release, under load.
KEEP_RELEASES = 1
# Long enough to span every switch and drain of a deploy (each is well under
# a second), short enough that waiting for them (two drains of a rolling
# deploy, then the last ones at the end of the load) costs seconds, not tens.
LONG_MS = 2000
LONG_CONCURRENCY = 6  # long requests kept in flight all through a deploy


def versions(first: int, last: int) -> list[str]:
    return [f"v{n}" for n in range(first, last + 1)]


# Every strategy through every data plane: recreate's gap is held by each
# (embedded: in the proxy; HAProxy: a Lua wait; nginx: the driver's socket).
STRATEGIES = ("rolling", "blue_green", "canary", "recreate")
STRATEGIES_BY_DATAPLANE = [
    *(
        (strategy, dataplane)
        for dataplane in ("embedded", "haproxy", "nginx")
        for strategy in STRATEGIES
    ),
    # nginx's other way to take a deploy step: a reload each (the canary has the most).
    ("canary", "nginx-reload"),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("strategy", "dataplane"), STRATEGIES_BY_DATAPLANE)
def test_consecutive_deploys_under_load_fail_no_request(
    make_cluster: ClusterFactory, strategy: str, dataplane: str
) -> None:
    cluster = make_cluster(
        strategy=f'"{strategy}"', keep_releases=str(KEEP_RELEASES), proxy=through(dataplane)
    )
    count = DEPLOYS_PER_STRATEGY if dataplane == "embedded" else DEPLOYS_PER_DRIVER
    deployed = versions(2, count + 1)
    with Load(cluster.url) as load:
        for version in deployed:
            view = cluster.deploy_ok(version)
            assert view["strategy"] == strategy
        # Blue-green keeps the last blue set warm for scale_down_delay; every
        # other strategy has stopped the old release before the deploy ends.
        wait_for(f"only {deployed[-1]} running", lambda: cluster.settled(deployed[-1]), 15)
    report = assert_no_failures(load)
    # Every release served, in deploy order: each deploy moved the traffic.
    assert list(report.versions) == ["v1", *deployed], report.summary()
    # Pruned as it went: at most the current one, the previous one and
    # KEEP_RELEASES more are on record, and the first release is gone. (A
    # blue-green release still warm at a deploy's end is pruned when its
    # window closes: a moment after the processes are gone.)
    wait_for("pruned", lambda: len(cluster.releases()) <= 2 + KEEP_RELEASES, 5)
    releases = cluster.releases()
    assert releases[deployed[-1]] == "current"
    assert len(releases) <= 2 + KEEP_RELEASES, releases
    assert "v1" not in releases, releases


def _spans(load: Load, version: str, moment: float) -> int:
    """Long requests answered by `version` that were in flight at `moment` (wall clock)."""
    count = 0
    for sample in load.result.samples:
        start, end = load.wall(sample)
        if sample.version == version and start < moment < end:
            count += 1
    return count


def _journal_times(view: dict[str, Any], kind: str, phase: str) -> list[float]:
    return [s["at"] for s in view["steps"] if s["kind"] == kind and s["phase"] == phase]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dataplane", DATAPLANES)
@pytest.mark.parametrize("strategy", ["rolling", "blue_green"])
def test_long_requests_in_flight_at_the_switch_complete(
    make_cluster: ClusterFactory, strategy: str, dataplane: str
) -> None:
    cluster = make_cluster(strategy=f'"{strategy}"', proxy=through(dataplane))
    long_load = Load(f"{cluster.url}/slow?ms={LONG_MS}", concurrency=LONG_CONCURRENCY, rate=None)
    with Load(cluster.url) as load, long_load:
        view = cluster.deploy_ok("v2")
    assert_no_failures(load)
    report = assert_no_failures(long_load)
    assert dict(report.statuses) == {200: report.total}, report.summary()
    # The moments old instances left traffic: each drain (rolling), or the
    # one switch of every request to green (blue-green).
    if strategy == "rolling":
        moments = _journal_times(view, "drain", "before")
        assert len(moments) == INSTANCES, view["steps"]
    else:
        moments = [
            s["at"]
            for s in view["steps"]
            if s["kind"] == "set_traffic"
            and s["phase"] == "after"
            and s["step"]["new_weight"] == 100
        ]
        assert len(moments) == 1, view["steps"]
    for moment in moments:
        assert _spans(long_load, "v1", moment) >= 1, (moment, report.summary())


@pytest.mark.timeout(120)
def test_second_concurrent_deploy_is_refused(cluster: Cluster) -> None:
    with Load(cluster.url) as load:
        first = cluster.cli_background("deploy", "web", "v2", "--json")
        wait_for("the v2 deploy running", lambda: cluster.status()["deploying"], 30)
        refused = cluster.cli("deploy", "web", "v3", "--json")
        assert refused.returncode != 0, refused.stdout
        assert "already running" in refused.stderr, refused.stderr
        assert "v3" not in cluster.running()
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    assert_no_failures(load)
    wait_for("only v2 running", lambda: cluster.settled("v2"), 10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_rollback_within_scale_down_delay_is_instant(
    make_cluster: ClusterFactory, dataplane: str
) -> None:
    cluster = make_cluster(
        strategy='"blue_green"',
        blue_green='{ scale_down_delay = "60s" }',
        proxy=through(dataplane),
    )
    with Load(cluster.url) as load:
        cluster.deploy_ok("v2")
        before = {p.pid: p.version for p in cluster.processes()}
        assert sorted(before.values()) == ["v1"] * INSTANCES + ["v2"] * INSTANCES
        done = cluster.cli("rollback", "web", "--json")
        assert done.returncode == 0, done.stderr
        after = {p.pid: p.version for p in cluster.processes()}
        # Instant: the warm blue set took the traffic back, nothing was started.
        assert set(after) <= set(before), (before, after)
        blue = {pid for pid, version in before.items() if version == "v1"}
        assert {pid for pid, version in after.items() if version == "v1"} == blue
        served = [cluster.get("/")[1] for _ in range(10)]
        assert served == ["v1"] * 10
    report = assert_no_failures(load)
    assert report.versions["v1"].last > report.versions["v2"].last, report.summary()
    assert cluster.status()["current"] == "v1"
    assert cluster.releases() == {"v1": "current", "v2": "previous"}
    listing = cluster.cli("releases", "web")
    assert listing.returncode == 0, listing.stderr
    for word in ("v1", "v2", "current", "previous"):
        assert word in listing.stdout, listing.stdout
