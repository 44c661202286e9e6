"""A busy app is not a dead app (issue 9), end to end: `zerodown serve` in
front of gunicorn's default sync worker (one request at a time per instance)
under slow requests, with a health timeout shorter than the queue ahead of a
check. nginx in front of such an app fails nothing; neither may zerodown,
in steady state or through a rolling and a blue-green deploy.

Why it used to fail: each instance's checks wait behind ~4 queued requests
of 200-400 ms and time out, every instance was marked down, and every request
got an immediate 503. Now a timed-out check is excused while the instance's
answers keep arriving, and if health still left nothing the ready instances
would serve anyway (panic). Assertions are counts: failed requests (any kind),
versions seen, health and panic counters from /v1/stats.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import Cluster, ClusterFactory, Load, assert_no_failures, toml_str

CLIENTS = 8  # concurrent clients, each request 200-400 ms: ~4 queued per instance
SLOW_PATH = "/slow?ms=200-400"
STEADY_SECONDS = 4.0  # 20 check rounds of each instance
# A check waits ~1 s behind the queue: far past this timeout, every round.
HEALTH = '{ path = "/health", interval = "200ms", timeout = "200ms", rise = 1 }'


def gunicorn_command() -> str:
    """One sync worker, gunicorn's default: `gunicorn -w 1 -b 127.0.0.1:{port} busy_app:app`."""
    app_dir = Path(__file__).parent
    return toml_str(
        f"{sys.executable} -m gunicorn -w 1 -b 127.0.0.1:{{port}} --chdir {app_dir} busy_app:app"
    )


def stats(cluster: Cluster) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.admin}/v1/stats", timeout=10) as r:
        web: dict[str, Any] = json.load(r)["services"]["web"]
    return web


def health_of(web: dict[str, Any]) -> list[str]:
    return [t["health"] for t in web["pools"]["stable"]["targets"].values()]


def slow_load(cluster: Cluster) -> Load:
    return Load(cluster.url + SLOW_PATH, concurrency=CLIENTS, rate=None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_one_worker_sync_app_under_slow_requests_fails_nothing(
    make_cluster: ClusterFactory, workers: int
) -> None:
    # workers = 2: the checks run in the supervisor, which hears of answers
    # from its workers' counters (read every second), not from traffic.
    proxy = {"workers": str(workers)}
    cluster = make_cluster(command=gunicorn_command(), health=HEALTH, proxy=proxy)

    with slow_load(cluster) as steady:
        time.sleep(STEADY_SECONDS)
        web = stats(cluster)
    report = assert_no_failures(steady)
    print(f"steady: {report.summary()}\nstats: panic={web['panic']} health={health_of(web)}")
    assert dict(report.statuses) == {200: report.total}, report.summary()
    # Served by health, not by panic: the timed-out checks were excused.
    assert health_of(web) == ["up", "up"], web
    assert web["panic"] == 0, web

    with slow_load(cluster) as load:
        assert cluster.deploy_ok("v2", "--strategy", "rolling")["strategy"] == "rolling"
        assert cluster.deploy_ok("v3", "--strategy", "blue_green")["strategy"] == "blue_green"
    report = assert_no_failures(load)
    print(f"deploys: {report.summary()}\nstats: panic={stats(cluster)['panic']}")
    assert list(report.versions) == ["v1", "v2", "v3"], report.summary()
