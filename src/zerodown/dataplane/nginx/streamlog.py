"""nginx's stream (tcp) access log -> per-target counters. Pure: bytes in, counts out.

Open-source nginx keeps no per-server counters for `stream` upstreams (that
is NGINX Plus's API), so, as for HTTP (accesslog.py), each tcp connection
is logged at its end, one tab-separated line (STREAM_LOG_FORMAT) in a
buffered file of its own (STREAM_LOG beside access.log, followed by a
logfile.LogFile), and counted into the same AccessCounters the HTTP lines
go to: report.build_stats reads them alike.

What a line says, per try (its variables list every try, comma-separated):

- a try with no connect time ("-") failed to connect (refused, timed out:
  nginx tells them apart only in its error log). Followed by another try,
  it is a retry (nginx moved on: `proxy_next_upstream`); the last one, with
  nginx's 502, is a `connect` failure.
- the connected try (the last): a `reset` failure when the target sent no
  byte ($upstream_bytes_received 0) although the client had sent some
  ($bytes_received > 0): nginx hands the client a plain close whether the
  target reset or closed, so that is all it can tell; otherwise an answer,
  a 2xx with the connect time as its latency (docs/tcp.md).
- no target at all ($upstream_addr "-"): refused by allow/deny (403,
  counted as `denied`), or no target to go to.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from zerodown.dataplane.nginx.accesslog import AccessCounters
from zerodown.dataplane.nginx.logfile import FILE_BUFFER, FILE_FLUSH
from zerodown.proxy.metrics import LATENCY_BUCKETS, TargetMetrics

__all__ = ["SERVICE_VARIABLE", "STREAM_LOG", "STREAM_LOG_FORMAT", "StreamCounters", "log_lines"]

STREAM_LOG: Final = "stream.log"  # beside settings.Paths.access_log
# Set in each tcp service's `server {}` (stream.py): the service a line is about.
SERVICE_VARIABLE: Final = "$zd_tcp_svc"
# The key (LogTarget.key) first, as in the HTTP file: a line without it is not ours.
STREAM_LOG_FORMAT: Final = "\t".join(
    (
        "%(key)s",
        SERVICE_VARIABLE,
        "$upstream_addr",
        "$status",
        "$upstream_connect_time",
        "$upstream_bytes_received",
        "$bytes_received",
    )
)
FIELDS: Final = 7


def log_lines(path: Path, key: str) -> list[str]:
    """The `log_format` and `access_log` lines of the stream block."""
    return [
        f"log_format zerodown_tcp '{STREAM_LOG_FORMAT % {'key': key}}';",
        f"access_log {path} zerodown_tcp buffer={FILE_BUFFER} flush={FILE_FLUSH};",
    ]


@dataclass
class StreamCounters:
    """Counts the stream log's lines into `counters` (the driver's AccessCounters)."""

    counters: AccessCounters
    lines: int = 0
    foreign: int = 0  # lines ignored: not our seven fields, or not carrying the key

    def feed_lines(self, chunk: bytes) -> None:
        """Count the whole lines of a chunk of the stream log, by distinct line."""
        key = self.counters.key
        for line, times in Counter(chunk.split(b"\n")).items():
            if not line:
                continue
            words = line.decode(errors="replace").split("\t")
            if len(words) != FIELDS or words[0] != key or not key:
                self.foreign += times
                continue
            self.lines += times
            self._line(*words[1:], times=times)

    def _line(
        self,
        service: str,
        addresses: str,
        status: str,
        connect_times: str,
        received: str,
        client_bytes: str,
        *,
        times: int,
    ) -> None:
        tries = _split(addresses)
        if not tries:
            if status == "403":
                refused = self.counters.refused.setdefault(service, {})
                refused["denied"] = refused.get("denied", 0) + times
            return
        connects, bytes_in = _split(connect_times), _split(received)
        client_spoke = _int(client_bytes) > 0
        for index, address in enumerate(tries):
            metrics = self.counters.metrics(service, address)
            metrics.requests += times
            last = index == len(tries) - 1
            seconds = _seconds(connects[index] if index < len(connects) else "")
            if seconds is None and not last:
                metrics.retries += times  # nginx tried the next server
            elif seconds is None and status in ("502", "504"):
                metrics.failures["connect"] += times
            elif seconds is None:
                continue  # the client left while nginx connected: no outcome
            elif client_spoke and _int(bytes_in[index] if index < len(bytes_in) else "") == 0:
                metrics.failures["reset"] += times
            else:
                _answered(metrics, seconds, times)


def _answered(metrics: TargetMetrics, seconds: float, times: int) -> None:
    """TargetMetrics.response(200, seconds), `times` over (identical lines at once)."""
    metrics.responses[1] += times  # 2xx
    latency = metrics.latency
    latency.counts[bisect_left(LATENCY_BUCKETS, seconds)] += times
    latency.count += times
    latency.sum += seconds * times


def _split(value: str) -> list[str]:
    if value in ("", "-"):
        return []
    return [part.strip() for part in value.split(",")]


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "-": no connection


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0
