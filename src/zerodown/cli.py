"""The `zerodown` command: parses, calls the admin API or the library, prints. Nothing else.

Exit codes (EXIT_CODES below is the text `--help` shows):
0 success, 1 failure at run time (daemon unreachable, refused), 2 bad usage
or bad config; a deploy or rollback that was followed to its end: 3 rolled
back, 4 failed, 5 aborted, 6 still running when --timeout ran out; 130 the
user stopped following (Ctrl-C) and the deploy runs on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
import uvloop

from zerodown.config.strategy import StrategyName
from zerodown.control.client import AdminError
from zerodown.errors import ConfigError, ZerodownError

if TYPE_CHECKING:
    from rich.console import Console

    from zerodown.config import Config
    from zerodown.control.client import AdminClient
    from zerodown.deploy.contract import JsonView as View
    from zerodown.verify import LoadSpec, Report

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
EXIT_ROLLED_BACK: Final = 3
EXIT_FAILED: Final = 4
EXIT_ABORTED: Final = 5
EXIT_TIMEOUT: Final = 6
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as shells report Ctrl-C

OUTCOME_EXIT: Final = {
    "succeeded": EXIT_OK,
    "rolled_back": EXIT_ROLLED_BACK,
    "failed": EXIT_FAILED,
    "aborted": EXIT_ABORTED,
}
# Refusals that mean the command line was wrong (an unknown service, a bad
# version), as opposed to a state of the daemon (busy, nothing to promote).
USAGE_STATUSES: Final = frozenset({400, 404})
# The longest long poll the admin API allows (zerodown.control.admin.WAIT_MAX);
# a longer --timeout polls again.
LONG_POLL_MAX: Final = 300.0

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

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Deploy web services on your own servers without dropping a request.",
)

ConfigOption = Annotated[
    Path, typer.Option("-c", "--config", help="Config file.", show_default=True)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts and CI.")]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait", help="Follow the deploy to its outcome (exit code tells which)."
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0,
        help="Stop waiting after this many seconds (exit 6; the deploy runs on). "
        "Default: until it ends.",
    ),
]
ServiceArgument = Annotated[str, typer.Argument(help="The service, as named in the config.")]
StrategyOption = Annotated[
    StrategyName | None,
    typer.Option("--strategy", help="Override the service's configured strategy for this deploy."),
]


def _version(value: bool) -> None:
    if value:
        from zerodown import __version__

        typer.echo(f"zerodown {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Deploy web services on your own servers without dropping a request."""


def _usage(message: str) -> typer.Exit:
    """A command line that cannot mean anything: one line, exit 2 (click's own code)."""
    typer.echo(f"zerodown: {message}", err=True)
    return typer.Exit(EXIT_CONFIG)


