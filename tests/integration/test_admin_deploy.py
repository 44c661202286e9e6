"""The admin API's deploy routes on a real uvicorn, port 0, driven by AdminClient.

The control plane behind them is FakeControl: it implements the ControlPlane
protocol with canned views, records every call and raises what a test tells
it to, so these tests pin the HTTP contract (routes, status codes, auth, the
SSE stream) and nothing of the orchestrator. The CLI tests reuse it.

AdminClient blocks, so calls run in a worker thread (asyncio.to_thread) while
the server runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from harness import DEADLINE, run, until
from zerodown.cli.client import AdminClient, AdminError, AdminUnreachable
from zerodown.control import events as events_module
from zerodown.control import server as server_module
from zerodown.control import wire
from zerodown.control.admin import create_admin_app
from zerodown.control.server import AdminServer
from zerodown.dataplane.base import DataPlane, DrainResult
from zerodown.deploy.contract import ControlPlane, DeployView, EventView, ReleaseView, StatusView
from zerodown.deploy.contract import JsonView as View
from zerodown.errors import (
    ConfigError,
    DeployBusy,
    HealthGateTimeout,
    NotDeployable,
    UnknownService,
    ZerodownError,
)
from zerodown.routing import RoutingTable
from zerodown.stats import Stats

TOKEN = "deploy-token"
T = TypeVar("T")

# The journal's shape: a "before" and an "after" entry per step.
STEPS: list[View] = [
    {
        "index": 0,
        "kind": "start",
        "step": {"kind": "start", "role": "new", "count": 2},
        "phase": "before",
        "detail": None,
        "at": 1000.1,
    },
    {
        "index": 0,
        "kind": "start",
        "step": {"kind": "start", "role": "new", "count": 2},
        "phase": "after",
        "detail": "2 started",
        "at": 1000.5,
    },
    {
        "index": 1,
        "kind": "set_traffic",
        "step": {"kind": "set_traffic", "mode": "split", "new_weight": 10.0},
        "phase": "before",
        "detail": None,
        "at": 1001.0,
    },
]
STATUS: View = {
    "service": "web",
    "current": "v1",
    "deploying": None,
    "instances": [
        {
            "id": "web-v1-1",
            "version": "v1",
            "address": "127.0.0.1:9001",
            "state": "ready",
            "routed": True,
        },
        {
            "id": "web-v2-1",
            "version": "v2",
            "address": "127.0.0.1:9002",
            "state": "starting",
            "routed": False,
        },
    ],
    "traffic": {"v1": 90.0, "v2": 10.0},
    "paused": False,
    "pause": None,
    "crash_loop": None,
}
RELEASES: list[View] = [
    {"version": "v2", "status": "current", "created_at": 1000.0, "last_deployed_at": 1001.0},
    {"version": "v1", "status": "previous", "created_at": 900.0, "last_deployed_at": 901.0},
]
EVENTS: list[View] = [
    {"id": 1, "service": "web", "deploy_id": 1, "kind": "deploy_started", "data": {}, "at": 1.0},
    {
        "id": 2,
        "service": "web",
        "deploy_id": 1,
        "kind": "step",
        "data": {"index": 0, "phase": "after", "note": "line\nbreak"},
        "at": 2.0,
    },
    {
        "id": 3,
        "service": "web",
        "deploy_id": 1,
        "kind": "traffic",
        "data": {"v1": 50, "v2": 50},
        "at": 3.0,
    },
]


def deploy_view(
    deploy_id: int, service: str, version: str, strategy: str, outcome: str | None, reason: Any
) -> View:
    return {
        "id": deploy_id,
        "service": service,
        "version": version,
        "strategy": strategy,
        "state": outcome or "shifting",
        "outcome": outcome,
        "reason": reason,
        "started_at": 1000.0,
        "finished_at": None if outcome is None else 1002.5,
        "steps": STEPS,
    }


class FakeControl:
    """A ControlPlane of canned answers (kept as JSON, answered as the contract's models).

    `outcome` is what every new deploy has at once (None: it runs on, and
    `wait` lasts its whole timeout). `refuse[name]` is raised by that method.
    `events` yields EVENTS (after `after`, for `service`), each `event_gap`
    seconds apart, then ends, or stays open when `hold_open` is set.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: dict[str, Exception] = {}
        self.outcome: str | None = "succeeded"
        self.reason: str | None = None
        self.deploys: dict[int, View] = {}
        self.event_gap = 0.0
        self.hold_open = False
        self.streams_closed = 0

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.refuse:
            raise self.refuse[name]

    def _known(self, service: str) -> None:
        if service != "web":
            raise UnknownService(f"no service named {service!r}")

    def _new(self, service: str, version: str, strategy: str) -> int:
        deploy_id = len(self.deploys) + 1
        view = deploy_view(deploy_id, service, version, strategy, self.outcome, self.reason)
        self.deploys[deploy_id] = view
        return deploy_id

    async def deploy(self, service: str, version: str, strategy: Any = None) -> int:
        self._call("deploy", service, version, strategy)
        self._known(service)
        return self._new(service, version, strategy or "rolling")

    async def wait(self, deploy_id: int, timeout: float | None = None) -> DeployView | None:
        self._call("wait", deploy_id, timeout)
        view = self.deploys.get(deploy_id)
        if view is not None and view["outcome"] is None and timeout:
            await asyncio.sleep(timeout)
        return None if view is None else DeployView.model_validate(view)

    def deploy_view(self, deploy_id: int) -> DeployView | None:
        self._call("deploy_view", deploy_id)
        view = self.deploys.get(deploy_id)
        return None if view is None else DeployView.model_validate(view)

    def status(self, service: str | None = None) -> list[StatusView]:
        self._call("status", service)
        if service is not None:
            self._known(service)
        running = self.deploys.get(len(self.deploys))
        deploying = running if running is not None and running["outcome"] is None else None
        return [StatusView.model_validate({**STATUS, "deploying": deploying})]

    def releases(self, service: str) -> list[ReleaseView]:
        self._call("releases", service)
        self._known(service)
        return [ReleaseView.model_validate(r) for r in RELEASES]

    async def rollback(self, service: str, to: str | None = None) -> int:
        self._call("rollback", service, to)
        self._known(service)
        return self._new(service, to or "v1", "rolling")

    def promote(self, service: str) -> None:
        self._call("promote", service)
        self._known(service)

    def abort(self, service: str) -> None:
        self._call("abort", service)
        self._known(service)

    def pause(self, service: str) -> None:
        self._call("pause", service)
        self._known(service)

    def resume(self, service: str) -> None:
        self._call("resume", service)
        self._known(service)

    async def events(self, after: int = 0, service: str | None = None) -> AsyncIterator[EventView]:
        self._call("events", after, service)
        try:
            for event in EVENTS:
                if event["id"] > after and service in (None, event["service"]):
                    await asyncio.sleep(self.event_gap)
                    yield EventView.model_validate(event)
            if self.hold_open:
                await asyncio.Event().wait()
        finally:
            self.streams_closed += 1


class NullDataPlane(DataPlane):
    """The deploy routes never touch the data plane; the admin app needs one."""

    async def apply(self, table: RoutingTable) -> None:
        raise AssertionError("a deploy route applied a routing table itself")

    def routing(self) -> RoutingTable:
        return RoutingTable(services=())

    async def drain(self, service: str, address: str, timeout: float) -> DrainResult:
        raise AssertionError("a deploy route drained a target itself")

    async def stats(self) -> Stats:
        return Stats(services={}, connections=0, rejected={})

    async def prometheus(self) -> str:
        return ""


def make_app(control: ControlPlane | None, token: str | None = TOKEN) -> Any:
    return create_admin_app(NullDataPlane(), token, control)


# -- plumbing --------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request as it goes over the wire (blocking; run it in a thread).

    A POST says it is JSON even without a body, as the CLI does (the server
    refuses any other type on a change); `headers` may say otherwise.
    """
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None or method != "GET":
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request(method, path, body=data, headers=sent)
        response = conn.getresponse()
        names = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, names, response.read())
    finally:
        conn.close()


@dataclass
class Api:
    port: int
    client: AdminClient

    async def raw(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return await asyncio.to_thread(raw, self.port, method, path, body, **kwargs)

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one blocking AdminClient call off the server's loop."""
        return await asyncio.to_thread(fn, *args)

    async def refused(self, fn: Callable[..., Any], *args: Any) -> AdminError:
        with pytest.raises(AdminError) as info:
            await asyncio.to_thread(fn, *args)
        return info.value


@contextlib.asynccontextmanager
async def admin(control: ControlPlane | None, token: str | None = TOKEN) -> AsyncIterator[Api]:
    server = AdminServer(make_app(control, token), "127.0.0.1", 0)
    await server.start()
    try:
        yield Api(server.port, AdminClient(f"http://127.0.0.1:{server.port}", token, DEADLINE))
    finally:
        await server.stop()


# -- deploy ----------------------------------------------------------------------


def test_deploy_is_202_with_where_to_follow_it() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            reply = await api.raw("POST", "/v1/services/web/deploys", {"version": "v2"})
            assert reply.status == 202, reply.body
            assert reply.json() == {"deploy_id": 1, "url": "/v1/deploys/1"}
            assert reply.headers["location"] == "/v1/deploys/1"
            assert await api(api.client.deploy, "web", "v3", "canary") == 2
        assert fake.calls == [("deploy", "web", "v2", None), ("deploy", "web", "v3", "canary")]

    run(scenario())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "version"),
        ({"version": ""}, "version"),
        ({"version": "../../etc"}, "version"),
        ({"version": "v2", "strategy": "yolo"}, "strategy"),
        ({"version": "v2", "stratgy": "canary"}, "stratgy"),
    ],
)
def test_deploy_body_is_checked_before_the_control_plane_sees_it(
    body: dict[str, Any], field: str
) -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            reply = await api.raw("POST", "/v1/services/web/deploys", body)
            assert reply.status == 400, reply.body
            assert [d["field"] for d in reply.json()["detail"]] == [field]
        assert fake.calls == []

    run(scenario())


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownService("no service named 'web'"), 404),
        (DeployBusy("deploy 3 of web (v2) is running"), 409),
        (NotDeployable("nothing to roll back to"), 409),
        (ConfigError("no command to run", key="services.web.command"), 400),
        (HealthGateTimeout("v2 not healthy within 60s"), 422),
        (ZerodownError("something else"), 500),
    ],
)
def test_refusals_map_to_a_status_with_the_message(error: Exception, status: int) -> None:
    async def scenario() -> None:
        fake = FakeControl()
        fake.refuse["deploy"] = error
        async with admin(fake) as api:
            refused = await api.refused(api.client.deploy, "web", "v2")
            assert (refused.status, refused.message) == (status, str(error))
            reply = await api.raw("POST", "/v1/services/web/deploys", {"version": "v2"})
            assert reply.json() == {"error": str(error)}  # one error shape, no detail

    run(scenario())


