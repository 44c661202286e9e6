"""Who owns an instance's port: `classify` over a snapshot (no sockets), then
the kernel's listener table against a real listening socket."""

from __future__ import annotations

import os
import socket
from ipaddress import IPv4Address, IPv6Address, ip_address

from zerodown.runtime import procfs
from zerodown.runtime.base import ExitReport, PortOwner, exit_text
from zerodown.runtime.owner import classify
from zerodown.runtime.procfs import Listener

HOST = "127.0.0.1"


def listener(port: int, inode: int, address: str = HOST) -> Listener:
    parsed: IPv4Address | IPv6Address = ip_address(address)
    return Listener(parsed, port, 1000, inode)


def test_the_instance_listening_on_its_port_owns_it() -> None:
    found = [listener(20001, 11), listener(9100, 12)]
    assert classify(HOST, 20001, found, {42: {11, 12}}) == PortOwner("instance")


def test_a_listener_outside_the_group_is_another_program() -> None:
    found = [listener(20001, 11)]
    assert classify(HOST, 20001, found, {42: {5}}) == PortOwner("other")


def test_listening_elsewhere_lists_those_ports() -> None:
    found = [listener(8000, 11), listener(9100, 12), listener(20001, 13, "127.0.0.2")]
    verdict = classify(HOST, 20001, found, {42: {11, 12}, 43: set()})
    assert verdict == PortOwner("nobody", elsewhere=(8000, 9100))


def test_wildcard_and_mapped_addresses_reach_the_host_and_others_do_not() -> None:
    for address in ("0.0.0.0", "::", "::ffff:127.0.0.1"):
        assert classify(HOST, 20001, [listener(20001, 7, address)], {42: set()}).kind == "other"
    assert classify(HOST, 20001, [listener(20001, 7, "10.0.0.5")], {42: set()}).kind == "nobody"


def test_a_member_we_cannot_read_makes_another_holder_unknown() -> None:
    found = [listener(20001, 11)]
    assert classify(HOST, 20001, found, {42: set(), 43: None}) == PortOwner("unknown")


def test_the_kernel_table_shows_a_listening_socket_with_its_inode() -> None:
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as sock:
            sock.bind((host, 0))
            sock.listen()
            port, inode = sock.getsockname()[1], os.fstat(sock.fileno()).st_ino
            mine = [found for found in procfs.listeners() if found.inode == inode]
            assert mine == [Listener(ip_address(host), port, os.getuid(), inode)]
            assert inode in (procfs.socket_inodes(os.getpid()) or set())
            assert mine == [found for found in procfs._proc_listeners() if found.inode == inode]


def test_exits_in_words_and_the_log_tail() -> None:
    assert [exit_text(code) for code in (3, -11, 139, None)] == [
        "exit 3",
        "killed by SIGSEGV",
        "exit 139, a shell's way of saying SIGSEGV",
        "exit status unknown",
    ]
    report = ExitReport("web-v1-a", 1, None)
    assert "not captured" in report.output()
