"""The optional JSON access log: one line per answered request."""

from __future__ import annotations

import json
from pathlib import Path

from harness import backends, port_of, proxy, request, run, service
from zerodown.proxy.settings import ProxySettings


def test_each_request_is_one_json_line_with_its_target_and_request_id(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> list[str | None]:
        async with (
            backends("a") as (a,),
            proxy(
                service(a.address, host="app.test"), settings=ProxySettings(access_log=str(log))
            ) as server,
        ):
            first = await request(port_of(server), path="/one?x=1", host="app.test")
            second = await request(port_of(server), "POST", "/two", body=b"hi", host="app.test")
            missing = await request(port_of(server), path="/three", host="unknown.test")
        assert (first.status, second.status, missing.status) == (200, 200, 404)
        return [first.header("x-request-id"), second.header("x-request-id")]

    first_id, second_id = run(main())
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("GET", "/one?x=1", 200),
        ("POST", "/two", 200),
        ("GET", "/three", 404),
    ]
    assert entries[2]["target"] is None  # refused by the proxy: no app saw it
    assert [e["request_id"] for e in entries[:2]] == [first_id, second_id]
    assert entries[0]["target"] == entries[1]["target"]
    assert entries[0]["target"] is not None
    assert entries[0]["client"] == "127.0.0.1"


def test_every_answer_the_proxy_gives_itself_logs_its_kind(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    async def main() -> None:
        async with backends("live", "dead") as (live, dead):
            await dead.stop()  # its port refuses connections
            services = (
                service(live.address, name="web", host="web.test"),
                service(name="empty", host="empty.test"),
                service(dead.address, name="gone", host="gone.test", tries=1),
            )
            settings = ProxySettings(access_log=str(log))
            async with proxy(*services, settings=settings) as server:
                port = port_of(server)
                statuses = [
                    (await request(port, host=host)).status
                    for host in ("web.test", "empty.test", "gone.test", "other.test")
                ]
        assert statuses == [200, 503, 502, 404]

    run(main())
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert {k: v for k, v in entries[1].items() if k not in ("time", "duration", "request_id")} == {
        "client": "127.0.0.1",
        "method": "GET",
        "path": "/",
        "status": 503,
        "target": None,
        "error": "no_healthy_target",
    }
    assert [(e["status"], e["error"]) for e in entries] == [
        (200, None),
        (503, "no_healthy_target"),
        (502, "upstream_connect"),
        (404, "no_route"),
    ]