def test_deploy_view_and_unknown_id() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            deploy_id = await api(api.client.deploy, "web", "v2")
            view = await api(api.client.deploy_view, deploy_id)
            assert view == fake.deploys[deploy_id]
            refused = await api.refused(api.client.deploy_view, 99)
            assert (refused.status, refused.message) == (404, "no deploy 99")
            assert (await api.raw("GET", "/v1/deploys/x")).status == 400

    run(scenario())


def test_wait_is_a_long_poll_bounded_by_its_timeout() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        fake.outcome = None  # runs on: the wait lasts its whole timeout
        async with admin(fake) as api:
            deploy_id = await api(api.client.deploy, "web", "v2")
            view = await api(api.client.wait, deploy_id, 0.05)
            assert view["outcome"] is None
            assert ("wait", deploy_id, 0.05) in fake.calls
            reply = await api.raw("GET", f"/v1/deploys/{deploy_id}/wait?timeout=0")
            assert reply.status == 200
            fake.deploys[deploy_id]["outcome"] = "succeeded"
            reply = await api.raw("GET", f"/v1/deploys/{deploy_id}/wait")
            assert reply.json()["outcome"] == "succeeded"
            assert fake.calls[-1] == ("wait", deploy_id, wire.WAIT_DEFAULT)
            for bad in ("301", "-1", "soon"):
                reply = await api.raw("GET", f"/v1/deploys/{deploy_id}/wait?timeout={bad}")
                assert reply.status == 400, bad
            assert (await api.refused(api.client.wait, 99, 0.0)).status == 404

    run(scenario())


