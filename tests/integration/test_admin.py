"""The admin API on a real uvicorn, port 0, in the test's event loop.

The data plane behind it is a small in-test DataPlane that records what it
was asked; the embedded data plane is tested on its own. HTTP calls use
http.client in the loop's executor, so the server and the client never
share a thread and a blocking client cannot stall the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness import DEADLINE, run
from prometheus_text import value
from zerodown.control.admin import PROMETHEUS_CONTENT_TYPE, create_admin_app, require_token_for
from zerodown.control.server import AdminServer
from zerodown.dataplane.base import DataPlane, DrainResult
from zerodown.dataplane.prometheus import render_prometheus
from zerodown.deploy.contract import StatusView
from zerodown.errors import ConfigError, DataPlaneError, IllegalTransition, ZerodownError
from zerodown.proxy.metrics import TargetMetrics, target_entry
from zerodown.proxy.target import Target
from zerodown.routing import PoolName, PoolSpec, RoutingTable, ServiceSpec, TargetSpec
from zerodown.stats import PoolStats, ServiceStats, Stats, pool_entry

TOKEN = "s3cret-token"
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
DEFAULT = object()  # "use the client's token"

TABLE = RoutingTable(
    services=(
        ServiceSpec(
            name="web",
            stable=PoolSpec(targets=(TargetSpec(address="127.0.0.1:9001", version="v1"),)),
            canary=PoolSpec(targets=(TargetSpec(address="127.0.0.1:9002", version="v2"),)),
        ),
    )
)


class FakeDataPlane(DataPlane):
    """Records applied tables; serves stats from real Targets through metrics.py."""

    def __init__(self, table: RoutingTable = TABLE) -> None:
        self.table = table
        self.applied: list[RoutingTable] = []
        self.refuse: Exception | None = None
        self.threads: set[int] = set()
        self.target = Target("127.0.0.1:9001", version="v1")
        self.target.set_state("ready")
        self.target.metrics = TargetMetrics()
        self.target.metrics.request()
        self.target.metrics.response(200, 0.004)

    async def apply(self, table: RoutingTable) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.applied.append(table)
        self.table = table

    def routing(self) -> RoutingTable:
        self.threads.add(threading.get_ident())
        return self.table

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        raise DataPlaneError("the fake does not drain")

    async def stats(self) -> Stats:
        self.threads.add(threading.get_ident())
        stable = pool_entry({self.target.address: target_entry(self.target)})
        pools: dict[PoolName, PoolStats] = {"stable": stable, "canary": pool_entry({})}
        service = ServiceStats(pools=pools, canary_weight=0.0, panic=0)
        return Stats(services={"web": service}, connections=0, rejected={"400": 1})

    async def prometheus(self) -> str:
        return render_prometheus(await self.stats())


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> Reply:
    """Blocking: runs in the executor thread."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        names = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, names, response.read())
    finally:
        conn.close()


@dataclass
class Client:
    port: int
    token: str | None

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: Any = DEFAULT,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """`body` is sent as JSON (bytes as they are); `headers` override the defaults."""
        token = self.token if token is DEFAULT else token
        sent = {"Authorization": f"Bearer {token}"} if token is not None else {}
        if body is not None:
            body = body if isinstance(body, bytes) else json.dumps(body).encode()
        if body is not None or method in STATE_CHANGING:
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _request, self.port, method, path, body, sent)


@contextlib.asynccontextmanager
async def admin(
    dataplane: DataPlane, token: str | None = TOKEN, control: Any = None
) -> AsyncIterator[Client]:
    server = AdminServer(create_admin_app(dataplane, token, control), "127.0.0.1", 0)
    await server.start()
    try:
        yield Client(server.port, token)
    finally:
        await server.stop()


def table_json(table: RoutingTable = TABLE) -> dict[str, Any]:
    return table.model_dump(mode="json")


def with_target(**fields: Any) -> dict[str, Any]:
    """TABLE as JSON with the first stable target's fields changed."""
    body = table_json()
    body["services"][0]["stable"]["targets"][0].update(fields)
    return body