def _fail(exc: ZerodownError) -> typer.Exit:
    for line in str(exc).splitlines():  # several config problems: one prefixed line each
        typer.echo(f"zerodown: {line}", err=True)
    status = exc.status if isinstance(exc, AdminError) else None
    if status == 401:
        typer.echo("zerodown: set ZERODOWN_TOKEN to the daemon's token", err=True)
    usage = isinstance(exc, ConfigError) or status in USAGE_STATUSES
    return typer.Exit(EXIT_CONFIG if usage else EXIT_FAILURE)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn the library's errors into a message and an exit code (the CLI's one job there)."""
    try:
        yield
    except ZerodownError as exc:
        raise _fail(exc) from None


@app.command()
def serve(
    config: ConfigOption = Path("zerodown.toml"),
    keep_instances: Annotated[
        bool,
        typer.Option(
            "--keep-instances/--stop-instances",
            help="On SIGTERM, leave the apps running for the next `zerodown serve` to adopt "
            "(upgrading zerodown itself), or stop them (the default).",
        ),
    ] = False,
) -> None:
    """Run the data plane and the control daemon in the foreground.

    SIGTERM or Ctrl-C stops it; SIGUSR2 restarts it without refusing a
    connection (a new zerodown version or config takes over the sockets).
    """
    from zerodown.config import load_config
    from zerodown.control.daemon import Daemon

    loaded = None
    try:
        loaded = load_config(config)
        keep = "--keep-instances" if keep_instances else "--stop-instances"
        daemon = Daemon(
            loaded, keep_instances=keep_instances, restart_argv=["serve", "-c", str(config), keep]
        )
        uvloop.run(daemon.run_until_signalled())
    except ZerodownError as exc:
        raise _fail(exc) from None
    except OSError as exc:
        # The daemon has stopped (and closed what it had bound) by now.
        raise _fail(_serve_error(exc, loaded)) from None


def _serve_error(exc: OSError, config: Config | None) -> ZerodownError:
    """An OSError that stopped `serve`, as one line: which address, or which file, and why.

    The data plane's bind raises a bare OSError ("[Errno 98] Address already
    in use", no address), so a bind error is pinned on the configured listener
    that cannot be bound now; the admin listener raises ListenError itself.
    """
    from zerodown.errors import ListenError, os_reason

    if exc.errno in BIND_ERRNOS and config is not None:
        busy = [a for a in config.proxy.listen if _cannot_bind(a)]
        where = ", ".join(busy or config.proxy.listen)
        return ListenError(where if len(busy) == 1 else f"one of {where}", exc)
    return ConfigError(f"cannot start: {os_reason(exc)}")


# What a bind raises for an address that cannot be used (in use, not ours, privileged).
BIND_ERRNOS: Final = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _cannot_bind(address: str) -> bool:
    """True when `address` ("host:port") cannot be bound now, as the proxy binds it."""
    import socket

    from zerodown.routing import parse_address

    try:
        host, port = parse_address(address)
    except ValueError:
        return False
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@app.command()
def demo(
    duration: Annotated[
        float | None,
        typer.Option(help="After the story, serve this many seconds (default: until Ctrl-C)."),
    ] = None,
    listen: Annotated[str, typer.Option(help="The proxy's address.")] = "127.0.0.1:8080",
    admin: Annotated[str, typer.Option(help="The admin API's address.")] = "127.0.0.1:9900",
) -> None:
    """The whole story on one machine: v1, then rolling, blue-green, canary, and a rollback."""
    from zerodown.demo.run import run_demo

    with _errors():
        run_demo(duration=duration, listen=listen, admin=admin)


@app.command(epilog=EXIT_CODES)
def deploy(
    service: ServiceArgument,
    version: Annotated[str, typer.Argument(help="The version label of the new release.")],
    config: ConfigOption = Path("zerodown.toml"),
    strategy: StrategyOption = None,
    wait: WaitOption = True,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """Deploy VERSION of SERVICE beside the running one, then shift traffic by the strategy.

    Exits 0 only when the new release serves all traffic. On a terminal a live
    view shows the steps, instances and traffic split; with --json, or when
    the output is not a terminal, the deploy (state, outcome, reason, steps)
    is printed as one JSON object at the end.
    """
    with _errors():
        client = _client(config)
        deploy_id = client.deploy(service, version, strategy)
        _conclude(client, deploy_id, wait=wait, as_json=as_json, timeout=timeout)


@app.command(epilog=EXIT_CODES)
def rollback(
    service: ServiceArgument,
    config: ConfigOption = Path("zerodown.toml"),
    to: Annotated[
        str | None, typer.Option("--to", help="The release to go back to (default: previous).")
    ] = None,
    wait: WaitOption = True,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """Go back to the previous release of SERVICE (instant while it is still warm)."""
    with _errors():
        client = _client(config)
        deploy_id = client.rollback(service, to)
        _conclude(client, deploy_id, wait=wait, as_json=as_json, timeout=timeout)


@app.command()
def promote(service: ServiceArgument, config: ConfigOption = Path("zerodown.toml")) -> None:
    """End the running deploy's pause (a manual canary step) and go on."""
    _act(config, service, "promote", "promoted")


@app.command()
def abort(service: ServiceArgument, config: ConfigOption = Path("zerodown.toml")) -> None:
    """Stop the running deploy of SERVICE and roll it back."""
    _act(config, service, "abort", "aborting the deploy; it rolls back")


@app.command()
def pause(service: ServiceArgument, config: ConfigOption = Path("zerodown.toml")) -> None:
    """Hold the running deploy of SERVICE before its next step, until `zerodown resume`."""
    _act(config, service, "pause", "the deploy holds before its next step")


