"""`zerodown verify`: drive load through the proxy while a deploy (or any
command) runs, and report every failed request, which version served when,
and latency."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final

import typer
import uvloop

from zerodown.cli.exits import EXIT_FAILURE, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, errors, usage
from zerodown.cli.options import DEFAULT_CONFIG, ConfigOption, connect
from zerodown.cli.output import print_json
from zerodown.config.strategy import StrategyName

if TYPE_CHECKING:
    from zerodown.config import Config
    from zerodown.verify import LoadSpec, Report

LOAD_ONLY_DURATION: Final = 10.0  # seconds of `zerodown verify` with nothing to run
# `-- COMMAND...` is taken from the context's extra args, not declared as an
# argument: click would print one as "[COMMAND]..." in the usage line, without
# the `--` that keeps the command's own options from being read as verify's.
# app.py registers verify with these settings.
VERIFY_SETTINGS: Final[dict[str, Any]] = {
    "options_metavar": "[OPTIONS] [-- COMMAND...]",
    "context_settings": {"allow_extra_args": True},
}


def verify(
    ctx: typer.Context,
    config: ConfigOption = DEFAULT_CONFIG,
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
        typer.Option(
            # No "[proxy.tls]" here: the help's markup would take it for a tag and drop it.
            help="Where to send the load. Default: the proxy's first listener; with "
            "proxy.tls.redirect_http on, its first TLS listener, over https without "
            "checking the certificate's name or chain (a --url https is checked)."
        ),
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
    sessions: Annotated[
        int,
        typer.Option(
            min=0,
            max=10_000,
            help="Log N virtual users in (POST /login) before the load, keep them asking "
            "GET /me all through it, and report how many stayed logged in; a lost one fails.",
        ),
    ] = 0,
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
    With --sessions N, the report has a line `sessions: N kept, M lost`, and
    why any were lost with what to change (a shared store, `sticky`, tokens).

    Exits 0 only when no request failed, no session was lost and the deploy (or command) succeeded;
    127 (not found) or 126 (not executable) for a command that cannot run.
    """
    from zerodown.config import load_config
    from zerodown.verify import LoadSpec
    from zerodown.verify.load import LONG_PATH, POST_PATH
    from zerodown.verify.proof import verify as run_verify
    from zerodown.verify.users import SessionSpec, UserGroup

    command: list[str] = ctx.args
    _check_verify_args(deploy_to, strategy, command, duration)
    _check_command(command)
    with errors():
        loaded = load_config(config)
        where = _Where(url, {}, "") if url else _where(config, loaded, deploy_to)
        spec = LoadSpec(
            where.url,
            headers=where.headers,
            check_cert=where.check_cert,
            post_path=where.prefix + POST_PATH,
            long_path=where.prefix + LONG_PATH,
            concurrency=concurrency,
            rate=rate,
            duration=None if (deploy_to or command) else (duration or LOAD_ONLY_DURATION),
            post_ratio=post_ratio,
            long_ratio=long_ratio,
        )
        logins = f"; first {sessions} virtual users log in" if sessions else ""
        typer.echo(
            f"zerodown verify: {_plan(spec, deploy_to, strategy, command)}{logins}", err=True
        )
        if not where.check_cert:
            typer.echo(f"zerodown verify: {_unchecked(where.url)}", err=True)
        during = _during(config, deploy_to, strategy, command)
        users = None
        if sessions:
            paths = SessionSpec(sessions, where.prefix + "/login", where.prefix + "/me")
            users = UserGroup.of(paths, where.url, where.headers, where.check_cert)
        report, outcome = uvloop.run(run_verify(spec, during, users=users))
    report = _told(report, outcome, command)
    report.write(str(out))
    if as_json:
        print_json({"report": report.to_json(), "during": outcome})
    else:
        typer.echo(report.summary())
        typer.echo(f"report: {out}.json, chart: {out}.svg")
    sessions_lost = report.sessions is not None and not report.sessions.ok
    if report.failed or sessions_lost or not _succeeded(outcome):
        typer.echo(f"zerodown: verify: {_verdict(report)}", err=True)
        raise typer.Exit(EXIT_FAILURE)