# --- auth -----------------------------------------------------------------------

GUARDED = [
    ("GET", "/v1/routing"),
    ("PUT", "/v1/routing"),
    ("GET", "/v1/stats"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/no/such/path"),  # a 404 would tell an outsider which paths exist
]


def test_every_path_but_health_needs_the_token() -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            for method, path in GUARDED:
                for token in (None, "wrong", TOKEN + "x", ""):
                    reply = await api.call(method, path, table_json(), token=token)
                    assert reply.status == 401, (method, path, token)
                    assert reply.headers["www-authenticate"] == "Bearer"
                    assert reply.json() == {"error": "missing or wrong bearer token"}
        assert fake.applied == []

    run(scenario())


def test_other_schemes_are_refused() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            for value in (f"Basic {TOKEN}", TOKEN, f"Bearer{TOKEN}"):
                reply = await api.call("GET", "/v1/routing", headers={"Authorization": value})
                assert reply.status == 401, value

    run(scenario())


def test_health_needs_no_token() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            reply = await api.call("GET", "/v1/health", token=None)
            assert reply.status == 200
            # the pid: a client that started the daemon knows it is its own
            assert reply.json() == {"ok": True, "pid": os.getpid()}

    run(scenario())


def test_the_right_token_is_let_in() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            assert (await api.call("GET", "/v1/routing")).status == 200
            reply = await api.call("GET", "/v1/routing", token=None)
            assert reply.status == 401
            # the scheme name is case-insensitive (RFC 9110 §11.1)
            headers = {"Authorization": f"bearer {TOKEN}"}
            assert (await api.call("GET", "/v1/routing", headers=headers)).status == 200
            # with a token, the Host does not matter: a browser never has the token
            headers["Host"] = "admin.example.com"
            assert (await api.call("GET", "/v1/routing", headers=headers)).status == 200

    run(scenario())


def test_without_a_token_the_api_is_open() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane(), token=None) as api:
            for method, path in (("GET", "/v1/routing"), ("GET", "/v1/stats"), ("GET", "/metrics")):
                assert (await api.call(method, path)).status == 200, path
            reply = await api.call("GET", "/v1/routing", headers={"Host": f"localhost:{api.port}"})
            assert reply.status == 200

    run(scenario())


@pytest.mark.parametrize("host", ["rebound.example.com", "rebound.example.com:9900", "10.0.0.5"])
def test_without_a_token_only_loopback_hosts_are_answered(host: str) -> None:
    # DNS rebinding: a page whose name now points at 127.0.0.1 still sends its name in Host.
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake, token=None) as api:
            reply = await api.call("PUT", "/v1/routing", table_json(), headers={"Host": host})
            assert reply.status == 403
            assert "loopback host" in reply.json()["error"]
            assert (await api.call("GET", "/v1/health", headers={"Host": host})).status == 200
        assert fake.applied == []

    run(scenario())


# A page on another origin, as the operator's browser describes it (None: the
# port of the admin API under test, i.e. a different port on the same host).
CROSS_SITE = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},  # sandboxed iframe, file:// page, some redirects
    {"Origin": "http://127.0.0.1:1"},  # another port: another origin
    {"Origin": "https://127.0.0.1:{port}"},  # another scheme
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "https://evil.example"},
]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_without_a_token_a_cross_site_request_is_refused(headers: dict[str, str]) -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake, token=None) as api:
            sent = {k: v.format(port=api.port) for k, v in headers.items()}
            for method, path in (("PUT", "/v1/routing"), ("GET", "/v1/routing")):
                reply = await api.call(method, path, table_json(), headers=sent)
                assert reply.status == 403, (method, reply.body)
                body = reply.json()
                assert set(body) == {"error", "detail"}
                assert "cross-" in body["error"]
                named = sent.get("Sec-Fetch-Site", "same-origin") == "same-origin"
                assert body["detail"] == (
                    {"origin": sent["Origin"]}
                    if named
                    else {"sec_fetch_site": sent["Sec-Fetch-Site"]}
                )
        assert fake.applied == []

    run(scenario())


