"""HAProxy's per-request log lines -> a latency histogram per server, and
per backend the requests its rules refused and its cache hits and misses. Pure.

`show stat` counts requests and responses per server but keeps no
histogram (only `rtime`, a mean of the last 1024, and `rtime_max`), and the
canary judge's rank test needs one. So HAProxy also logs one line per
request (LOG_FORMAT) to the driver's socket (dataplane/accesslog.py), and
each line's `%Tr` (milliseconds from the request sent to the server to its
response headers; -1 with no response) goes into the bucket of its server.
The counts stay `show stat`'s; only latency comes from here.

The line is six words, not JSON: the driver reads one per request the
proxy serves, on the controller's CPU beside the proxy's, and splitting
words costs a tenth of parsing an object (measured: 14 µs a line with
json on a busy 2-core machine). Backend and server names hold no spaces
(servers.py), nor do the last two words: `res.cache_hit` (1 when HAProxy's
cache answered, else 0) and the refusal (guard.py: `kind,index,client`;
"-" when the request was not refused). A line of four words, without
these two, is the format of an HAProxy started by an older zerodown, still
serving until its next reload: its latency counts, as it always did.

Cache hits and misses are counted by backend for every line; stats.py
reports them for cached services only. A miss is a request the rules let
through that the cache did not answer (as the embedded proxy counts one).

The lines come in batches over a stream (dataplane/logstream.py), and a
batch is counted by distinct line: %Tr is whole milliseconds, so thousands
of requests make a few dozen distinct lines; collections.Counter groups
them in C and each is split once (bench/logcost.py: well under a
microsecond a request). `feed` takes one syslog datagram, as before.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from zerodown.proxy.metrics import LATENCY_BUCKETS, Histogram

__all__ = ["LOG_FORMAT", "REFUSAL_KINDS", "LatencyLog", "OnRefusal"]

# The key (LogTarget.key), %b the backend, %s the server's name
# (servers.server_name), %Tr the time to the response headers in ms, as the
# embedded proxy and nginx's $upstream_response_time measure it; then
# whether the cache answered, and the refusal (guard.REFUSAL_VAR).
LOG_FORMAT: Final = "%(key)s %%b %%s %%Tr %%[res.cache_hit] %%[var(txn.zd_refusal)]"
_OLD_WORDS: Final = 4  # the format before the last two words
_WORDS: Final = 6
REFUSAL_KINDS: Final = ("denied", "blocked", "rate_limited")
# (backend, kind, index of its rule, client, how many such lines): for the driver's log.
OnRefusal = Callable[[str, str, int, str, int], None]


def _ignore(backend: str, kind: str, index: int, client: str, times: int) -> None:
    pass


@dataclass
class LatencyLog:
    """Histograms per (backend, server) from the log lines carrying `key`;
    per backend, its refusals by kind and its cache hits and misses
    (stats.SERVICE_COUNTS names), and each refusal to `on_refusal`."""

    key: str = ""
    servers: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    backends: dict[str, dict[str, int]] = field(default_factory=dict)
    on_refusal: OnRefusal = _ignore
    lines: int = 0
    foreign: int = 0  # datagrams ignored: not our words, or not carrying the key

    def feed(self, datagram: bytes) -> None:
        """One syslog datagram: `<134>Dec  4 ... haproxy[7]: key backend server Tr hit refusal`."""
        words = datagram.rstrip().split(b" ")
        key = self.key.encode()
        for count in (_WORDS, _OLD_WORDS):
            if len(words) > count and words[-count] == key:
                self._count(words[-count:], 1)
                return
        self.foreign += 1

    def feed_lines(self, chunk: bytes) -> None:
        """Whole lines, `key backend server Tr hit refusal` each (a ring's `format raw`)."""
        for line, times in Counter(chunk.split(b"\n")).items():
            if line:
                self._count(line.split(b" "), times)

    def _count(self, words: list[bytes], times: int) -> None:
        if len(words) not in (_WORDS, _OLD_WORDS) or words[0] != self.key.encode() or not self.key:
            self.foreign += times
            return
        self.lines += times
        backend, server, took = words[1:4]
        if len(words) == _WORDS:
            self._service(backend.decode(), words[4], words[5], times)
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

    def _service(self, backend: str, hit: bytes, refusal: bytes, times: int) -> None:
        counts = self.backends.get(backend)
        if counts is None:
            counts = self.backends[backend] = {}
        if refusal != b"-":
            kind, _, rest = refusal.decode(errors="replace").partition(",")
            if kind not in REFUSAL_KINDS:
                return  # not a word guard.py writes: neither a refusal nor a miss
            counts[kind] = counts.get(kind, 0) + times
            index, _, client = rest.partition(",")
            self.on_refusal(backend, kind, int(index) if index.isdigit() else -1, client, times)
            return
        name = "cache_hits" if hit == b"1" else "cache_misses"
        counts[name] = counts.get(name, 0) + times

    def forget_all_but(self, keep: set[tuple[str, str]]) -> None:
        """Drop servers no longer in the table, so memory stays bounded."""
        for where in self.servers.keys() - keep:
            del self.servers[where]
