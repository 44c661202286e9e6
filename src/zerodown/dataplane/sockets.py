"""The listening sockets of a multi-worker data plane, and who accepts on which.

One socket shared by every worker spreads connections badly: the worker that
wakes first accepts a whole burst (measured: 41 of 50 connections, 705 of
1,000), and with keep-alive that worker then carries most of the load. So
each worker gets sockets of its own, bound to the same port with
SO_REUSEPORT, and the kernel spreads new connections over them by hash.

SO_REUSEPORT drops the queue of a socket that closes, so the supervisor
holds every socket for as long as it serves: a worker that dies leaves its
socket open, its queued clients wait for the restarted worker, which gets
the same socket. A hot restart hands all of them on, and the new generation
never closes one either: with fewer workers than sockets, a worker accepts
on several; with more, it binds more. Only a socket bound without
SO_REUSEPORT (handed over by a one-worker generation) cannot get siblings;
then every worker accepts on it, spread or not.
"""

from __future__ import annotations

import socket

from zerodown.proxy.listener import bind_listener


class ListenSet:
    def __init__(self, groups: list[list[socket.socket]], workers: int) -> None:
        self.groups = groups  # one group per listening address, in config order
        self.workers = workers

    def __repr__(self) -> str:
        sizes = [len(g) for g in self.groups]
        return f"<ListenSet {self.addresses} sockets={sizes} workers={self.workers}>"

    @classmethod
    def open(cls, listen: list[str] | list[socket.socket], workers: int) -> ListenSet:
        """Bind "host:port" addresses, or take over sockets already listening."""
        if all(isinstance(item, socket.socket) for item in listen):
            groups = _by_address([item for item in listen if isinstance(item, socket.socket)])
        else:
            groups = [[bind_listener(str(item), reuse_port=True)] for item in listen]
        for group in groups:
            _grow(group, workers)
        return cls(groups, workers)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [group[0].getsockname()[:2] for group in self.groups]

    @property
    def sockets(self) -> list[socket.socket]:
        return [sock for group in self.groups for sock in group]

    def for_worker(self, index: int) -> list[socket.socket]:
        """The sockets worker `index` accepts on: its share of each address."""
        mine = []
        for group in self.groups:
            if len(group) < self.workers:
                mine += group  # could not give each worker its own: all share
            else:
                mine += group[index :: self.workers]
        return mine

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _by_address(sockets: list[socket.socket]) -> list[list[socket.socket]]:
    groups: dict[tuple[str, int], list[socket.socket]] = {}
    for sock in sockets:
        groups.setdefault(sock.getsockname()[:2], []).append(sock)
    return list(groups.values())


def _grow(group: list[socket.socket], workers: int) -> None:
    """Add sockets on the group's port until each worker has one, where the kernel lets us."""
    if not group[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT):
        return
    host, port = group[0].getsockname()[:2]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    while len(group) < workers:
        group.append(bind_listener(address, reuse_port=True, probe=False))