# -- state -----------------------------------------------------------------------


def test_status_of_all_and_of_one() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            assert await api(api.client.status) == [STATUS]
            reply = await api.raw("GET", "/v1/services/web/status")
            assert reply.json() == STATUS  # one object, not a list
            assert await api(api.client.status, "web") == [STATUS]
            refused = await api.refused(api.client.status, "api")
            assert (refused.status, refused.message) == (404, "no service named 'api'")
        assert fake.calls[:2] == [("status", None), ("status", "web")]

    run(scenario())


def test_releases() -> None:
    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            assert await api(api.client.releases, "web") == RELEASES
            assert (await api.refused(api.client.releases, "api")).status == 404

    run(scenario())


def test_service_names_cannot_change_the_route() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            assert (await api.refused(api.client.releases, "web/../../v1/status")).status == 404
            assert (await api.refused(api.client.status, "web?x=1")).status == 404
        # neither reached another route (GET /v1/status would answer 200)
        assert fake.calls == [("status", "web?x=1")]

    run(scenario())


# -- rollback and the running deploy ---------------------------------------------


def test_rollback_with_and_without_a_body() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            reply = await api.raw("POST", "/v1/services/web/rollback")
            assert reply.status == 202, reply.body
            assert reply.json() == {"deploy_id": 1, "url": "/v1/deploys/1"}
            assert await api(api.client.rollback, "web", "v0") == 2
            assert await api(api.client.rollback, "web") == 3
            reply = await api.raw("POST", "/v1/services/web/rollback", {"to": "../x"})
            assert reply.status == 400
            fake.refuse["rollback"] = NotDeployable("no release before v1")
            refused = await api.refused(api.client.rollback, "web")
            assert (refused.status, refused.message) == (409, "no release before v1")
        assert [c for c in fake.calls if c[0] == "rollback"][:3] == [
            ("rollback", "web", None),
            ("rollback", "web", "v0"),
            ("rollback", "web", None),
        ]

    run(scenario())


