"""HAProxy's per-request log lines -> a latency histogram per server. Pure.

`show stat` counts requests and responses per server but keeps no
histogram (only `rtime`, a mean of the last 1024, and `rtime_max`), and the
canary judge's rank test needs one. So HAProxy also logs one line per
request (LOG_FORMAT) to the driver's socket (dataplane/accesslog.py), and
each line's `%Tr` (milliseconds from the request sent to the server to its
response headers; -1 with no response) goes into the bucket of its server.
The counts stay `show stat`'s; only latency comes from here.

The line is four words, not JSON: the driver reads one per request the
proxy serves, on the controller's CPU beside the proxy's, and splitting
four words costs a tenth of parsing an object (measured: 14 µs a line with
json on a busy 2-core machine). Backend and server names hold no spaces
(servers.py), so the last four words of a line are always these.

The lines come in batches over a stream (dataplane/logstream.py), and a
batch is counted by distinct line: %Tr is whole milliseconds, so thousands
of requests make a few dozen distinct lines; collections.Counter groups
them in C and each is split once (bench/logcost.py: well under a
microsecond a request). `feed` takes one syslog datagram, as before.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from zerodown.proxy.metrics import LATENCY_BUCKETS, Histogram

__all__ = ["LOG_FORMAT", "LatencyLog"]

# The key (LogTarget.key), %b the backend, %s the server's name
# (servers.server_name), %Tr the time to the response headers in ms, as the
# embedded proxy and nginx's $upstream_response_time measure it.
LOG_FORMAT: Final = "%(key)s %%b %%s %%Tr"


@dataclass
class LatencyLog:
    """Histograms per (backend, server) from the log lines carrying `key`."""

    key: str = ""
    servers: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    lines: int = 0
    foreign: int = 0  # datagrams ignored: not our four words, or not carrying the key

    def feed(self, datagram: bytes) -> None:
        """One syslog datagram: `<134>Dec  4 ... haproxy[7]: key backend server Tr`."""
        self._count(datagram.rstrip().rsplit(b" ", 4)[1:], 1)

    def feed_lines(self, chunk: bytes) -> None:
        """Whole lines, `key backend server Tr` each (a ring's `format raw`)."""
        for line, times in Counter(chunk.split(b"\n")).items():
            if line:
                self._count(line.split(b" "), times)

    def _count(self, words: list[bytes], times: int) -> None:
        if len(words) != 4 or words[0] != self.key.encode() or not self.key:
            self.foreign += times
            return
        self.lines += times
        _, backend, server, took = words
        if not took.isdigit():  # "-1": no response (a failed connect, a client gone)
            return
        where = (backend.decode(), server.decode())
        histogram = self.servers.get(where)
        if histogram is None:
            histogram = self.servers[where] = Histogram()
        seconds = int(took) / 1000
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += times  # observe, `times` over
        histogram.count += times
        histogram.sum += seconds * times

    def forget_all_but(self, keep: set[tuple[str, str]]) -> None:
        """Drop servers no longer in the table, so memory stays bounded."""
        for where in self.servers.keys() - keep:
            del self.servers[where]