def _verdict(report: Report) -> str:
    """Why verify exits 1, in one line: failed requests, what ran not succeeding, or both."""
    failed = f"{report.failed} of {report.total} requests failed" if report.failed else ""
    during = report.during
    ended = "" if during is None or during.ok else f"the {during.kind} ended {during.outcome}"
    if during is not None and not during.ok and during.reason:
        ended += f" ({during.reason})"
    kept = report.sessions
    lost = "" if kept is None or kept.ok else kept.line().removeprefix("sessions: ")
    lost = f"sessions not kept ({lost}): {'; '.join(kept.why)}" if kept and lost else ""
    return "; ".join(part for part in (failed, lost, ended) if part)


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
    check_cert: bool = True  # https: check the certificate's name and chain


def _where(config: Path, loaded: Config, deploy_to: tuple[str, str] | None) -> _Where:
    """The deployed service's route through the proxy's edge (host header and
    path prefix from the routing table in force); without --deploy, the edge's `/`."""
    base, check_cert = _edge(loaded)
    if deploy_to is None:
        return _Where(base, {}, "", check_cert)
    services = connect(config).routing().get("services", [])
    spec = next((s for s in services if s.get("name") == deploy_to[0]), None)
    if spec is None:
        return _Where(base, {}, "", check_cert)  # the deploy will say the service is unknown
    path = str(spec.get("path") or "/")
    host = str(spec.get("host") or "*")
    # "*.example.com" matches any one name under it; "*" any host at all.
    headers = {} if host == "*" else {"Host": host.replace("*", "verify", 1)}
    return _Where(base.rstrip("/") + path, headers, path.rstrip("/"), check_cert)


def _edge(loaded: Config) -> tuple[str, bool]:
    """Where clients reach the apps, and whether to check its certificate.

    The proxy's first listener; but with `[proxy.tls] redirect_http` every
    plain listener answers 308 (an answer, not a failure, to the load), so the
    load would measure redirects: then the first TLS listener. Its certificate
    is the user's, for the site's names, and verify reaches it at 127.0.0.1
    (often with a CA this host does not trust): it is not checked."""
    tls = loaded.proxy.tls
    if tls is not None and tls.redirect_http:
        return _proxy_url(tls.listen[0], "https"), False
    return _proxy_url(loaded.proxy.listen[0]), True


def _unchecked(url: str) -> str:
    """The one line saying the load goes over TLS, certificate not checked."""
    return (
        f"[proxy.tls] redirect_http is on, so the load goes over TLS to {url}; "
        "certificate not checked (its name and chain): what is measured is the proxy and the app"
    )


def _check_verify_args(
    deploy_to: tuple[str, str] | None,
    strategy: StrategyName | None,
    command: list[str],
    duration: float | None,
) -> None:
    """Refuse what would otherwise be silently ignored: only one thing runs under load."""
    if deploy_to is not None and command:
        raise usage("verify runs either --deploy or a command under load, not both")
    if strategy is not None and deploy_to is None:
        raise usage("verify: --strategy goes with --deploy")
    if duration is not None and (deploy_to is not None or command):
        raise usage(
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


def _proxy_url(listen: str, scheme: str = "http") -> str:
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{scheme}://{host}:{port}/"


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
        return functools.partial(deploy_and_wait, connect(config), *deploy_to, strategy)
    if command:
        return functools.partial(run_command, command)
    return None


def _succeeded(outcome: Any) -> bool:
    if outcome is None:
        return True  # load only
    if isinstance(outcome, int):
        return outcome == 0  # a command's exit code
    return bool(outcome.get("outcome") == "succeeded")
