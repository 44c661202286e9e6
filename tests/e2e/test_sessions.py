"""Logged-in users through deploys, end to end: `zerodown serve` on the embedded
data plane, the demo app with its login flow on `--sessions redis|jwt|memory`
(a real redis-server), and `zerodown verify --sessions N --deploy` as a user
runs it, read from its --json output and its exit code.

One cheap combination per claim (the app starts in 0.5 s here): redis x
rolling through HAProxy, jwt x blue_green through nginx, redis x canary on
the embedded data plane keep every session (each store on each strategy, and
each data plane once: a shared store does not care which proxy is in front); memory loses
them and says why, with a non-zero exit; Redis killed and restarted in the
middle of a deploy gives 503s that say what failed, and the sessions, kept by
its fsynced append-only file, are all there after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from redis_harness import RedisServer

from .conftest import Cluster, ClusterFactory, toml_str, wait_for

USERS = 12
STARTUP = 0.5  # seconds the app takes to listen
OUTAGE = 1.0  # seconds Redis stays down
# Load beside the users: enough to see a dropped request, leaving the cores to
# the apps that start during the deploy.
LOAD = ("--concurrency", "4", "--rate", "100")
# One step: the proof is that users stay logged in while two versions serve.
CANARY = (
    '{ steps = [{ weight = 50, pause = "1s" }], min_requests = 20, '
    'min_error_increase = 0.2, min_latency_shift = "50ms" }'
)


def app_command(*flags: str) -> str:
    base = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
    return toml_str(" ".join([base, "--startup-delay", str(STARTUP), *flags]))


def verify_args(cluster: Cluster, strategy: str) -> list[str]:
    out = str(cluster.root / "verify")
    return ["verify", "--deploy", "web", "v2", "--strategy", strategy, "--sessions", str(USERS),
            *LOAD, "--json", "--out", out]  # fmt: skip


def verified(done: subprocess.CompletedProcess[str] | tuple[int, str, str]) -> dict[str, Any]:
    code, out, err = (
        done if isinstance(done, tuple) else (done.returncode, done.stdout, done.stderr)
    )
    try:
        said: dict[str, Any] = json.loads(out)
    except ValueError:
        raise AssertionError(f"exit {code}, no JSON: {out!r}\n{err}") from None
    said["exit"], said["stderr"] = code, err
    return said


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("store", "strategy", "dataplane"),
    [
        ("redis", "rolling", "haproxy"),
        ("jwt", "blue_green", "nginx"),
        ("redis", "canary", "embedded"),
    ],
)
def test_a_shared_session_store_keeps_every_user_logged_in(
    make_cluster: ClusterFactory,
    redis_server: RedisServer,
    store: str,
    strategy: str,
    dataplane: str,
) -> None:
    flags = ["--sessions", store]
    flags += ["--redis-url", redis_server.url] if store == "redis" else []
    cluster = make_cluster(
        command=app_command(*flags),
        strategy=f'"{strategy}"',
        canary=CANARY,
        proxy={"dataplane": f'"{dataplane}"'},
    )
    said = verified(cluster.cli(*verify_args(cluster, strategy)))
    report = said["report"]
    assert said["exit"] == 0, said["stderr"]
    assert said["during"]["outcome"] == "succeeded"
    assert report["failed"] == 0, report["failures"]
    sessions = report["sessions"]
    assert (sessions["kept"], sessions["lost"], sessions["unverified"]) == (USERS, 0, 0), sessions
    assert sessions["checks"] > USERS * 2, "the users did not keep asking through the deploy"
    assert set(report["versions"]) == {"v1", "v2"}


@pytest.mark.timeout(60)
def test_sessions_in_memory_are_lost_and_the_report_says_why(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(command=app_command("--sessions", "memory"))
    said = verified(cluster.cli(*verify_args(cluster, "rolling")))
    sessions = said["report"]["sessions"]
    assert said["exit"] == 1, said["stderr"]
    assert said["during"]["outcome"] == "succeeded", "the deploy itself was fine"
    assert said["report"]["failed"] == 0, "no request failed: only the sessions were lost"
    assert sessions["lost"] > 0, sessions
    assert sessions["kept"] + sessions["lost"] == USERS, sessions
    # Two instances, round robin: another instance did not know them before any deploy.
    assert sessions["lost_before_deploy"] > 0, sessions
    line = f"sessions: {sessions['kept']} kept, {sessions['lost']} lost"
    assert f"sessions not kept ({line.removeprefix('sessions: ')})" in said["stderr"]
    for fix in ("shared store", "tokens", "`sticky`"):
        assert fix in said["stderr"], said["stderr"]


@pytest.mark.timeout(60)
def test_sticky_memory_sessions_are_lost_only_with_their_stopped_instances(
    make_cluster: ClusterFactory,
) -> None:
    """`sticky` keeps each user on the instance that holds its session: none is
    lost before the deploy; a rolling deploy stops every instance, so each is
    lost then, and the report says sticky does not outlive a stop."""
    cluster = make_cluster(
        command=app_command("--sessions", "memory"), sticky='{ cookie = "zd_route" }'
    )
    said = verified(cluster.cli(*verify_args(cluster, "rolling")))
    sessions = said["report"]["sessions"]
    assert said["exit"] == 1, said["stderr"]
    assert said["report"]["failed"] == 0, said["report"]["failures"]
    assert sessions["lost_before_deploy"] == 0, sessions
    assert sessions["lost_during_deploy"] == sessions["lost"] == USERS, sessions
    assert "not past that instance's stop" in said["stderr"], said["stderr"]


@pytest.mark.timeout(60)
def test_redis_restarted_mid_deploy_keeps_its_sessions_and_its_errors_say_why(
    make_cluster: ClusterFactory, redis_server: RedisServer
) -> None:
    flags = ("--sessions", "redis", "--redis-url", redis_server.url)
    cluster = make_cluster(command=app_command(*flags), strategy='"rolling"')
    run = cluster.cli_background(*verify_args(cluster, "rolling"))
    wait_for("the deploy running", lambda: cluster.status()["deploying"], 30)
    redis_server.kill()
    time.sleep(OUTAGE)  # an outage the users see: their checks answer 503 meanwhile
    redis_server.start()  # same port, same directory: the append-only file replays
    out, err = run.communicate(timeout=60)
    said = verified((run.returncode, out, err))
    sessions = said["report"]["sessions"]
    assert said["exit"] == 0, err
    assert (sessions["kept"], sessions["lost"], sessions["unverified"]) == (USERS, 0, 0), sessions
    assert sessions["errors"] > 0, "the outage was not seen"
    assert any(
        e.startswith("503 session store unavailable (redis): connecting to 127.0.0.1:")
        and e.endswith(": Connection refused; try again")
        for e in sessions["errors_said"]
    ), sessions["errors_said"]
    # The instances said it in their answers, not as crashes in their logs.
    logs = [*Path(cluster.root, "state", "logs").rglob("*.log"), cluster.log_path]
    assert len(logs) > 1, logs
    for log in logs:
        assert "Traceback" not in log.read_text(errors="replace"), log
