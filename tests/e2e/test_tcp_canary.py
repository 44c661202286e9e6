"""A canary deploy of a tcp service (issue 13), end to end, on every data plane:
`zerodown serve`, the demo echo app (zerodown.demo.echo) as real instances,
`zerodown deploy --strategy canary` from the CLI, and clients that keep
connections open and open new ones all through it (test_tcp_deploy.Clients).

The canary is weighted by connections and judged on them (docs/tcp.md): a
healthy release passes with no connection failed; a release that resets
half of its connections unanswered (`--reset-rate 0.5`) is rolled back on
its error rate, and the old release serves on.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from .conftest import (
    DATAPLANES,
    INSTANCES,
    Cluster,
    ClusterFactory,
    free_port,
    through,
    toml_str,
    wait_for,
)
from .test_tcp_deploy import LONG_LIFE, Clients, ask_version

EXIT_ROLLED_BACK = 3  # `zerodown deploy` exit code for a deploy that was rolled back
# The echo app, and a release labelled "bad" that resets half its connections.
WRAPPER = """\
#!/bin/sh
case "$ZERODOWN_VERSION" in
  bad) knob="--reset-rate 0.5" ;;
  *) knob="" ;;
esac
exec {python} -m zerodown.demo.echo --port "$PORT" --version "$ZERODOWN_VERSION" $knob
"""
# Two short steps; 20 canary connections (short clients open 50 a second) decide.
CANARY = (
    '{ steps = [{ weight = 30, pause = "1s" }, { weight = 60, pause = "1s" }], '
    "min_requests = 20, min_error_increase = 0.2 }"
)


def tcp_cluster(make_cluster: ClusterFactory, root: Path, dataplane: str) -> tuple[int, Cluster]:
    port = free_port()
    script = root / "echo.sh"
    script.write_text(WRAPPER.format(python=sys.executable))
    script.chmod(0o755)
    cluster = make_cluster(
        mode='"tcp"',
        listen=toml_str(f"127.0.0.1:{port}"),
        command=toml_str(str(script)),
        health='{ interval = "200ms", rise = 1 }',
        recreate="{}",
        strategy='"canary"',
        canary=CANARY,
        proxy=through(dataplane),
    )
    return port, cluster


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_a_tcp_canary_deploy_fails_no_connection(
    make_cluster: ClusterFactory, tmp_path: Path, dataplane: str
) -> None:
    port, cluster = tcp_cluster(make_cluster, tmp_path, dataplane)
    with Clients(port) as clients:
        time.sleep(LONG_LIFE / 2)
        view = cluster.deploy_ok("v2")
        time.sleep(LONG_LIFE / 2)
    assert view["strategy"] == "canary", view
    # Judged on connections: enough of them, none failed on either side.
    verdict = view["verdict"]
    assert verdict["verdict"] == "pass", verdict
    assert verdict["canary"]["requests"] >= 20, verdict
    assert verdict["canary"]["errors"] == verdict["stable"]["errors"] == 0, verdict
    print(f"{dataplane}: {verdict['reason']}")
    seen = clients.seen
    assert seen.failures == [], seen.failures[:10]
    assert set(seen.short) == {"v1", "v2"}, seen.short
    assert sum(seen.short.values()) > 100, seen.short
    wait_for("only v2 running", lambda: cluster.running() == {"v2": INSTANCES}, 10)
    assert ask_version_now(port) == "v2"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("dataplane", DATAPLANES)
def test_a_tcp_canary_that_drops_connections_is_rolled_back(
    make_cluster: ClusterFactory, tmp_path: Path, dataplane: str
) -> None:
    port, cluster = tcp_cluster(make_cluster, tmp_path, dataplane)
    with Clients(port) as clients:
        code, view = cluster.deploy("bad")
    assert code == EXIT_ROLLED_BACK, view
    assert view["outcome"] == "rolled_back", view
    assert "error rate" in view["reason"], view["reason"]
    verdict = view["verdict"]
    assert verdict["verdict"] == "fail", verdict
    assert verdict["canary"]["errors"] > 0, verdict
    assert verdict["stable"]["errors"] == 0, verdict  # only the bad release's count
    dropped = len(clients.seen.failures)
    print(f"{dataplane}: {dropped} connections dropped before the rollback; {verdict['reason']}")
    # What the clients saw failing was the bad release's connections only:
    # dropped unanswered (an empty answer, a reset), never a refused connect.
    assert clients.seen.failures, "the bad release dropped no connection"
    assert not [f for f in clients.seen.failures if "Refused" in f], clients.seen.failures
    assert set(clients.seen.short) <= {"v1", "bad"}, clients.seen.short
    wait_for("only v1 running", lambda: cluster.running() == {"v1": INSTANCES}, 10)
    assert cluster.releases()["bad"] == "failed"
    assert ask_version_now(port) == "v1"


def ask_version_now(port: int) -> str:
    return asyncio.run(ask_version(port))
