"""wrk: the command line we run and a parser for what it prints. Pure.

We read wrk's human output (with `--latency`) rather than a Lua `done` hook
so that the numbers in the report are the ones anyone rerunning wrk by hand
sees. wrk prints the "Socket errors" and "Non-2xx or 3xx responses" lines
only when they are not zero, so their absence means 0. The deploy extra
adds a Lua script (bench/templates/wrk-count.lua) whose `done` hook prints
its counts after that summary, as `zdbench version V N` and
`zdbench status S N` lines (`parse_counts`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

TIMEOUT = "2s"  # wrk's own default; a request slower than this counts as a timeout

# wrk's format_time_us / format_binary units.
_TIME_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_SIZE = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}

_NUMBER_UNIT = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([A-Za-z]+)$")
_PERCENTILE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s*$")
_TOTALS = re.compile(r"^\s*([0-9]+) requests in (\S+), (\S+) read\s*$")
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)"
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: ([0-9]+)")
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
_COUNT = re.compile(r"^zdbench (version|status) (\S+) ([0-9]+)\s*$", re.MULTILINE)


class WrkOutputError(ValueError):
    """wrk's output lacks a line every completed run prints."""


@dataclass(frozen=True, slots=True)
class SocketErrors:
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    rps: float
    bytes_read: int
    # percentile (50, 75, 90, 99) -> microseconds; empty when nothing was answered
    latency_us: dict[float, float] = field(default_factory=dict)
    socket: SocketErrors = SocketErrors()
    non_2xx: int = 0

    @property
    def p50_us(self) -> float | None:
        return self.latency_us.get(50.0)

    @property
    def p99_us(self) -> float | None:
        return self.latency_us.get(99.0)

    @property
    def errors(self) -> int:
        """Failed requests other than timeouts: connect/read/write errors and bad statuses."""
        return self.socket.connect + self.socket.read + self.socket.write + self.non_2xx


def wrk_command(
    url: str,
    *,
    connections: int,
    threads: int,
    duration_s: float,
    timeout: str = TIMEOUT,
    script: Path | None = None,
) -> list[str]:
    """wrk's argv; `--latency` for the percentile lines the parser reads."""
    threads = max(1, min(threads, connections))  # wrk refuses fewer connections than threads
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={timeout}",
        "--latency",
        *(["-s", str(script)] if script is not None else []),
        url,
    ]


def parse_time_us(text: str) -> float:
    """'1.23ms' -> 1230.0, as wrk's format_time_us writes it."""
    value, unit = _split_unit(text)
    if unit not in _TIME_US:
        raise WrkOutputError(f"unknown time unit in {text!r}")
    return value * _TIME_US[unit]


def parse_size(text: str) -> int:
    """'1.50MB' -> 1572864, as wrk's format_binary writes it (binary multiples)."""
    value, unit = _split_unit(text)
    if unit not in _SIZE:
        raise WrkOutputError(f"unknown size unit in {text!r}")
    return round(value * _SIZE[unit])


def parse_wrk(text: str) -> WrkResult:
    """A WrkResult from wrk's stdout; raises WrkOutputError when wrk did not finish."""
    totals = _find_totals(text.splitlines())
    rps = _RPS.search(text)
    if totals is None or rps is None:
        raise WrkOutputError("no 'requests in' / 'Requests/sec' line: wrk did not finish")
    requests, duration, read = totals
    socket = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=requests,
        duration_s=duration,
        rps=float(rps.group(1)),
        bytes_read=read,
        latency_us=_latency_distribution(text.splitlines()) if requests else {},
        socket=SocketErrors(*(int(g) for g in socket.groups())) if socket else SocketErrors(),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def parse_counts(text: str) -> tuple[dict[str, int], dict[int, int]]:
    """What wrk-count.lua printed: responses by X-Version ('-': none), and by status."""
    versions: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for kind, key, count in _COUNT.findall(text):
        if kind == "version":
            versions[key] = versions.get(key, 0) + int(count)
        elif key.isdigit():
            statuses[int(key)] = statuses.get(int(key), 0) + int(count)
    return dict(sorted(versions.items())), dict(sorted(statuses.items()))


def _split_unit(text: str) -> tuple[float, str]:
    match = _NUMBER_UNIT.match(text.strip())
    if not match:
        raise WrkOutputError(f"not a number with a unit: {text!r}")
    return float(match.group(1)), match.group(2)


def _find_totals(lines: Sequence[str]) -> tuple[int, float, int] | None:
    for line in lines:
        match = _TOTALS.match(line)
        if match:
            return (
                int(match.group(1)),
                parse_time_us(match.group(2)) / 1e6,
                parse_size(match.group(3)),
            )
    return None


def _latency_distribution(lines: Sequence[str]) -> dict[float, float]:
    """The lines after 'Latency Distribution': '     99%    5.00ms'."""
    out: dict[float, float] = {}
    inside = False
    for line in lines:
        if "Latency Distribution" in line:
            inside = True
            continue
        if not inside:
            continue
        match = _PERCENTILE.match(line)
        if not match:
            break
        out[float(match.group(1))] = parse_time_us(match.group(2))
    return out
