"""What the controller spends per request on the drivers' access logs.

    PYTHONPATH=src python bench/logcost.py [LINES]

Times, per line, in this process (no proxy): parsing and counting nginx's
access log and HAProxy's latency line as the drivers do, and a loopback UDP
datagram's trip through recv (the socket path's cost beside the parsing).
Compare runs on the same machine; a busy machine inflates every figure.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable

from zerodown.dataplane.haproxy.latency import LatencyLog
from zerodown.dataplane.nginx.accesslog import AccessCounters

KEY = "0123456789abcdef"
ADDRESSES = ("127.0.0.1:9001", "127.0.0.1:9002")
TIMES = ("0.000", "0.001", "0.002", "0.001")


def nginx_datagrams(count: int) -> list[bytes]:
    lines = []
    for index in range(count):
        entry = {
            "k": KEY,
            "svc": "zd_web",
            "addr": ADDRESSES[index % 2],
            "ustatus": "200",
            "urt": TIMES[index % 4],
            "rt": TIMES[index % 4],
            "status": "200",
            "msec": f"{1764856322 + index / 1000:.3f}",
            "zr": "",
            "rule": "",
            "zsvc": "",
        }
        lines.append(b"<190>Dec  4 13:52:02 nginx: " + json.dumps(entry).encode())
    return lines


def nginx_file_lines(count: int) -> bytes:
    """What nginx writes with render.FILE_LOG_FORMAT: tab-separated lines."""
    return b"".join(
        "\t".join(
            (KEY, "zd_web", ADDRESSES[index % 2], "200", TIMES[index % 4], "200", "", "")
        ).encode()
        + b"\n"
        for index in range(count)
    )


def whole_lines(data: bytes, size: int) -> list[bytes]:
    """`data` in pieces of about `size` bytes, each ending at a line's end (as logfile.py)."""
    pieces, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + size) + 1 or len(data)
        pieces.append(data[start:end])
        start = end
    return pieces


def haproxy_datagrams(count: int) -> list[bytes]:
    return [
        f"<134>Dec  4 13:52:02 haproxy[1]: {KEY} zd_web s{index % 2} {index % 3}".encode()
        for index in range(count)
    ]


def per_line(label: str, count: int, work: Callable[[], object]) -> None:
    started = time.process_time()
    work()
    took = time.process_time() - started
    print(f"{label:<44} {took / count * 1e6:8.2f} µs/line")


def udp_recv(datagrams: list[bytes]) -> None:
    reader = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    reader.bind(("127.0.0.1", 0))
    writer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = reader.getsockname()
    batch = 1000
    spent = 0.0
    for start in range(0, len(datagrams), batch):
        for datagram in datagrams[start : start + batch]:
            writer.sendto(datagram, target)
        begun = time.process_time()
        for _ in datagrams[start : start + batch]:
            reader.recv(65536)
        spent += time.process_time() - begun
    print(f"{'UDP recv, one datagram a call':<44} {spent / len(datagrams) * 1e6:8.2f} µs/line")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    nginx = nginx_datagrams(count)
    counters = AccessCounters(key=KEY)
    per_line(
        "nginx JSON datagram -> AccessCounters.feed",
        count,
        lambda: [counters.feed(d) for d in nginx],
    )
    chunk = nginx_file_lines(count)
    counters = AccessCounters(key=KEY)
    chunks = whole_lines(chunk, 1024 * 1024)  # the driver reads the file in 1 MiB reads
    per_line(
        "nginx file lines -> AccessCounters.feed_lines",
        count,
        lambda: [counters.feed_lines(one) for one in chunks],
    )
    assert counters.lines == count, counters.lines
    haproxy = haproxy_datagrams(count)
    latency = LatencyLog(key=KEY)
    per_line("HAProxy line -> LatencyLog.feed", count, lambda: [latency.feed(d) for d in haproxy])
    udp_recv(nginx)


if __name__ == "__main__":
    main()
