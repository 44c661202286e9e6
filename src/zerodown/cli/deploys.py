"""The verbs that move a service between releases: `deploy` and `rollback`,
which may follow the deploy to its outcome, and `promote`, `abort`, `pause`
and `resume`, which act on the running one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from zerodown.cli.exits import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    OUTCOME_EXIT,
    errors,
)
from zerodown.cli.options import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    ServiceArgument,
    StrategyOption,
    TimeoutOption,
    WaitOption,
    connect,
)
from zerodown.cli.output import console as make_console
from zerodown.cli.output import print_json
from zerodown.control.wire import WAIT_MAX

if TYPE_CHECKING:
    from rich.console import Console

    from zerodown.cli.client import AdminClient
    from zerodown.deploy.contract import JsonView as View


def deploy(
    service: ServiceArgument,
    version: Annotated[str, typer.Argument(help="The version label of the new release.")],
    config: ConfigOption = DEFAULT_CONFIG,
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
    with errors():
        client = connect(config)
        deploy_id = client.deploy(service, version, strategy)
        conclude(client, deploy_id, wait=wait, as_json=as_json, timeout=timeout)


def rollback(
    service: ServiceArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    to: Annotated[
        str | None, typer.Option("--to", help="The release to go back to (default: previous).")
    ] = None,
    wait: WaitOption = True,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """Go back to the previous release of SERVICE (instant while it is still warm)."""
    with errors():
        client = connect(config)
        deploy_id = client.rollback(service, to)
        conclude(client, deploy_id, wait=wait, as_json=as_json, timeout=timeout)


def promote(service: ServiceArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """End the running deploy's pause (a manual canary step) and go on."""
    _act(config, service, "promote", "promoted")


def abort(service: ServiceArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Stop the running deploy of SERVICE and roll it back."""
    _act(config, service, "abort", "aborting the deploy; it rolls back")


def pause(service: ServiceArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Hold the running deploy of SERVICE before its next step, until `zerodown resume`."""
    _act(config, service, "pause", "the deploy holds before its next step")


def resume(service: ServiceArgument, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Let a paused deploy of SERVICE go on."""
    _act(config, service, "resume", "resumed")


def _act(config: Path, service: str, action: str, said: str) -> None:
    with errors():
        getattr(connect(config), action)(service)
    typer.echo(f"{service}: {said}")


# -- following a deploy ----------------------------------------------------------------


def conclude(
    client: AdminClient, deploy_id: int, *, wait: bool, as_json: bool, timeout: float | None
) -> None:
    """Report a started deploy; with `wait`, follow it and exit by its outcome."""
    if not wait:
        _started(client.deploy_view(deploy_id), as_json)
        return
    console = make_console()
    live = console.is_terminal and not as_json
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        view = (
            _follow(client, deploy_id, console, deadline)
            if live
            else wait_for_outcome(client, deploy_id, deadline)
        )
    except KeyboardInterrupt:
        view = client.deploy_view(deploy_id)
        typer.echo(f"zerodown: stopped following; {_runs_on(view)}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _outcome(view, console if live else None)


def _started(view: View, as_json: bool) -> None:
    if as_json:
        print_json(view)
    else:
        what = f"deploy {view['id']} of {view['service']} {view['version']}"
        typer.echo(f"{what} started; {_watch(view['service'])}")


def _follow(client: AdminClient, deploy_id: int, console: Console, deadline: float | None) -> View:
    from zerodown.cli.progress import follow

    return follow(client, deploy_id, console, deadline)


def wait_for_outcome(client: AdminClient, deploy_id: int, deadline: float | None) -> View:
    """Long polls until the deploy has an outcome or `deadline` (monotonic) passes.

    Each poll asks for at most WAIT_MAX, the longest the server allows (a
    longer one is a 400); a longer --timeout polls again.
    """
    while True:
        left = WAIT_MAX if deadline is None else max(0.0, deadline - time.monotonic())
        view = client.wait(deploy_id, min(left, WAIT_MAX))
        if view["outcome"] is not None or (deadline is not None and time.monotonic() >= deadline):
            return view


def _outcome(view: View, console: Console | None) -> None:
    """Print the end of a followed deploy and exit with the code its outcome maps to."""
    from zerodown.cli.progress import outcome_line

    if console is None:
        print_json(view)
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
