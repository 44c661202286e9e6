"""allow/deny, block and rate_limit on the embedded proxy, through real sockets.

The client is 127.0.0.1 here: whom it forwards for (X-Forwarded-For) counts
only when 127.0.0.1 is a trusted proxy. Every refused request is checked
for its status, the rule its body names, its access-log line and the
service's counter, and for never having reached the backend.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from harness import KeepAliveClient, backends, port_of, proxy, request, run, service
from prometheus_text import value
from zerodown.dataplane.supervisor import MultiWorkerDataPlane
from zerodown.guardspec import BlockSpec, GuardSpec, RateLimitSpec
from zerodown.proxy.settings import ProxySettings
from zerodown.routing import RoutingTable

TRUSTED = ProxySettings(trusted_proxies=("127.0.0.0/8",))


def guarded(address: str, **guard: Any) -> Any:
    return service(address, guard=GuardSpec(**guard))


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_allow_and_deny_judge_the_forwarded_client_only_behind_a_trusted_proxy(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    rules = {"allow": ("10.0.0.0/8",), "deny": ("10.9.0.0/16",)}

    async def statuses(settings: ProxySettings, forwarded: list[str]) -> list[tuple[int, bytes]]:
        async with (
            backends("a") as (a,),
            proxy(guarded(a.address, **rules), settings=settings) as s,
        ):
            answers = []
            for client in forwarded:
                r = await request(port_of(s), headers={"X-Forwarded-For": client})
                answers.append((r.status, r.body))
            stats = s.stats().services["web"]
            assert stats.denied == sum(1 for status, _ in answers if status == 403)
            assert len(a.requests) == sum(1 for status, _ in answers if status == 200)
            return answers

    async def main() -> None:
        settings = ProxySettings(trusted_proxies=TRUSTED.trusted_proxies, access_log=str(log))
        trusted = await statuses(settings, ["10.1.2.3", "10.9.0.5", "192.0.2.1"])
        assert [status for status, _ in trusted] == [200, 403, 403]
        assert trusted[1][1].startswith(b"403 Forbidden: deny 10.9.0.0/16\n")
        assert b"allow (not in 10.0.0.0/8)" in trusted[2][1]
        # From an untrusted peer the header is the client's own say: 127.0.0.1 is judged.
        untrusted = await statuses(ProxySettings(), ["10.1.2.3"])
        assert untrusted[0][0] == 403

    run(main())
    entries = log_lines(log)
    assert [(e["client"], e["status"], e.get("rule")) for e in entries] == [
        ("10.1.2.3", 200, None),
        ("10.9.0.5", 403, "deny 10.9.0.0/16"),
        ("192.0.2.1", 403, "allow (not in 10.0.0.0/8)"),
    ]
    assert entries[1]["error"] == "denied"


def test_each_block_rule_answers_403_and_logs_the_rule(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    block = BlockSpec(paths=(r"^/\.git", r"\.php$"), methods=("TRACE",), user_agents=("sqlmap",))

    async def main() -> list[tuple[int, bytes]]:
        settings = ProxySettings(access_log=str(log))
        async with (
            backends("a") as (a,),
            proxy(guarded(a.address, block=block), settings=settings) as s,
        ):
            port = port_of(s)
            cases = [
                await request(port, path="/.git/config"),
                await request(port, path="/%2egit/HEAD"),  # what the app would decode
                await request(port, path="/index.php?x=1"),
                await request(port, "TRACE", "/"),
                await request(port, headers={"User-Agent": "SQLMap/1.7"}),
                await request(port, path="/fine.php.html", headers={"User-Agent": "curl/8"}),
            ]
            assert [r.path for r in a.requests] == ["/fine.php.html"]
            assert s.stats().services["web"].blocked == 5
            return [(r.status, r.body) for r in cases]

    answers = run(main())
    assert [status for status, _ in answers] == [403, 403, 403, 403, 403, 200]
    assert answers[0][1] == (
        b"403 Forbidden: block.paths ^/\\.git\n"
        b"this request matches a rule that blocks it; it was not sent on\n"
    )
    assert [e.get("rule") for e in log_lines(log)] == [
        "block.paths ^/\\.git",
        "block.paths ^/\\.git",
        "block.paths \\.php$",
        "block.methods TRACE",
        "block.user_agents sqlmap",
        None,
    ]


def test_rate_limit_answers_429_with_retry_after_past_the_burst_then_recovers(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    # 4 at once (3 + burst 1), then one token every 0.1 s.
    limit = RateLimitSpec(requests=3, per=0.3, burst=1)

    async def main() -> None:
        settings = ProxySettings(access_log=str(log))
        async with (
            backends("a") as (a,),
            proxy(guarded(a.address, rate_limit=limit), settings=settings) as s,
            KeepAliveClient(port_of(s)) as client,
        ):
            burst = [await client.request() for _ in range(6)]
            assert [r.status for r in burst] == [200, 200, 200, 200, 429, 429]
            refused = burst[-1]
            assert refused.header("retry-after") == "1"
            assert refused.header("x-zerodown-error") == "rate_limited"
            assert refused.body.startswith(b"429 Too Many Requests: rate_limit (4 at once")
            await asyncio.sleep(0.12)  # one token back
            after = [await client.request() for _ in range(2)]
            assert [r.status for r in after] == [200, 429]
            assert len(a.requests) == 5
            assert s.stats().services["web"].rate_limited == 3
            metrics = s.prometheus()
            assert (
                value(metrics, "zerodown_refused_total", service="web", reason="rate_limited") == 3
            )

    run(main())
    rules = [e["rule"] for e in log_lines(log) if e["status"] == 429]
    assert len(rules) == 3
    assert all(rule.startswith("rate_limit (4 at once, 10/s per address)") for rule in rules)


def test_rate_limit_by_header_keeps_one_bucket_per_value_and_the_address_without_one() -> None:
    limit = RateLimitSpec(requests=2, per=60, key="header:X-Api-Key")

    async def main() -> dict[str, list[int]]:
        async with backends("a") as (a,), proxy(guarded(a.address, rate_limit=limit)) as s:
            port = port_of(s)
            seen: dict[str, list[int]] = {}
            for name, headers in (("k1", {"X-Api-Key": "k1"}), ("k2", {"x-api-key": "k2"})):
                seen[name] = [(await request(port, headers=headers)).status for _ in range(3)]
            seen["none"] = [(await request(port)).status for _ in range(3)]
            return seen

    assert run(main()) == {"k1": [200, 200, 429], "k2": [200, 200, 429], "none": [200, 200, 429]}


def test_two_workers_share_one_rate_limit() -> None:
    limit = RateLimitSpec(requests=10, per=60)
    sent = 30

    async def main() -> str:
        async with backends("a") as (a,):
            table = RoutingTable(services=(guarded(a.address, rate_limit=limit),))
            plane = MultiWorkerDataPlane(ProxySettings(), table, 2)
            await plane.start(["127.0.0.1:0"])
            shared = plane._rate_table
            assert shared is not None
            try:
                port = plane.addresses[0][1]
                # A new connection each: SO_REUSEPORT spreads them over both workers.
                statuses = Counter([(await request(port)).status for _ in range(sent)])
                per_worker = [s.services["web"].rate_limited for s in await plane.worker_stats()]
                merged = (await plane.stats()).services["web"]
            finally:
                await plane.stop(1.0)
        assert statuses == {200: 10, 429: sent - 10}  # the limit, not twice it
        assert len(a.requests) == 10
        assert all(n > 0 for n in per_worker), per_worker  # both workers refused some
        assert merged.rate_limited == sent - 10
        return shared

    assert not Path(run(main())).exists()  # removed with the data plane


def test_a_service_without_rules_has_no_guard() -> None:
    async def main() -> None:
        async with backends("a") as (a,), proxy(service(a.address)) as s:
            assert s.services["web"].guard is None
            assert (await request(port_of(s))).status == 200

    run(main())