def test_without_a_token_same_origin_and_non_browser_requests_pass() -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake, token=None) as api:
            own = f"http://127.0.0.1:{api.port}"
            accepted = [
                {},  # the CLI, curl: no browser headers at all
                {"Origin": own, "Sec-Fetch-Site": "same-origin"},
                {"Origin": own.upper().replace("HTTP", "http")},
                {"Sec-Fetch-Site": "none"},  # typed into the address bar
                {"Host": f"localhost:{api.port}", "Origin": f"http://localhost:{api.port}"},
            ]
            for headers in accepted:
                reply = await api.call("PUT", "/v1/routing", table_json(), headers=headers)
                assert reply.status == 200, (headers, reply.body)
        assert len(fake.applied) == 5

    run(scenario())


# What an HTML form (or a fetch() without a CORS preflight) can send.
FORM_TYPES = [
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/plain",
    "",
]


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("content_type", FORM_TYPES)
def test_a_change_without_the_json_type_is_415(content_type: str, token: str | None) -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake, token=token) as api:
            body = json.dumps(table_json()).encode()
            headers = {"Content-Type": content_type}
            reply = await api.call("PUT", "/v1/routing", body, headers=headers)
            assert reply.status == 415, reply.body
            shown = content_type or "(none)"
            assert reply.json() == {
                "error": f"PUT needs Content-Type: application/json (even without a body), "
                f"got {shown}",
                "detail": {"content_type": shown, "expected": "application/json"},
            }
            # the type is what counts, parameters and case aside
            headers = {"Content-Type": "Application/JSON; charset=utf-8"}
            reply = await api.call("PUT", "/v1/routing", body, headers=headers)
            assert reply.status == 200, reply.body
        assert len(fake.applied) == 1

    run(scenario())


# --- routing --------------------------------------------------------------------


def test_get_routing_is_the_table_in_force() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            reply = await api.call("GET", "/v1/routing")
            assert reply.status == 200
            assert reply.headers["content-type"] == "application/json"
            assert reply.json() == table_json()

    run(scenario())


def test_put_routing_roundtrip() -> None:
    new = RoutingTable(
        services=(
            ServiceSpec(
                name="web",
                path="/api",
                stable=PoolSpec(targets=(TargetSpec(address="127.0.0.1:9101", weight=3),)),
            ),
        )
    )

    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            reply = await api.call("PUT", "/v1/routing", table_json(new))
            assert reply.status == 200, reply.body
            assert reply.json() == table_json(new)
            assert fake.applied == [new]
            assert (await api.call("GET", "/v1/routing")).json() == table_json(new)

    run(scenario())


class RunsWeb:
    """The one question the routing guard asks a control plane: which services it runs."""

    def status(self, service: str | None = None) -> list[StatusView]:
        return [
            StatusView(
                service="web",
                current=None,
                deploying=None,
                instances=[],
                traffic={},
                paused=False,
                pause=None,
                crash_loop=None,
            )
        ]


def without_web() -> dict[str, Any]:
    api = {"name": "api", "path": "/api", "stable": {"targets": [{"address": "127.0.0.1:9101"}]}}
    return {"services": [api]}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"services": []}, "service 'web' is configured and may not be dropped or renamed"),
        (without_web(), "service 'web' is configured and may not be dropped or renamed"),
        (
            {"services": [*table_json()["services"], without_web()["services"][0]]},
            "service 'api' is not in the configuration",
        ),
    ],
)
def test_a_table_without_a_configured_service_is_400_naming_it(
    body: dict[str, Any], error: str
) -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            reply = await api.call("PUT", "/v1/routing", body)
            assert (reply.status, reply.json()) == (400, {"error": error})
            assert (await api.call("GET", "/v1/routing")).json() == table_json()
        assert fake.applied == []

    run(scenario())