@pytest.mark.parametrize("action", ["promote", "abort", "pause", "resume"])
def test_actions_on_the_running_deploy(action: str) -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            reply = await api.raw("POST", f"/v1/services/web/{action}")
            assert (reply.status, reply.json()) == (200, {"ok": True})
            assert await api(getattr(api.client, action), "web") is None
            fake.refuse[action] = NotDeployable("no deploy of web is running")
            refused = await api.refused(getattr(api.client, action), "web")
            assert (refused.status, refused.message) == (409, "no deploy of web is running")
            del fake.refuse[action]
            assert (await api.refused(getattr(api.client, action), "api")).status == 404
        assert fake.calls[:2] == [(action, "web"), (action, "web")]

    run(scenario())


# -- without a control plane, and auth ---------------------------------------------

ROUTES = [
    ("POST", "/v1/services/web/deploys", {"version": "v2"}),
    ("GET", "/v1/deploys/1", None),
    ("GET", "/v1/deploys/1/wait?timeout=0", None),
    ("GET", "/v1/status", None),
    ("GET", "/v1/services/web/status", None),
    ("GET", "/v1/services/web/releases", None),
    ("POST", "/v1/services/web/rollback", {"to": "v1"}),
    ("POST", "/v1/services/web/promote", None),
    ("POST", "/v1/services/web/abort", None),
    ("POST", "/v1/services/web/pause", None),
    ("POST", "/v1/services/web/resume", None),
    ("GET", "/v1/events", None),
]


def test_without_a_control_plane_every_deploy_route_is_503() -> None:
    async def scenario() -> None:
        async with admin(None) as api:
            for method, path, body in ROUTES:
                reply = await api.raw(method, path, body)
                assert reply.status == 503, (method, path)
                assert reply.json() == {"error": "no control plane"}
            refused = await api.refused(api.client.status)
            assert (refused.status, refused.message) == (503, "no control plane")
            # the data plane's routes are still there
            assert (await api.raw("GET", "/v1/routing")).status == 200

    run(scenario())


