"""Who listens on an instance's port: the instance itself, or someone else?

A health check only proves that *something* answers on the port. An app
that ignores `{port}` leaves the port to whoever takes it, and a check that
another program passes would route users to that program. So an instance
counts as started only when a LISTEN socket on its port is held by its own
process group (or a child of its leader that left the group).

`classify` is pure, over a snapshot of /proc; `port_owner` takes the snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address

from zerodown.release import Instance
from zerodown.runtime import procfs
from zerodown.runtime.base import PortOwner
from zerodown.runtime.procfs import Listener

Sockets = Mapping[int, set[int] | None]  # pid -> inodes it holds (None: not readable)


def port_owner(instance: Instance) -> PortOwner:
    """Ask the kernel and classify; "unknown" without a pid or without /proc."""
    if instance.pid is None or not os.path.isdir("/proc/self/fd"):
        return PortOwner("unknown")
    found = procfs.listeners()
    # The leader alone first: it is the listener of most apps, and the group
    # takes a walk over every process of the host to find.
    leader = {instance.pid: procfs.socket_inodes(instance.pid)}
    verdict = classify(instance.host, instance.port, found, leader)
    if verdict.kind != "instance":
        sockets = {pid: procfs.socket_inodes(pid) for pid in procfs.group_members(instance.pid)}
        verdict = classify(instance.host, instance.port, found, sockets)
    if verdict.kind != "other":
        return verdict
    return _name_the_other(instance, found)


def classify(host: str, port: int, found: list[Listener], sockets: Sockets) -> PortOwner:
    """The verdict for `host:port`, given every listener and the group's sockets."""
    ours = set().union(*(inodes for inodes in sockets.values() if inodes is not None))
    unreadable = any(inodes is None for inodes in sockets.values())
    on_port = [listener for listener in found if listener.port == port and _reaches(listener, host)]
    foreign = [listener for listener in on_port if listener.inode not in ours]
    if foreign:
        # A member we cannot read (it changed its uid) may be the holder.
        return PortOwner("unknown") if unreadable else PortOwner("other")
    if on_port:
        return PortOwner("instance")
    elsewhere = sorted({listener.port for listener in found if listener.inode in ours})
    return PortOwner("nobody", elsewhere=tuple(elsewhere))


def _name_the_other(instance: Instance, found: list[Listener]) -> PortOwner:
    """Say which program holds the port; "instance" after all when it is a child
    of the instance's leader that left the group (setsid)."""
    foreign = [
        listener
        for listener in found
        if listener.port == instance.port and _reaches(listener, instance.host)
    ]
    holders = procfs.holders({listener.inode for listener in foreign})
    assert instance.pid is not None  # port_owner checked
    if holders and all(procfs.descends_from(pid, instance.pid) for pid in holders):
        return PortOwner("instance")
    if holders:
        pid = holders[0]
        return PortOwner("other", holder=f"pid {pid} ({procfs.command_of(pid) or 'gone'})")
    uids = sorted({listener.uid for listener in foreign})
    if uids == [os.getuid()]:
        return PortOwner("nobody")  # closed between our two looks: ask again
    return PortOwner("other", holder=f"a process of uid {uids[0]} that zerodown cannot inspect")


def _reaches(listener: Listener, host: str) -> bool:
    """True when connections to `host` may land on `listener`: same address or a wildcard."""
    if listener.address.is_unspecified:
        return True
    try:
        wanted: IPv4Address | IPv6Address = ip_address(host)
    except ValueError:  # a host name: any address may be it
        return True
    address = listener.address
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address == wanted