def test_a_service_zerodown_runs_is_409_unless_unchanged() -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake, control=RunsWeb()) as api:
            reply = await api.call("PUT", "/v1/routing", with_target(weight=5))
            assert reply.status == 409
            error = reply.json()["error"]
            assert error.startswith("service 'web' is run by zerodown: its pools change by deploy")
            assert "`zerodown rollback web`" in error
            assert fake.applied == []
            unchanged = await api.call("PUT", "/v1/routing", table_json())
            assert unchanged.status == 200
        assert fake.applied == [TABLE]

    run(scenario())


def rejected(reply: Reply) -> list[str]:
    """The fields a 400 names."""
    assert reply.status == 400, reply.body
    body = reply.json()
    assert body["error"].startswith("invalid request: ")
    return [d["field"] for d in body["detail"]]


def test_bad_value_is_400_naming_the_field() -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            reply = await api.call("PUT", "/v1/routing", with_target(weight=-1))
            assert rejected(reply) == ["services.0.stable.targets.0.weight"]
            assert "services.0.stable.targets.0.weight" in reply.json()["error"]
            reply = await api.call("PUT", "/v1/routing", with_target(address="nowhere"))
            assert rejected(reply) == ["services.0.stable.targets.0.address"]
            assert "is not host:port" in reply.json()["error"]
        assert fake.applied == []

    run(scenario())


def test_unknown_key_is_400_naming_it() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            reply = await api.call("PUT", "/v1/routing", with_target(wieght=2))
            assert rejected(reply) == ["services.0.stable.targets.0.wieght"]

    run(scenario())


def test_duplicate_target_is_400() -> None:
    body = table_json()
    pool = body["services"][0]["stable"]
    pool["targets"].append(dict(pool["targets"][0]))

    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            reply = await api.call("PUT", "/v1/routing", body)
            assert rejected(reply) == ["services.0.stable.targets"]
            assert "target listed twice in one pool: 127.0.0.1:9001" in reply.json()["error"]
        assert fake.applied == []

    run(scenario())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "body: JSON decode error: Expecting property name"),
        (b"", "body: Field required"),
        (b"[]", "body: Input should be a valid dictionary"),
    ],
)
def test_body_that_is_not_a_table_is_400(body: bytes, error: str) -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            reply = await api.call("PUT", "/v1/routing", body)
            assert reply.status == 400, reply.body
            assert reply.json()["error"].startswith("invalid request: ")
            assert error in reply.json()["error"]

    run(scenario())


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_body_not_declared_json_is_415(content_type: str | None) -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            headers = {"Content-Type": content_type} if content_type else {}
            body = json.dumps(table_json()).encode()
            loop = asyncio.get_running_loop()
            headers["Authorization"] = f"Bearer {TOKEN}"
            args = (api.port, "PUT", "/v1/routing", body, headers)
            reply = await loop.run_in_executor(None, _request, *args)
            assert reply.status == 415
            assert "Content-Type: application/json" in reply.json()["error"]
        assert fake.applied == []

    run(scenario())


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DataPlaneError("the data plane stopped"), 503),
        (IllegalTransition("target cannot go from gone to ready"), 409),
        (ConfigError("bad", key="services.web"), 400),
        (ZerodownError("something else"), 500),
    ],
)
def test_apply_refusal_maps_to_a_status(error: ZerodownError, status: int) -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        fake.refuse = error
        async with admin(fake) as api:
            reply = await api.call("PUT", "/v1/routing", table_json())
            assert reply.status == status
            assert reply.json() == {"error": str(error)}

    run(scenario())


def test_a_bug_is_500_in_the_error_shape() -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        fake.refuse = KeyError("boom")
        async with admin(fake) as api:
            reply = await api.call("PUT", "/v1/routing", table_json())
            assert reply.status == 500
            assert reply.json() == {"error": "internal error: KeyError: 'boom'"}
            # the server survives it
            assert (await api.call("GET", "/v1/routing")).status == 200

    run(scenario())


