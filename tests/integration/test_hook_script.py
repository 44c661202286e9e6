"""examples/ci/zerodown-hook.sh (curl + openssl) against a real admin API's hook."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from harness import run
from integration.test_admin_deploy import FakeControl, admin
from zerodown.control.hooks import HOOK_SECRET_ENV

SCRIPT = Path(__file__).parents[2] / "examples" / "ci" / "zerodown-hook.sh"
SECRET = "ci-secret"


def hook(port: int, secret: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, HOOK_SECRET_ENV: secret}
    return subprocess.run(
        ["sh", str(SCRIPT), f"http://127.0.0.1:{port}/", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_the_script_signs_as_the_daemon_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HOOK_SECRET_ENV, SECRET)

    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            done = await asyncio.to_thread(hook, api.port, SECRET, "web", "3f9c2e1", "canary")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout) == {"deploy_id": 1, "url": "/v1/deploys/1"}
            done = await asyncio.to_thread(hook, api.port, SECRET, "web", "3f9c2e2")
            assert done.returncode == 0, done.stderr
            wrong = await asyncio.to_thread(hook, api.port, "not-it", "web", "3f9c2e3")
            assert wrong.returncode == 22  # curl --fail-with-body on a 4xx
            assert "does not match the body" in json.loads(wrong.stdout)["error"]
        deploys = [c for c in fake.calls if c[0] == "deploy"]
        assert deploys == [
            ("deploy", "web", "3f9c2e1", "canary"),
            ("deploy", "web", "3f9c2e2", None),
        ]

    run(scenario())


def test_the_script_says_its_usage() -> None:
    done = hook(1, "", "web", "v2")
    assert done.returncode == 2
    assert "usage: ZERODOWN_HOOK_SECRET=..." in done.stderr
