"""Exit codes, and the one place the library's errors become a message and a code.

Exit codes (EXIT_CODES below is the text `--help` shows):
0 success, 1 failure at run time (daemon unreachable, refused), 2 bad usage
or bad config; a deploy or rollback that was followed to its end: 3 rolled
back, 4 failed, 5 aborted, 6 still running when --timeout ran out; 130 the
user stopped following (Ctrl-C) and the deploy runs on. `verify` adds 126
and 127 for a command that cannot run, as a shell does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

import typer

from zerodown.cli.client import AdminError
from zerodown.errors import ConfigError, ZerodownError

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
EXIT_ROLLED_BACK: Final = 3
EXIT_FAILED: Final = 4
EXIT_ABORTED: Final = 5
EXIT_TIMEOUT: Final = 6
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as shells report Ctrl-C
# As a shell says of a command it cannot run: 127 not found, 126 found but not executable.
EXIT_NOT_FOUND: Final = 127
EXIT_NOT_EXECUTABLE: Final = 126

OUTCOME_EXIT: Final = {
    "succeeded": EXIT_OK,
    "rolled_back": EXIT_ROLLED_BACK,
    "failed": EXIT_FAILED,
    "aborted": EXIT_ABORTED,
}
# Refusals that mean the command line was wrong (an unknown service, a bad
# version), as opposed to a state of the daemon (busy, nothing to promote).
USAGE_STATUSES: Final = frozenset({400, 404})

EXIT_CODES: Final = """\
Exit codes:
  0    the new release serves all traffic (with --no-wait: the deploy started)
  1    any other error, e.g. the daemon cannot be reached, another deploy runs
  2    bad config or usage (unknown service, bad version or option, --to an unknown one)
  3    rolled back
  4    failed
  5    aborted
  6    --timeout ran out; the deploy runs on
  130  interrupted (Ctrl-C); the deploy runs on
"""


def usage(message: str) -> typer.Exit:
    """A command line that cannot mean anything: one line, exit 2 (click's own code)."""
    typer.echo(f"zerodown: {message}", err=True)
    return typer.Exit(EXIT_CONFIG)


def fail(exc: ZerodownError) -> typer.Exit:
    """The error as `zerodown: ...` lines on stderr, and the exit that fits it."""
    for line in str(exc).splitlines():  # several config problems: one prefixed line each
        typer.echo(f"zerodown: {line}", err=True)
    status = exc.status if isinstance(exc, AdminError) else None
    if status == 401:
        typer.echo("zerodown: set ZERODOWN_TOKEN to the daemon's token", err=True)
    bad_usage = isinstance(exc, ConfigError) or status in USAGE_STATUSES
    return typer.Exit(EXIT_CONFIG if bad_usage else EXIT_FAILURE)


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn the library's errors into a message and an exit code (the CLI's one job there)."""
    try:
        yield
    except ZerodownError as exc:
        raise fail(exc) from None
