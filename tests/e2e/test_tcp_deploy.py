"""A rolling deploy of a tcp service (issue 13), end to end: `zerodown serve` on
the embedded data plane, the demo echo app (zerodown.demo.echo) as real
instances, `zerodown deploy` from the CLI, and clients that keep connections
open and open new ones all through it.

What must hold: no connection fails (refused, reset, cut, a wrong answer);
an open connection stays on its release to its end, even while that release
drains; new connections go to the new release once it serves.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from .conftest import INSTANCES, ClusterFactory, free_port, toml_str, wait_for

LONG_CLIENTS = 4  # connections kept open, each for LONG_LIFE, then opened again
LONG_LIFE = 1.5  # seconds: below drain_timeout, so a drain waits for them
LINE_EVERY = 0.05
SHORT_EVERY = 0.02  # a new one-line connection this often
CONNECT_TIMEOUT = 5.0


@dataclass
class Seen:
    """What the clients saw: per connection, its versions; and every failure."""

    failures: list[str] = field(default_factory=list)
    short: Counter[str] = field(default_factory=Counter)
    first_v2: float = float("inf")  # when a new connection first reached v2
    # (version, opened, closed) of each long connection, monotonic seconds
    long: list[tuple[str, float, float]] = field(default_factory=list)


class Clients:
    """Long and short tcp clients on a thread with its own loop, for a `with` block."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen = Seen()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Clients:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(LONG_LIFE + CONNECT_TIMEOUT + 5)

    async def _main(self) -> None:
        await asyncio.gather(*(self._long(i) for i in range(LONG_CLIENTS)), self._shorts())

    async def _long(self, client: int) -> None:
        await asyncio.sleep(client * LONG_LIFE / LONG_CLIENTS)  # staggered ends
        while not self._stop.is_set():
            try:
                await self._one_long(client)
            except (OSError, TimeoutError, ValueError) as exc:
                self.seen.failures.append(f"long {client}: {type(exc).__name__}: {exc}")

    async def _one_long(self, client: int) -> None:
        opened = time.monotonic()
        async with asyncio.timeout(LONG_LIFE + CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            versions = set()
            n = 0
            while time.monotonic() - opened < LONG_LIFE:
                line = f"c{client} n{n}"
                writer.write(line.encode() + b"\n")
                version, _, echoed = (await reader.readline()).decode().rstrip("\n").partition(" ")
                if echoed != line:
                    raise ValueError(f"sent {line!r}, got {version!r} {echoed!r}")
                versions.add(version)
                n += 1
                await asyncio.sleep(LINE_EVERY)
            writer.close()
        if len(versions) != 1:
            raise ValueError(f"one connection, several versions: {versions}")
        self.seen.long.append((versions.pop(), opened, time.monotonic()))

    async def _shorts(self) -> None:
        tasks = set()
        while not self._stop.is_set():
            task = asyncio.create_task(self._short())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(SHORT_EVERY)
        await asyncio.gather(*tasks)

    async def _short(self) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"short\n")
                writer.write_eof()
                answer = await reader.read()
                writer.close()
        except (OSError, TimeoutError) as exc:
            self.seen.failures.append(f"short: {type(exc).__name__}: {exc}")
            return
        version, _, rest = answer.decode().partition(" ")
        if rest != "short\n":
            self.seen.failures.append(f"short: answer {answer!r}")
        else:
            self.seen.short[version] += 1
            if version == "v2":
                self.seen.first_v2 = min(self.seen.first_v2, time.monotonic())


@pytest.mark.timeout(60)
def test_a_rolling_deploy_of_a_tcp_service_fails_no_connection(
    make_cluster: ClusterFactory,
) -> None:
    port = free_port()
    echo = f"{sys.executable} -m zerodown.demo.echo --port {{port}} --version {{version}}"
    cluster = make_cluster(
        mode='"tcp"',
        listen=toml_str(f"127.0.0.1:{port}"),
        command=toml_str(echo),
        balance='"least_conn"',
        health='{ interval = "200ms", rise = 1 }',
        recreate="{}",
        drain_timeout='"10s"',
    )
    with Clients(port) as clients:
        time.sleep(LONG_LIFE)  # every long client has a connection open to v1
        switched = time.monotonic()
        view = cluster.deploy_ok("v2")
        assert view["strategy"] == "rolling"
        time.sleep(LONG_LIFE / 2)  # and then to v2
    seen = clients.seen
    assert seen.failures == [], seen.failures[:10]
    assert set(seen.short) == {"v1", "v2"}, seen.short
    assert sum(seen.short.values()) > 100
    # Connections open to v1 lived on to their own end while new ones went to v2.
    assert any(v == "v1" and closed > seen.first_v2 for v, _, closed in seen.long), seen.long
    assert any(v == "v2" and opened > switched for v, opened, _ in seen.long), seen.long
    wait_for("only v2 running", lambda: cluster.running() == {"v2": INSTANCES}, 10)
    # The other strategies move a tcp service too (no load: rolling's is the proof).
    for version, strategy in (("v3", "blue_green"), ("v4", "recreate")):
        assert cluster.deploy_ok(version, "--strategy", strategy)["strategy"] == strategy
        assert asyncio.run(ask_version(port)) == version


async def ask_version(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"which\n")
    writer.write_eof()
    answer = await reader.read()
    writer.close()
    return answer.decode().split(" ")[0]
