"""`proxy_protocol = true` in a zerodown.toml, through a real `zerodown serve`
with two proxy workers: the key reaches every worker from the file."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from harness import backends, run
from proxy_protocol_harness import GET, STRANGER, send, status, v1, v2

START_DEADLINE = 15.0  # a fresh interpreter and two workers on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_two_workers_takes_the_client_from_the_header(tmp_path: Path) -> None:
    port = free_port()

    async def main() -> None:
        async with backends("a") as (a,):
            config = tmp_path / "zerodown.toml"
            config.write_text(
                f"""
[proxy]
listen = ["127.0.0.1:{port}"]
admin = "127.0.0.1:{free_port()}"
state_dir = "{tmp_path / "state"}"
workers = 2
shutdown_timeout = "1s"
trusted_proxies = ["127.0.0.1"]
proxy_protocol = true

[services.web]
upstreams = ["{a.address}"]
health = false
deny = ["192.0.2.0/24"]
"""
            )
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "zerodown", "serve", "-c", str(config)
            )
            try:
                await _until_served(port)
                # New connections each: SO_REUSEPORT spreads them over both workers.
                answers = [await send(port, v1(f"10.0.0.{n}") + GET) for n in range(1, 7)]
                denied = await send(port, v2("192.0.2.9") + GET)
                stranger = await send(port, v1("10.0.0.1") + GET, source=STRANGER)
            finally:
                daemon.terminate()
                await asyncio.wait_for(daemon.wait(), 10)
            assert [status(raw) for raw in answers] == [200] * 6
            assert (status(denied), status(stranger)) == (403, 400)
            seen = [r.header("X-Forwarded-For") for r in a.requests]
            assert seen[-6:] == [f"10.0.0.{n}" for n in range(1, 7)]
            assert "192.0.2.9" not in seen

    run(main())


async def _until_served(port: int) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + START_DEADLINE
    while loop.time() < end:
        try:
            if status(await send(port, v1("10.9.9.9") + GET)) == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"zerodown serve did not serve on {port} in {START_DEADLINE}s")