@app.command()
def resume(service: ServiceArgument, config: ConfigOption = Path("zerodown.toml")) -> None:
    """Let a paused deploy of SERVICE go on."""
    _act(config, service, "resume", "resumed")


# -- state --------------------------------------------------------------------------


@app.command()
def status(
    service: Annotated[str | None, typer.Argument(help="One service (default: all).")] = None,
    config: ConfigOption = Path("zerodown.toml"),
    as_json: JsonOption = False,
) -> None:
    """Each service's current version, instances, traffic split and running deploy."""
    from zerodown.control.progress import status_table

    with _errors():
        views = _client(config).status(service)
    if as_json:
        _print_json(views[0] if service is not None else views)
    else:
        _console().print(status_table(views))


@app.command()
def releases(
    service: ServiceArgument,
    config: ConfigOption = Path("zerodown.toml"),
    as_json: JsonOption = False,
) -> None:
    """The releases of SERVICE the daemon keeps, and which one is current."""
    from zerodown.control.progress import releases_table

    with _errors():
        views = _client(config).releases(service)
    if as_json:
        _print_json(views)
    else:
        _console().print(releases_table(views))


# -- helpers ------------------------------------------------------------------------


def _client(config: Path) -> AdminClient:
    from zerodown.config import load_config
    from zerodown.control.client import AdminClient

    return AdminClient.from_config(load_config(config))


def _act(config: Path, service: str, action: str, said: str) -> None:
    with _errors():
        getattr(_client(config), action)(service)
    typer.echo(f"{service}: {said}")


