"""`make bench`: zerodown against nginx and HAProxy, side by side, in one run.

    .venv/bin/python bench/run.py            # about 23 minutes on 2 cores
    BENCH_QUICK=1 .venv/bin/python bench/run.py   # about 5 minutes, a smoke run

Writes bench/results/<date>.json (every raw number) and <date>.md (the
tables, ratios against nginx, the targets); a quick run writes
<date>-quick.*. Every setting is an environment variable: see
zdbench/plan.py. bench/README.md says what is measured and how.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from zdbench.plan import ENV_KEYS, plan_from_env
from zdbench.procs import StartError
from zdbench.report import to_markdown, write
from zdbench.servers import HAPROXY, NGINX
from zdbench.suite import command_line, raise_nofile, run_suite

BENCH = Path(__file__).resolve().parent
SYSTEM_DEPS = BENCH.parent / "scripts" / "system-deps"
REQUIRED = {"nginx": NGINX, "haproxy": HAPROXY, "wrk": "wrk", "taskset": "taskset"}


def missing_tools() -> list[str]:
    return [name for name, path in REQUIRED.items() if shutil.which(path) is None]


def ensure_tools() -> None:
    """Install nginx, HAProxy and wrk with apt-get (scripts/system-deps) when missing."""
    if missing_tools() and SYSTEM_DEPS.exists():
        subprocess.run([str(SYSTEM_DEPS)], check=False)
    if still := missing_tools():
        sys.exit(f"zdbench: missing {', '.join(still)}; install them (apt-get) and rerun")


def main() -> int:
    env = dict(os.environ)
    try:
        plan = plan_from_env(env)
    except ValueError as exc:
        print(f"zdbench: {exc}", file=sys.stderr)
        return 2
    ensure_tools()
    raise_nofile()
    try:
        report = run_suite(plan, command_line(env, ENV_KEYS))
    except KeyboardInterrupt:
        print("\nzdbench: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    except StartError as exc:  # the backends, or a port that stayed busy
        print(f"zdbench: {exc}", file=sys.stderr)
        return 1
    out = Path(env.get("BENCH_OUT") or BENCH / "results")
    stem = report.date + ("-quick" if plan.quick else "")
    json_path, md_path = write(report, out, stem)
    print()
    print(to_markdown(report))
    print(f"zdbench: wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