def test_every_deploy_route_needs_the_token() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            for method, path, body in ROUTES:
                for token in (None, "wrong"):
                    reply = await api.raw(method, path, body, token=token)
                    assert reply.status == 401, (method, path, token)
            anonymous = AdminClient(f"http://127.0.0.1:{api.port}", None)
            refused = await api.refused(anonymous.deploy, "web", "v2")
            assert (refused.status, refused.message) == (401, "missing or wrong bearer token")
        assert fake.calls == []

    run(scenario())


def test_without_a_token_a_cross_site_form_cannot_act() -> None:
    # <form method=POST action="http://127.0.0.1:9900/v1/services/web/abort"> on
    # any page the operator has open: refused by what the browser says about it
    # (403), and, from a browser that says nothing, by the form's type (415).
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    browser = {**form, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}

    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake, token=None) as api:
            changes = [(m, p) for m, p, _ in ROUTES if m == "POST"]
            for method, path in changes:
                reply = await api.raw(method, path, None, token=None, headers=browser)
                assert reply.status == 403, (path, reply.body)
                assert reply.json()["detail"] == {"sec_fetch_site": "cross-site"}
                reply = await api.raw(method, path, None, token=None, headers=form)
                assert reply.status == 415, (path, reply.body)
                assert reply.json()["detail"]["content_type"] == form["Content-Type"]
            assert fake.calls == []
            # the CLI's client gets through: it says JSON, with `{}` for no body
            await api(api.client.abort, "web")  # None, as its type says
            assert await api(api.client.rollback, "web") == 1
        assert fake.calls == [("abort", "web"), ("rollback", "web", None)]

    run(scenario())


def test_openapi_lists_the_deploy_routes() -> None:
    service = "/v1/services/{service}"
    expected = {f"{service}/{verb}" for verb in ("deploys", "status", "releases", "rollback")}
    expected |= {f"{service}/{verb}" for verb in ("promote", "abort", "pause", "resume")}
    expected |= {"/v1/deploys/{deploy_id}", "/v1/deploys/{deploy_id}/wait"}
    expected |= {"/v1/status", "/v1/events"}

    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            paths = set((await api.raw("GET", "/openapi.json")).json()["paths"])
            assert expected <= paths, expected - paths

    run(scenario())


# -- events (SSE) ----------------------------------------------------------------


def sse(event: View) -> str:
    """One event as the wire carries it."""
    data = json.dumps(event, separators=(",", ":"))
    return f"id: {event['id']}\nevent: {event['kind']}\ndata: {data}\n\n"


def test_events_stream_is_read_by_the_client() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            events = await api(lambda: list(api.client.events()))
            assert events == EVENTS
            assert await api(lambda: list(api.client.events(1, "web"))) == EVENTS[1:]
        assert [c for c in fake.calls if c[0] == "events"] == [
            ("events", 0, None),
            ("events", 1, "web"),
        ]
        assert fake.streams_closed == 2

    run(scenario())


def test_events_wire_format() -> None:
    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            reply = await api.raw("GET", "/v1/events?after=2")
            assert reply.status == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            assert reply.headers["cache-control"] == "no-cache"
            assert reply.body.decode() == sse(EVENTS[2])
            # a newline inside the data stays escaped: one `data:` line per event
            reply = await api.raw("GET", "/v1/events?after=1")
            assert reply.body.decode().count("\ndata: ") == 2
            assert "line\\nbreak" in reply.body.decode()

    run(scenario())


def test_a_reconnecting_eventsource_resumes_after_last_event_id() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        async with admin(fake) as api:
            reply = await api.raw("GET", "/v1/events", headers={"Last-Event-ID": "2"})
            assert reply.body.decode().startswith("id: 3\n")
            # an explicit ?after wins over the header
            reply = await api.raw("GET", "/v1/events?after=0", headers={"Last-Event-ID": "2"})
            assert reply.body.decode().startswith("id: 1\n")
        assert [c for c in fake.calls if c[0] == "events"] == [
            ("events", 2, None),
            ("events", 0, None),
        ]

    run(scenario())


def test_events_for_an_unknown_service_is_404_not_a_silent_stream() -> None:
    async def scenario() -> None:
        async with admin(FakeControl()) as api:
            with pytest.raises(AdminError) as info:
                await api(lambda: list(api.client.events(service="api")))
            assert (info.value.status, info.value.message) == (404, "no service named 'api'")

    run(scenario())


