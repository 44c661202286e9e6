"""POST /v1/hooks/deploy on a real admin server (port 0): HMAC instead of the token."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

import pytest

from harness import run
from integration.test_admin_deploy import FakeControl, admin
from zerodown.control.hooks import HOOK_PATH, HOOK_SECRET_ENV, sign

SECRET = "hook-secret-for-tests"


def signed(body: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, raw)}
    return raw, headers


def post(port: int, raw: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", HOOK_PATH, body=raw, headers=headers)
        response = conn.getresponse()
        names = {k.lower(): v for k, v in response.getheaders()}
        return response.status, names, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(HOOK_SECRET_ENV, SECRET)
    return SECRET


def now() -> int:
    return int(time.time())


def test_a_signed_hook_starts_a_deploy_without_the_token(secret: str) -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            body = {"service": "web", "version": "v2", "strategy": "canary", "timestamp": now()}
            raw, headers = signed(body)
            status, names, reply = await api(post, api.port, raw, headers)
            assert status == 202, reply
            assert reply == {"deploy_id": 1, "url": "/v1/deploys/1"}
            assert names["location"] == "/v1/deploys/1"
            # the same request again is a replay, and starts nothing
            status, _, reply = await api(post, api.port, raw, headers)
            assert status == 409
            assert "replay" in reply["error"]
        assert [c for c in fake.calls if c[0] == "deploy"] == [("deploy", "web", "v2", "canary")]

    run(scenario())


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        ("no signature", "missing X-Hub-Signature-256"),
        ("other secret", "does not match the body"),
        ("body changed", "does not match the body"),
        ("stale", "s old"),
    ],
)
def test_a_bad_signature_or_stale_request_is_401_with_the_reason(
    secret: str, tamper: str, says: str
) -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            stamp = now() - 3600 if tamper == "stale" else now()
            raw, headers = signed({"service": "web", "version": "v2", "timestamp": stamp})
            if tamper == "no signature":
                del headers["X-Hub-Signature-256"]
            elif tamper == "other secret":
                headers["X-Hub-Signature-256"] = sign("guess", raw)
            elif tamper == "body changed":
                raw = raw.replace(b"v2", b"v1")
            status, names, reply = await api(post, api.port, raw, headers)
            assert status == 401
            assert says in reply["error"]
            assert names["www-authenticate"] == "HMAC-SHA256"
        assert not [c for c in fake.calls if c[0] == "deploy"]

    run(scenario())


def test_a_signed_body_that_is_not_a_deploy_request_is_400(secret: str) -> None:
    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            raw, headers = signed({"service": "web", "version": "../x", "timestamp": now()})
            status, _, reply = await api(post, api.port, raw, headers)
            assert status == 400
            assert "version" in reply["error"]
            raw, headers = signed({"service": "web", "version": "v2", "timestamp": "soon"})
            status, _, reply = await api(post, api.port, raw, headers)
            assert (status, "timestamp" in reply["error"]) == (400, True)

    run(scenario())


def test_the_plain_contract_body_is_accepted_once(secret: str) -> None:
    """{"service", "version"} with no timestamp: 202, and its replay 409."""

    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            raw, headers = signed({"service": "web", "version": "v2"})
            first = await api(post, api.port, raw, headers)
            again = await api(post, api.port, raw, headers)
            assert (first[0], again[0]) == (202, 409)
            assert first[2]["deploy_id"] >= 1

    run(scenario())


def test_refusals_of_the_control_plane_pass_through(secret: str) -> None:
    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            raw, headers = signed({"service": "api", "version": "v2", "timestamp": now()})
            status, _, reply = await api(post, api.port, raw, headers)
            assert (status, reply["error"]) == (404, "no service named 'api'")
            # refused, it started nothing: sent again, it is answered again, not called a replay
            status, _, reply = await api(post, api.port, raw, headers)
            assert (status, reply["error"]) == (404, "no service named 'api'")

    run(scenario())


def test_without_a_secret_the_hook_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HOOK_SECRET_ENV, raising=False)

    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            raw, headers = signed({"service": "web", "version": "v2", "timestamp": now()}, "")
            status, _, reply = await api(post, api.port, raw, headers)
            assert status == 403
            assert HOOK_SECRET_ENV in reply["error"]
        assert not [c for c in fake.calls if c[0] == "deploy"]

    run(scenario())


def test_the_hook_still_wants_json_and_a_bounded_body(secret: str) -> None:
    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            raw, headers = signed({"service": "web", "version": "v2", "timestamp": now()})
            status, _, _ = await api(post, api.port, raw, {**headers, "Content-Type": "text/plain"})
            assert status == 415
            big = b"{" + b" " * 20000 + b"}"
            status, _, reply = await api(post, api.port, big, {**headers})
            assert status == 413
            assert "at most" in reply["error"]

    run(scenario())


def test_the_rest_of_the_api_still_needs_the_token(secret: str) -> None:
    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            _, headers = signed({"version": "v2"})
            signature = {"X-Hub-Signature-256": headers["X-Hub-Signature-256"]}
            reply = await api.raw(
                "POST", "/v1/services/web/deploys", {"version": "v2"}, token=None, headers=signature
            )
            assert reply.status == 401  # a signature opens the hook only

    run(scenario())
