"""One proxy worker process: `python -m zerodown.dataplane.worker`.

The supervisor (supervisor.py) opens the listening sockets and starts each
worker with them inherited, plus one end of a control channel. The worker
accepts nothing until the supervisor's `start` gives it the settings, the
routing table and the health of every target; from then on it obeys:

    apply   {table}                    swap the routing table (atomic, as in one process)
    health  {service, address, share}  adopt a verdict (notice, no reply)
    drain   {service, address, timeout}
    stats                              this worker's counters
    stop    {timeout}                  graceful stop, then exit

It runs no health checks (the supervisor checks once for all workers) and
tells the supervisor of every passive ejection it decides, so all workers
eject and restore a target together, and, every ANSWERS_EVERY seconds, of
the targets that answered since (the supervisor's checks of a busy target
time out; its answers excuse them: proxy/health.py). It exits when told to stop or when the
channel closes: a worker never outlives its supervisor. SIGINT and SIGTERM
are the supervisor's to act on (Ctrl-C and systemd signal the whole group);
a worker stopping on its own would only be started again.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import socket
from typing import Any, Final

import uvloop

from zerodown.dataplane.base import SHUTDOWN_IDLE_GRACE
from zerodown.dataplane.channel import Channel, Message
from zerodown.proxy.health import HealthShare
from zerodown.proxy.server import ProxyServer
from zerodown.proxy.settings import ProxySettings
from zerodown.proxy.target import Target
from zerodown.routing import RoutingTable

# How often a worker tells the supervisor which targets answered: well under
# a health check interval, and one small notice per period, off the hot path.
ANSWERS_EVERY: Final = 0.1


class Worker:
    def __init__(self, listen_fds: list[int]) -> None:
        self.listen_fds = listen_fds
        self.server: ProxyServer | None = None
        self.channel: Channel | None = None
        self.done = asyncio.Event()
        self._stopping = False
        self._reporting: asyncio.Task[None] | None = None

    async def run(self, control: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # the supervisor decides the order
            loop.add_signal_handler(sig, lambda: None)
        self.channel = await Channel.over(control, self._handle)
        serving = loop.create_task(self.channel.serve())
        serving.add_done_callback(lambda _: loop.create_task(self._stop(None)))
        await self.done.wait()
        await self.channel.flush()

    # -- requests from the supervisor ----------------------------------------

    def _handle(self, op: str, message: Message) -> Any:
        if op == "start":
            return self._start(message)
        server = self._server()
        if op == "apply":
            server.apply_now(RoutingTable.model_validate(message["table"]))
            return None
        if op == "health":
            share = HealthShare(*message["share"])
            server.adopt_health(message["service"], message["address"], share)
            return None
        if op == "drain":
            return self._drain(message["service"], message["address"], message["timeout"])
        if op == "stats":
            return server.stats().model_dump(mode="json")
        if op == "stop":
            return self._stop(message.get("timeout"))
        if op == "reload_tls":
            return server.reload_tls()
        raise ValueError(f"unknown op {op!r}")

    async def _start(self, message: Message) -> int:
        settings = ProxySettings.from_document(message["settings"])
        table = RoutingTable.model_validate(message["table"])
        self.server = ProxyServer(
            settings,
            table,
            checks=False,
            on_health=self._report,
            rate_table=message.get("rate_table"),
        )
        for service, address, share in message["health"]:
            self.server.adopt_health(service, address, HealthShare(*share))
        await self.server.start([socket.socket(fileno=fd) for fd in self.listen_fds])
        self._reporting = asyncio.get_running_loop().create_task(self._report_answers())
        return len(self.listen_fds)

    async def _report_answers(self) -> None:
        heard: dict[tuple[str, str], float] = {}
        while True:
            await asyncio.sleep(ANSWERS_EVERY)
            if self.server is None or self.channel is None:
                continue
            fresh = []
            for service in self.server.services.values():
                for target in service.targets():
                    at, key = target.health.answered_at, (service.name, target.address)
                    if at is not None and heard.get(key) != at:
                        heard[key] = at
                        fresh.append(key)
            if fresh:
                self.channel.notify("answered", targets=fresh)

    async def _drain(self, service: str, address: str, timeout: float) -> dict[str, Any]:
        result = await self._server().drain(service, address, timeout)
        return dataclasses.asdict(result)

    async def _stop(self, timeout: float | None) -> None:
        if self._stopping:
            return
        self._stopping = True
        if self.server is not None:
            await self.server.stop(timeout, idle_grace=SHUTDOWN_IDLE_GRACE)
        # The reply to `stop` is written as this returns, in this same step;
        # `run` then flushes it before the process ends.
        asyncio.get_running_loop().call_soon(self.done.set)

    def _report(self, service: str, target: Target) -> None:
        if self.channel is not None:
            share = list(target.health.shared())
            self.channel.notify("health", service=service, address=target.address, share=share)

    def _server(self) -> ProxyServer:
        if self.server is None:
            raise RuntimeError("worker not started")
        return self.server


def main() -> None:
    parser = argparse.ArgumentParser(prog="zerodown-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", default=[])
    args = parser.parse_args()
    control = socket.socket(fileno=args.control_fd)
    uvloop.run(Worker(args.listen_fd).run(control))


if __name__ == "__main__":
    main()