def test_an_idle_stream_gets_keepalive_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "SSE_KEEPALIVE", 0.02)

    async def scenario() -> None:
        fake = FakeControl()
        fake.event_gap = 0.15
        async with admin(fake) as api:
            reply = await api.raw("GET", "/v1/events?after=2")
            body = reply.body.decode()
            assert body.startswith(": keep-alive\n\n")
            assert body.endswith(sse(EVENTS[2]))
            # the client skips the comments
            assert await api(lambda: list(api.client.events(2))) == EVENTS[2:]

    run(scenario())


def test_a_client_that_leaves_closes_the_event_source() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        fake.hold_open = True
        async with admin(fake) as api:

            def first_then_leave() -> View:
                stream = api.client.events()
                first = next(stream)
                stream.close()  # closes the connection
                return first

            assert await api(first_then_leave) == EVENTS[0]
            await until(lambda: fake.streams_closed > 0, "the stream closed", DEADLINE)

    run(scenario())


def test_stopping_the_server_ends_open_streams() -> None:
    # An event stream never ends by itself: without end_streams() the stop
    # would wait out uvicorn's graceful timeout and then cancel it.
    async def scenario() -> None:
        fake = FakeControl()
        fake.hold_open = True
        server = AdminServer(make_app(fake), "127.0.0.1", 0)
        await server.start()
        client = AdminClient(f"http://127.0.0.1:{server.port}", TOKEN, DEADLINE)
        received: list[View] = []

        def read() -> None:
            for event in client.events():
                received.append(event)

        reading = asyncio.ensure_future(asyncio.to_thread(read))
        await until(lambda: len(received) == len(EVENTS), "every event", DEADLINE)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.stop()
        assert loop.time() - started < server_module.SHUTDOWN_TIMEOUT
        await asyncio.wait_for(reading, DEADLINE)  # the client saw the stream end cleanly
        assert received == EVENTS
        assert fake.streams_closed == 1

    run(scenario())


def test_streams_run_again_after_a_paused_server_serves_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hot restart that fails pauses the API (ending its streams) and starts
    # it again; a stream opened then must stay open, not end at once.
    monkeypatch.setattr(events_module, "SSE_KEEPALIVE", 0.02)

    async def scenario() -> None:
        fake = FakeControl()
        fake.hold_open = True
        server = AdminServer(make_app(fake), "127.0.0.1", 0)
        await server.start()
        await server.pause()
        await server.start()
        try:
            after = len(EVENTS)  # nothing to send: only keep-alives while it is open
            read = await asyncio.to_thread(keepalives, server.port, f"/v1/events?after={after}", 3)
        finally:
            await server.stop()
        assert read.count(": keep-alive") >= 3, read

    run(scenario())


def keepalives(port: int, path: str, wanted: int) -> str:
    """What the stream sends until `wanted` keep-alive comments came, or it ended."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        seen = ""
        while seen.count(": keep-alive") < wanted:
            line = response.readline().decode()
            if not line:
                break  # the stream ended
            seen += line
        return seen
    finally:
        conn.close()


# -- the client without a server ---------------------------------------------------


def test_client_says_how_to_fix_an_unreachable_daemon() -> None:
    async def scenario() -> None:
        server = AdminServer(make_app(FakeControl()), "127.0.0.1", 0)
        await server.start()
        port = server.port
        await server.stop()  # nothing listens there now
        client = AdminClient(f"http://127.0.0.1:{port}", TOKEN)
        with pytest.raises(AdminUnreachable) as info:
            await asyncio.to_thread(client.status)
        assert info.value.status == 0
        assert str(info.value) == (
            f"cannot reach zerodown at http://127.0.0.1:{port}: is `zerodown serve` running?"
        )
        with pytest.raises(AdminUnreachable):
            await asyncio.to_thread(lambda: list(client.events()))

    run(scenario())


def test_a_bug_in_the_control_plane_is_500_in_the_error_shape() -> None:
    async def scenario() -> None:
        fake = FakeControl()
        fake.refuse["releases"] = KeyError("boom")
        async with admin(fake) as api:
            refused = await api.refused(api.client.releases, "web")
            assert (refused.status, refused.message) == (500, "internal error: KeyError: 'boom'")
            assert await api(api.client.status, "web") == [STATUS]

    run(scenario())
