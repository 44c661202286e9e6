"""Sticky sessions end to end (issue 12): `zerodown serve` with `sticky` on
the service, a client that keeps its cookie as a browser does, and a rolling
deploy under it. The client stays bound until its instance drains, then is
moved with a rewritten cookie, never a failed request; at the end it is
bound to the new release.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field

import pytest

from .conftest import INSTANCES, Cluster, ClusterFactory, demo_command, toml_str


@dataclass
class StickyClient:
    """A browser-like client on its own thread: keeps the cookie it is given."""

    cluster: Cluster
    seen: list[tuple[int, str, bool]] = field(default_factory=list)  # status, version, re-set
    cookie: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def request(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.cluster.listen, timeout=10)
        try:
            conn.request("GET", "/", headers={"Cookie": self.cookie} if self.cookie else {})
            response = conn.getresponse()
            response.read()
            set_cookie = response.getheader("Set-Cookie")
            if set_cookie:
                self.cookie = set_cookie.split(";")[0]
            self.seen.append(
                (response.status, response.getheader("X-Version") or "", bool(set_cookie))
            )
        except OSError as exc:
            self.seen.append((0, type(exc).__name__, False))
        finally:
            conn.close()

    def __enter__(self) -> StickyClient:
        def loop() -> None:
            while not self._stop.wait(0.01):
                self.request()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(15)


@pytest.mark.timeout(120)
def test_a_sticky_client_stays_bound_and_moves_once_its_instance_drains(
    make_cluster: ClusterFactory,
) -> None:
    # No start-up delay: what is tested is the move, not a slow app (10 s less).
    cluster = make_cluster(
        sticky='{ cookie = "zd_route", ttl = "1h" }',
        command=toml_str(demo_command("--startup-delay", "0")),
    )
    before = StickyClient(cluster)
    for _ in range(20):
        before.request()
    # Bound by the first answer: no other cookie for the next 19.
    assert [s for s in before.seen if s[2]] == [before.seen[0]]
    assert {s[:2] for s in before.seen} == {(200, "v1")}

    with StickyClient(cluster) as client:
        client.cookie = before.cookie
        cluster.deploy_ok("v2")
        for _ in range(10):
            client.request()  # after the deploy, on this thread's turn too
    statuses = {status for status, _, _ in client.seen}
    assert statuses == {200}, client.seen
    # Moved only when its instance left: at most once per old instance.
    assert 1 <= sum(1 for s in client.seen if s[2]) <= INSTANCES, client.seen
    assert client.seen[-1][1] == "v2"
    tail = client.seen[-10:]
    assert {s[1:] for s in tail} == {("v2", False)}  # bound again, nothing to rewrite
