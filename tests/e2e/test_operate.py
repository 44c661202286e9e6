"""Operating it from CI, end to end: `zerodown serve` as a process, a deploy
started by the signed hook (no admin token), and `[notify] webhooks` telling
a real HTTP receiver how it went. About 11 s: one daemon restart (to add the
`[notify]` table) and two deploys of one demo app instance (2 s to start)."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest

from integration.test_webhooks import receiver
from zerodown.control.hooks import HOOK_PATH, HOOK_SECRET_ENV, sign

from .conftest import Cluster, ClusterFactory, toml_str, wait_for

SECRET = "e2e-hook-secret"


def hook(cluster: Cluster, version: str, secret: str = SECRET) -> tuple[int, Any]:
    body = json.dumps({"service": "web", "version": version, "timestamp": time.time()}).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, body)}
    conn = http.client.HTTPConnection("127.0.0.1", cluster.admin, timeout=10)
    try:
        conn.request("POST", HOOK_PATH, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_a_hook_deploy_is_notified_to_a_webhook(make_cluster: ClusterFactory) -> None:
    with receiver() as server:
        cluster = make_cluster(first=None, env={HOOK_SECRET_ENV: SECRET}, instances="1")
        assert cluster.stop_daemon() == 0
        with cluster.config.open("a") as config:
            config.write(f'\n[notify]\nwebhooks = [{toml_str(server.url)}]\nbackoff = "50ms"\n')
        cluster.start()

        status, reply = hook(cluster, "v1", secret="wrong")
        assert status == 401, reply
        status, reply = hook(cluster, "v1")
        assert status == 202, reply
        first = reply["deploy_id"]
        wait_for(
            "v1 notified", lambda: [b["event"] for b in server.bodies][-1:] == ["succeeded"], 30
        )
        status, reply = hook(cluster, "v2")
        assert status == 202, reply
        second = reply["deploy_id"]
        wait_for("v2 serving", lambda: cluster.status()["current"] == "v2", 30)
        wait_for("v2 notified", lambda: len(server.bodies) == 4, 10)

    told = [(b["event"], b["deploy_id"], b["version"]) for b in server.bodies]
    assert told == [
        ("started", first, "v1"),
        ("succeeded", first, "v1"),
        ("started", second, "v2"),
        ("succeeded", second, "v2"),
    ]
    assert server.bodies[-1]["text"].startswith("✅ zerodown: web v2 (deploy")
    assert server.bodies[-1]["service"] == "web"