def _conclude(
    client: AdminClient, deploy_id: int, *, wait: bool, as_json: bool, timeout: float | None
) -> None:
    """Report a started deploy; with `wait`, follow it and exit by its outcome."""
    if not wait:
        _started(client.deploy_view(deploy_id), as_json)
        return
    console = _console()
    live = console.is_terminal and not as_json
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        view = (
            _follow(client, deploy_id, console, deadline)
            if live
            else _wait(client, deploy_id, deadline)
        )
    except KeyboardInterrupt:
        view = client.deploy_view(deploy_id)
        typer.echo(f"zerodown: stopped following; {_runs_on(view)}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _outcome(view, console if live else None)


def _started(view: View, as_json: bool) -> None:
    if as_json:
        _print_json(view)
    else:
        what = f"deploy {view['id']} of {view['service']} {view['version']}"
        typer.echo(f"{what} started; {_watch(view['service'])}")


def _follow(client: AdminClient, deploy_id: int, console: Console, deadline: float | None) -> View:
    from zerodown.control.progress import follow

    return follow(client, deploy_id, console, deadline)


def _wait(client: AdminClient, deploy_id: int, deadline: float | None) -> View:
    """Long polls until the deploy has an outcome or `deadline` (monotonic) passes."""
    while True:
        left = LONG_POLL_MAX if deadline is None else max(0.0, deadline - time.monotonic())
        view = client.wait(deploy_id, min(left, LONG_POLL_MAX))
        if view["outcome"] is not None or (deadline is not None and time.monotonic() >= deadline):
            return view


def _outcome(view: View, console: Console | None) -> None:
    """Print the end of a followed deploy and exit with the code its outcome maps to."""
    from zerodown.control.progress import outcome_line

    if console is None:
        _print_json(view)
    outcome = view["outcome"]
    code = EXIT_TIMEOUT if outcome is None else OUTCOME_EXIT.get(outcome, EXIT_FAILURE)
    if code == EXIT_OK:
        if console is not None:
            # highlight=False: rich would colour the numbers in the line one by one
            console.print(outcome_line(view), style="bold green", highlight=False)
    elif outcome is None:
        typer.echo(f"zerodown: --timeout ran out; {_runs_on(view)}", err=True)
    else:
        typer.echo(f"zerodown: {outcome_line(view)}", err=True)
    raise typer.Exit(code)


def _runs_on(view: View) -> str:
    return f"deploy {view['id']} runs on (state {view['state']}): {_watch(view['service'])}"


def _watch(service: str) -> str:
    return f"`zerodown status {service}` to watch, `zerodown abort {service}` to stop it"


# `-- COMMAND...` is taken from the context's extra args, not declared as an
# argument: click would print one as "[COMMAND]..." in the usage line, without
# the `--` that keeps the command's own options from being read as verify's.
@app.command(
    options_metavar="[OPTIONS] [-- COMMAND...]", context_settings={"allow_extra_args": True}
)
def verify(
    ctx: typer.Context,
    config: ConfigOption = Path("zerodown.toml"),
    deploy_to: Annotated[
        tuple[str, str] | None,
        typer.Option(
            "--deploy", metavar="SERVICE VERSION", help="Deploy this release during the load."
        ),
    ] = None,
    strategy: Annotated[
        StrategyName | None,
        typer.Option(help="With --deploy: override the service's strategy for this deploy."),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="Where to send the load. Default: the proxy's first listener."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Keep-alive connections sending requests at once.")
    ] = 16,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Requests per second over all connections. Default: as fast as answered."
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(help="Seconds of load when no deploy or command runs (default: 10)."),
    ] = None,
    post_ratio: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of requests that are POSTs with a body."),
    ] = 0.0,
    long_ratio: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of requests the app answers slowly, in flight across a drain.",
        ),
    ] = 0.0,
    out: Annotated[Path, typer.Option(help="Writes OUT.json and OUT.svg.")] = Path("verify"),
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the report and the deploy's outcome as JSON instead of a summary."
        ),
    ] = False,
) -> None:
    """Drive load through the proxy during a deploy (or `-- COMMAND`) and report every failure.

    `-- COMMAND...` runs any command under load instead of a deploy; its exit
    code counts as the outcome. With neither, it sends load for --duration.

    Writes OUT.json (every number) and OUT.svg (a chart of which version
    served when, request rate and latency, with the deploy's steps marked).
    Exits 0 only when no request failed and the deploy (or command) succeeded;
    127 (not found) or 126 (not executable) for a command that cannot run.
    """
    from zerodown.config import load_config
    from zerodown.verify import LoadSpec
    from zerodown.verify.load import LONG_PATH, POST_PATH
    from zerodown.verify.proof import verify as run_verify

    command: list[str] = ctx.args
    _check_verify_args(deploy_to, strategy, command, duration)
    _check_command(command)
    with _errors():
        loaded = load_config(config)
        where = _Where(url, {}, "") if url else _where(config, loaded, deploy_to)
        spec = LoadSpec(
            where.url,
            headers=where.headers,
            post_path=where.prefix + POST_PATH,
            long_path=where.prefix + LONG_PATH,
            concurrency=concurrency,
            rate=rate,
            duration=None if (deploy_to or command) else (duration or LOAD_ONLY_DURATION),
            post_ratio=post_ratio,
            long_ratio=long_ratio,
        )
        typer.echo(f"zerodown verify: {_plan(spec, deploy_to, strategy, command)}", err=True)
        during = _during(config, deploy_to, strategy, command)
        report, outcome = uvloop.run(run_verify(spec, during))
    report = _told(report, outcome, command)
    report.write(str(out))
    if as_json:
        _print_json({"report": report.to_json(), "during": outcome})
    else:
        typer.echo(report.summary())
        typer.echo(f"report: {out}.json, chart: {out}.svg")
    if report.failed or not _succeeded(outcome):
        typer.echo(f"zerodown: verify: {_verdict(report)}", err=True)
        raise typer.Exit(EXIT_FAILURE)


LOAD_ONLY_DURATION: Final = 10.0  # seconds of `zerodown verify` with nothing to run
# As a shell says of a command it cannot run: 127 not found, 126 found but not executable.
EXIT_NOT_FOUND: Final = 127
EXIT_NOT_EXECUTABLE: Final = 126


def _verdict(report: Report) -> str:
    """Why verify exits 1, in one line: failed requests, what ran not succeeding, or both."""
    failed = f"{report.failed} of {report.total} requests failed" if report.failed else ""
    during = report.during
    ended = "" if during is None or during.ok else f"the {during.kind} ended {during.outcome}"
    if during is not None and not during.ok and during.reason:
        ended += f" ({during.reason})"
    return "; ".join(part for part in (failed, ended) if part)