# --- stats and metrics ----------------------------------------------------------


def test_stats_is_the_dataplane_json() -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            reply = await api.call("GET", "/v1/stats")
            assert reply.status == 200
            stats = reply.json()
            assert stats == (await fake.stats()).model_dump(mode="json")
            assert "workers" not in stats  # said only by a multi-worker data plane
            target = stats["services"]["web"]["pools"]["stable"]["targets"]["127.0.0.1:9001"]
            assert target["responses"]["2xx"] == 1
        # handlers run on the loop thread, never in FastAPI's thread pool
        assert fake.threads == {threading.get_ident()}

    run(scenario())


def test_metrics_is_prometheus_text() -> None:
    async def scenario() -> None:
        fake = FakeDataPlane()
        async with admin(fake) as api:
            reply = await api.call("GET", "/metrics")
            assert reply.status == 200
            assert reply.headers["content-type"] == PROMETHEUS_CONTENT_TYPE
            text = reply.body.decode()
            assert text == await fake.prometheus()
            labels = {"service": "web", "pool": "stable", "target": "127.0.0.1:9001"}
            assert value(text, "zerodown_requests_total", **labels, version="v1") == 1
            assert "# TYPE zerodown_request_duration_seconds histogram\n" in text

    run(scenario())


def test_openapi_is_served() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            reply = await api.call("GET", "/openapi.json")
            assert reply.status == 200
            assert {"/v1/routing", "/v1/stats", "/metrics", "/v1/health"} <= set(
                reply.json()["paths"]
            )

    run(scenario())


def test_unknown_path_is_404_in_the_error_shape() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            reply = await api.call("GET", "/v2/nothing")
            assert reply.status == 404
            assert reply.json() == {"error": "Not Found"}

    run(scenario())


# --- the server -----------------------------------------------------------------


def test_server_binds_port_0_and_releases_it() -> None:
    async def scenario() -> None:
        before = signal.getsignal(signal.SIGTERM)
        server = AdminServer(create_admin_app(FakeDataPlane(), None))
        await server.start()
        port = server.port
        assert port > 0
        # uvicorn must not take the daemon's signals while it serves
        assert signal.getsignal(signal.SIGTERM) is before
        assert (await Client(port, None).call("GET", "/v1/health")).status == 200
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
        await server.stop()
        await server.stop()  # idempotent
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    run(scenario())


def test_port_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = AdminServer(create_admin_app(FakeDataPlane(), None)).port


# --- require_token_for ----------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9900", "127.0.0.2:9900", "[::1]:9900", "localhost:9900", "::1"]
)
def test_loopback_needs_no_token(address: str) -> None:
    require_token_for(address, None)


@pytest.mark.parametrize(
    "address", ["0.0.0.0:9900", "10.0.0.5:9900", "[::]:9900", "admin.example.com:9900", ":9900"]
)
def test_beyond_loopback_a_token_is_required(address: str) -> None:
    with pytest.raises(ConfigError, match="not loopback") as info:
        require_token_for(address, None)
    assert info.value.key == "proxy.admin"
    with pytest.raises(ConfigError):
        require_token_for(address, "")
    require_token_for(address, TOKEN)


def test_openapi_describes_the_stats() -> None:
    async def scenario() -> None:
        async with admin(FakeDataPlane()) as api:
            schema = (await api.call("GET", "/openapi.json")).json()
            ok = schema["paths"]["/v1/stats"]["get"]["responses"]["200"]
            assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/Stats")
            components = schema["components"]["schemas"]
            assert {"Stats", "ServiceStats", "PoolStats", "PoolTotals", "TargetStats"} <= set(
                components
            )
            target = components["TargetStats"]["properties"]
            assert target["state"]["enum"] == ["adding", "ready", "down", "draining", "gone"]
            assert target["version"]["anyOf"] == [{"type": "string"}, {"type": "null"}]

    run(scenario())
