"""A deploy that waits says why, in `zerodown status` and its JSON: a timed pause
with its countdown, an operator's `zerodown pause` with how to go on. A real
`zerodown serve` running the demo app, driven through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import DEADLINE, reserved_port, reserved_ports
from zerodown.cli.client import AdminClient, AdminError


def zerodown(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerodown", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def until(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE}s"
        time.sleep(0.05)
    return value


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[tuple[Path, AdminClient]]:
    """v1 serving; v2 deploying as a canary that waits 30 s at 20 %."""
    admin, (first, last) = reserved_port(), reserved_ports(10)
    app = f"{sys.executable} -m zerodown.demo --port {{port}} --version {{version}}"
    config = tmp_path / "zerodown.toml"
    config.write_text(
        f'[proxy]\nlisten = ["127.0.0.1:{reserved_port()}"]\nadmin = "127.0.0.1:{admin}"\n'
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n\n"
        f'[services.web]\ncommand = "{app}"\ninstances = 1\nports = "{first}-{last}"\n'
        'strategy = "canary"\nhealth = { path = "/health", interval = "100ms", rise = 1 }\n'
        'canary = { steps = [{ weight = 20, pause = "30s" }] }\n'
    )
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "zerodown", "serve", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = AdminClient(f"http://127.0.0.1:{admin}", None, DEADLINE)
    try:
        until("the admin API", lambda: _answers(client))
        assert client.wait(client.deploy("web", "v1"), DEADLINE)["outcome"] == "succeeded"
        client.deploy("web", "v2")
        yield config, client
    finally:
        serve.terminate()
        serve.wait(DEADLINE)
        log.close()


def _answers(client: AdminClient) -> bool:
    try:
        return bool(client.status())
    except AdminError:
        return False


def pause_of(client: AdminClient) -> Any:
    return client.status("web")[0].get("pause")


def test_status_says_why_a_deploy_waits(canary: tuple[Path, AdminClient]) -> None:
    config, client = canary
    timed = until("the timed pause", lambda: pause_of(client))
    assert timed["by"] == "timer"
    assert 25 < timed["left"] <= 30
    assert "pause: " in zerodown(config, "status", "web").stdout
    assert " s left" in zerodown(config, "status", "web").stdout

    assert zerodown(config, "pause", "web").returncode == 0
    assert pause_of(client) == {"by": "operator", "left": None}
    shown = zerodown(config, "status", "web").stdout
    assert "paused by operator (zerodown resume web)" in shown, shown

    assert zerodown(config, "resume", "web").returncode == 0
    assert pause_of(client)["by"] == "timer"
    assert zerodown(config, "promote", "web").returncode == 0
    deploying = until("the end", lambda: client.status("web")[0]["deploying"] is None)
    assert deploying
    assert pause_of(client) is None
