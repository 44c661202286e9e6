"""Where a run happened: CPUs, kernel, tool versions, load."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from zdbench.servers import HAPROXY, NGINX, version

REPO = Path(__file__).resolve().parents[2]


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "nginx": _first_match(version([NGINX, "-v"]), r"nginx/(\S+)"),
        "haproxy": _first_match(version([HAPROXY, "-v"]), r"version (\S+)"),
        "wrk": _first_match(version(["wrk", "-v"]), r"wrk (\S+)"),
        "python": platform.python_version(),
        "uvloop": _dist_version("uvloop"),
        "httptools": _dist_version("httptools"),
        "zerodown": _dist_version("zerodown"),
        "git": _git_revision(),
        "loadavg_before": loadavg(),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _first_match(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else text


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def _git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")  # untracked modules count too
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return f"{rev}{' with uncommitted changes in src/' if dirty else ''}" if rev else "?"
