"""Which listening sockets each worker of a multi-worker data plane accepts on."""

from __future__ import annotations

import socket

import pytest

from zerodown.dataplane.sockets import ListenSet
from zerodown.errors import ListenError
from zerodown.proxy.listener import bind_listener


def ports(socks: list[socket.socket]) -> set[int]:
    return {s.getsockname()[1] for s in socks}


def test_each_worker_gets_a_socket_of_its_own_on_one_port() -> None:
    listening = ListenSet.open(["127.0.0.1:0", "127.0.0.1:0"], 3)
    try:
        assert [len(g) for g in listening.groups] == [3, 3]
        assert len(ports(listening.groups[0])) == 1
        assert len(ports(listening.groups[1])) == 1
        shares = [listening.for_worker(i) for i in range(3)]
        assert all(len(share) == 2 for share in shares)  # one per address
        assert len({s.fileno() for share in shares for s in share}) == 6  # nothing shared
        assert listening.addresses == [g[0].getsockname()[:2] for g in listening.groups]
    finally:
        listening.close()


def test_connections_spread_over_the_workers_sockets() -> None:
    listening = ListenSet.open(["127.0.0.1:0"], 2)
    port = listening.addresses[0][1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    try:
        accepted = []
        for sock in listening.sockets:
            sock.setblocking(False)
            count = 0
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                count += 1
            accepted.append(count)
        assert sum(accepted) == 200
        assert min(accepted) >= 50, accepted  # hashed: about half each, never all on one
    finally:
        for client in clients:
            client.close()
        listening.close()


def test_handed_over_sockets_are_all_kept_whatever_the_new_worker_count() -> None:
    old = ListenSet.open(["127.0.0.1:0"], 4)
    try:
        fewer = ListenSet.open(old.sockets, 2)  # a new generation with 2 workers
        assert len(fewer.sockets) == 4  # none closed: their queues would be lost
        assert [len(fewer.for_worker(i)) for i in range(2)] == [2, 2]
        more = ListenSet.open(old.sockets, 6)  # more workers: more sockets on the port
        assert len(more.sockets) == 6
        assert len(ports(more.sockets)) == 1
        for sock in more.sockets[4:]:
            sock.close()
    finally:
        old.close()


def test_a_socket_bound_without_reuse_port_is_shared_by_every_worker() -> None:
    single = bind_listener("127.0.0.1:0")  # what a one-worker generation hands over
    try:
        listening = ListenSet.open([single], 3)
        assert listening.sockets == [single]
        assert all(listening.for_worker(i) == [single] for i in range(3))
    finally:
        single.close()


def test_a_port_another_process_listens_on_is_refused_even_with_reuse_port() -> None:
    # Another zerodown's workers hold the port with SO_REUSEPORT: binding ours
    # with it too would silently share their traffic instead of failing.
    theirs = ListenSet.open(["127.0.0.1:0"], 2)
    try:
        host, port = theirs.addresses[0]
        with pytest.raises(ListenError) as refused:
            ListenSet.open([f"{host}:{port}"], 2)
        assert f"cannot listen on {host}:{port}: address already in use" in str(refused.value)
        with pytest.raises(ListenError):
            bind_listener(f"{host}:{port}")
    finally:
        theirs.close()