def _check_command(command: list[str]) -> None:
    """A command that cannot run is refused before any load, in one line, with a shell's code."""
    import os
    import shutil

    if not command:
        return
    name = command[0]
    found = shutil.which(name) if os.sep not in name else name
    if found is None or not os.path.exists(found):
        typer.echo(f"zerodown: verify: {name}: command not found", err=True)
        raise typer.Exit(EXIT_NOT_FOUND)
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        typer.echo(f"zerodown: verify: {name}: not an executable file", err=True)
        raise typer.Exit(EXIT_NOT_EXECUTABLE)


@dataclasses.dataclass(frozen=True, slots=True)
class _Where:
    """Where verify's load goes: the URL to connect to, a Host header, the route's prefix."""

    url: str
    headers: dict[str, str]
    prefix: str  # the service's path prefix: the load's POSTs and slow GETs go under it


def _where(config: Path, loaded: Config, deploy_to: tuple[str, str] | None) -> _Where:
    """The deployed service's route through the proxy's first listener (host header and
    path prefix from the routing table in force); without --deploy, the proxy's `/`."""
    base = _proxy_url(loaded.proxy.listen[0])
    if deploy_to is None:
        return _Where(base, {}, "")
    services = _client(config).routing().get("services", [])
    spec = next((s for s in services if s.get("name") == deploy_to[0]), None)
    if spec is None:
        return _Where(base, {}, "")  # the deploy will say the service is unknown
    path = str(spec.get("path") or "/")
    host = str(spec.get("host") or "*")
    # "*.example.com" matches any one name under it; "*" any host at all.
    headers = {} if host == "*" else {"Host": host.replace("*", "verify", 1)}
    return _Where(base.rstrip("/") + path, headers, path.rstrip("/"))


def _check_verify_args(
    deploy_to: tuple[str, str] | None,
    strategy: StrategyName | None,
    command: list[str],
    duration: float | None,
) -> None:
    """Refuse what would otherwise be silently ignored: only one thing runs under load."""
    if deploy_to is not None and command:
        raise _usage("verify runs either --deploy or a command under load, not both")
    if strategy is not None and deploy_to is None:
        raise _usage("verify: --strategy goes with --deploy")
    if duration is not None and (deploy_to is not None or command):
        raise _usage(
            "verify: --duration is for load only; with --deploy or a command, "
            "the load lasts as long as they run"
        )


def _plan(
    spec: LoadSpec,
    deploy_to: tuple[str, str] | None,
    strategy: StrategyName | None,
    command: list[str] | None,
) -> str:
    """One line on what is about to happen, before seconds of load with no output."""
    load = f"{spec.concurrency} connections to {spec.url}"
    if deploy_to is not None:
        how = f" ({strategy})" if strategy else ""
        return f"deploying {deploy_to[0]} {deploy_to[1]}{how} under load: {load}"
    if command:
        return f"running `{shlex.join(command)}` under load: {load}"
    return f"no --deploy or command given: load only, {spec.duration:g} s of {load}"


def _told(report: Report, outcome: Any, command: list[str]) -> Report:
    """The report with what ran under load, for the chart's title and step marks."""
    if isinstance(outcome, dict):
        return report.with_deploy(outcome)
    if isinstance(outcome, int):
        return report.with_command(command, outcome)
    return report


def _proxy_url(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/"


def _during(
    config: Path,
    deploy_to: tuple[str, str] | None,
    strategy: StrategyName | None,
    command: list[str],
) -> Any:
    import functools

    from zerodown.verify.around import deploy_and_wait
    from zerodown.verify.proof import run_command

    if deploy_to is not None:
        return functools.partial(deploy_and_wait, _client(config), *deploy_to, strategy)
    if command:
        return functools.partial(run_command, command)
    return None


def _succeeded(outcome: Any) -> bool:
    if outcome is None:
        return True  # load only
    if isinstance(outcome, int):
        return outcome == 0  # a command's exit code
    return bool(outcome.get("outcome") == "succeeded")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _console() -> Console:
    from rich.console import Console

    return Console()


def main() -> None:
    app()
