"""How the CLI shows deploys and services on a terminal (rich).

`follow()` is the live view of one deploy: its steps as they happen, the
service's instances with their state, and the traffic split per version.
It follows the daemon's event stream (cli/feed.py): each event of the deploy
(or of the service's instances since it started) fetches the deploy and the
service's status again, so the view changes the moment the daemon acts and
costs nothing while it waits. Between events it redraws every POLL_INTERVAL
(elapsed time, a pause's countdown) and, as a check against a missed event,
fetches the views again after RECHECK_INTERVAL of silence. If the stream
cannot be kept (an older daemon, a proxy that buffers it, reconnects that
fail) it says so and polls instead: a long poll of POLL_INTERVAL on the
deploy, then the service's status.

The render functions are pure (views in, renderables out), so tests check
them without a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from zerodown.cli.client import AdminClient
from zerodown.cli.edge import edge_text
from zerodown.cli.feed import EventFeed, StreamLost
from zerodown.deploy.contract import JsonView as View

__all__ = [
    "POLL_INTERVAL",
    "RECHECK_INTERVAL",
    "concerns",
    "crash_loop_text",
    "follow",
    "latest_steps",
    "outcome_line",
    "pause_text",
    "releases_table",
    "render_deploy",
    "status_table",
    "step_text",
]

POLL_INTERVAL: Final = 0.5  # seconds between redraws of the live view
# Silence on the stream this long fetches the views anyway: a missed event
# (a stream replays at most a page of history) cannot stall the view.
RECHECK_INTERVAL: Final = 10.0
SHOWN_STEPS: Final = 12  # the live view keeps the latest steps; --json has them all
BAR_WIDTH: Final = 30

_STATE_STYLE: Final = {
    "ready": "green",
    "standby": "blue",  # kept warm out of traffic: a rollback switches back at once
    "starting": "yellow",
    "draining": "cyan",
    "stopped": "dim",
    "crashed": "bold red",
}
# The journal writes "before" when a step starts and "after" when it is done.
_PHASE_WORD: Final = {"before": "running", "after": "done", "failed": "failed"}
_PHASE_STYLE: Final = {"before": "yellow", "after": "green", "failed": "bold red"}
_OUTCOME_STYLE: Final = {
    "succeeded": "bold green",
    "rolled_back": "bold yellow",
    "failed": "bold red",
    "aborted": "bold red",
}
# A release's status (store.ReleaseStatus) in `zerodown releases`; a release
# that ended a deploy has the colour of that deploy's outcome.
_RELEASE_STYLE: Final = {
    "current": "bold green",
    "failed": "red",
    "rolled_back": "yellow",
    "aborted": "red",
    "retired": "dim",
}
_CRASH_LOOP_STYLE: Final = "bold red"


def follow(
    client: AdminClient, deploy_id: int, console: Console, deadline: float | None = None
) -> View:
    """Show the deploy live until it has an outcome or `deadline` (monotonic) passes.

    Returns the last DeployView seen; its `outcome` is None if the deadline came first.
    """
    view = client.deploy_view(deploy_id)
    with Live(console=console, refresh_per_second=4, auto_refresh=False) as live:
        try:
            return _follow_events(client, view, live, deadline)
        except StreamLost as exc:
            console.print(f"event stream lost ({exc}); following by polling", style="dim")
            return _follow_polling(client, deploy_id, live, deadline)


def _follow_events(client: AdminClient, view: View, live: Live, deadline: float | None) -> View:
    # The feed opens first and replays the service's stored events, so an event
    # that lands between it and the views fetched next is not missed.
    feed = EventFeed(client, view["service"])
    try:
        view, status, fetched = _fetch(client, view["id"])
        while True:
            aged = _aged(status, time.monotonic() - fetched)
            live.update(render_deploy(view, aged), refresh=True)
            if view["outcome"] is not None or _past(deadline):
                return view
            event = feed.next(_next_wait(deadline))
            quiet = time.monotonic() - fetched >= RECHECK_INTERVAL
            if (event is not None and concerns(event, view)) or quiet:
                view, status, fetched = _fetch(client, view["id"])
    finally:
        feed.close()


def _follow_polling(
    client: AdminClient, deploy_id: int, live: Live, deadline: float | None
) -> View:
    view = client.deploy_view(deploy_id)
    while True:
        status = client.status(view["service"])[0]
        live.update(render_deploy(view, status), refresh=True)
        if view["outcome"] is not None or _past(deadline):
            return view
        # A long poll, not a sleep: the outcome shows the moment it is known.
        view = client.wait(deploy_id, _next_wait(deadline))


def concerns(event: View, view: View) -> bool:
    """Whether `event` changes what the live view of deploy `view` shows: one of its
    own, or one of the service's instances since it started (not replayed history)."""
    if event.get("deploy_id") == view["id"]:
        return True
    at = event.get("at")
    return (
        event.get("deploy_id") is None and isinstance(at, int | float) and at >= view["started_at"]
    )


def _fetch(client: AdminClient, deploy_id: int) -> tuple[View, View, float]:
    view = client.deploy_view(deploy_id)
    return view, client.status(view["service"])[0], time.monotonic()


def _aged(status: View, seconds: float) -> View:
    """`status` as it is `seconds` after it was fetched: a timed pause has less left."""
    pause = status.get("pause")
    if not isinstance(pause, dict):
        return status
    left = pause.get("left")
    if not isinstance(left, int | float) or seconds <= 0:
        return status
    return {**status, "pause": {**pause, "left": max(0.0, left - seconds)}}


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def _next_wait(deadline: float | None) -> float:
    if deadline is None:
        return POLL_INTERVAL
    return max(0.0, min(POLL_INTERVAL, deadline - time.monotonic()))


# -- one deploy ---------------------------------------------------------------------


def render_deploy(view: View, status: View | None = None) -> RenderableType:
    """The live view: a headline, the latest steps, instances and traffic."""
    old = status.get("current") if status is not None else None
    live = status.get("traffic") if status is not None else None
    parts: list[RenderableType] = [_headline(view), _steps(view, old, live)]
    if status is not None:
        instances, traffic = status.get("instances", []), status.get("traffic", {})
        parts += ["", _instances(instances), "", _traffic(traffic)]
        said = pause_text(status.get("pause"), view["service"])
        if said:
            parts.append(Text(said, style="bold yellow"))
        crashing = crash_loop_text(status.get("crash_loop"), view["service"])
        if crashing:
            parts.append(Text(crashing, style=_CRASH_LOOP_STYLE))
    return Group(*parts)


def pause_text(pause: View | None, service: str) -> str:
    """Why a running deploy waits, and what goes on: "" when it does not wait."""
    if not pause:
        return ""
    by = pause.get("by")
    if by == "operator":
        return f"paused by operator (zerodown resume {service})"
    if by == "promote":
        return f"paused until promote (zerodown promote {service})"
    left = pause.get("left")
    return f"pause: {left:.0f} s left" if isinstance(left, int | float) else ""


def crash_loop_text(loop: View | None, service: str) -> str:
    """The crash loop that stopped restarts of the current release, and what
    to do about it: "" when there is none. Without it a service left under
    capacity reads as healthy."""
    if not loop:
        return ""
    return (
        f"crash loop: {loop.get('version')} crashed {loop.get('crashes')} times, "
        f"not restarted (deploy a fix or `zerodown rollback {service}`)"
    )


def outcome_line(view: View) -> str:
    """One line for the end of a deploy: what happened and why."""
    what = f"deploy {view['id']} of {view['service']} {view['version']}"
    outcome = view.get("outcome")
    if outcome is None:
        return f"{what} is still running (state {view['state']})"
    if outcome == "succeeded":
        return f"{what} succeeded: {view['version']} serves all traffic ({_elapsed(view)})"
    reason = view.get("reason") or "no reason given"
    return f"{what} {outcome.replace('_', ' ')}: {reason}"


def _headline(view: View) -> Text:
    text = Text()
    text.append(f"deploy {view['id']}  ", style="bold")
    text.append(f"{view['service']} → {view['version']}", style="bold cyan")
    text.append(f"  {view.get('strategy') or ''}  ")
    outcome = view.get("outcome")
    state = outcome or view.get("state", "")
    text.append(str(state), style=_OUTCOME_STYLE.get(str(outcome), "bold"))
    text.append(f"  {_elapsed(view)}", style="dim")
    return text


def _steps(view: View, old: str | None = None, live: dict[str, float] | None = None) -> Table:
    """The latest steps; the last traffic step says the split in force now (`live`)."""
    table = Table(box=None, show_header=False, pad_edge=False)
    for name in ("#", "step", "phase", "detail", "at"):
        table.add_column(name, style="dim" if name in ("#", "at") else None)
    started = view.get("started_at") or 0.0
    steps = latest_steps(view.get("steps", []))
    traffic = [i for i, s in enumerate(steps) if s.get("kind") == "set_traffic"]
    last_traffic = traffic[-1] if traffic else -1
    for i, step in list(enumerate(steps))[-SHOWN_STEPS:]:
        at = step.get("at")
        offset = f"+{at - started:.1f}s" if isinstance(at, int | float) and started else ""
        phase = str(step.get("phase") or "")
        now = live if i == last_traffic and phase == "after" else None
        table.add_row(
            str(step.get("index", "")),
            step_text(step, view["version"], old, now),
            Text(_PHASE_WORD.get(phase, phase), style=_PHASE_STYLE.get(phase, "")),
            _text(step.get("detail")),
            offset,
        )
    return table


def latest_steps(entries: Sequence[View]) -> list[View]:
    """One entry per step: the journal has a "before" and an "after" (or "failed") for each."""
    latest: dict[Any, View] = {}
    for entry in entries:
        latest[entry.get("index")] = entry  # dicts keep first-insertion order: plan order
    return list(latest.values())


def step_text(entry: View, new: str, old: str | None, live: dict[str, float] | None = None) -> str:
    """A journaled step in words, with the versions it touches: "start 2 of v2",
    "traffic: v1 90 % · v2 10 %", "pause until promote". Never the plan's
    internal fields (a pool step's new_weight is not what traffic gets).
    `live`, the split in force, is what a traffic step that is done gave."""
    step = entry.get("step")
    if not isinstance(step, dict):
        return _text(step) or str(entry.get("kind") or "")
    kind = str(step.get("kind", entry.get("kind", "")))
    version = new if step.get("role", "new") == "new" else (old or "the old release")
    if kind == "set_traffic" and live:
        return "traffic: " + " · ".join(f"{v} {p:g} %" for v, p in live.items())
    if kind == "set_traffic":
        return _traffic_text(step, new, old)
    if kind == "pause":
        seconds = step.get("seconds")
        return "pause until promote" if seconds is None else f"pause {seconds:g} s"
    words = {
        "start": f"start {step.get('count')} of {version}",
        "wait_healthy": f"health gate of {version}",
        "drain": f"drain {step.get('count')} of {version}",
        "stop": f"stop {step.get('count')} of {version}",
        "analyze": f"judge {new} against {old or 'stable'}",
        "hold": "hold requests" if step.get("on") else "release held requests",
        "keep_warm": f"keep {old or 'the old release'} warm {step.get('seconds', 0):g} s",
    }
    return words.get(kind, kind)


def _traffic_text(step: View, new: str, old: str | None) -> str:
    """The share each release gets by this step."""
    if step.get("mode") == "pool":
        # One pool of every ready instance: each release's share is its share of them.
        return "traffic: shared by ready instances" if old else f"traffic: {new} 100 %"
    weight = float(step.get("new_weight") or 0.0)
    if step.get("preview") and weight == 0:
        return f"traffic: {new} on the preview header only"
    if old is None or weight >= 100:
        return f"traffic: {new} 100 %"
    return f"traffic: {old} {100 - weight:g} % · {new} {weight:g} %"


def _instances(instances: Sequence[View]) -> Table:
    table = Table("instance", "version", "address", "state", "routed", box=None, pad_edge=False)
    for instance in instances:
        state = str(instance.get("state", ""))
        table.add_row(
            str(instance.get("id", "")),
            str(instance.get("version", "")),
            str(instance.get("address", "")),
            Text(state, style=_STATE_STYLE.get(state, "")),
            "yes" if instance.get("routed") else "",
        )
    return table


def _traffic(traffic: dict[str, float]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column("version", style="bold")
    table.add_column("share")
    table.add_column("percent", justify="right")
    for version, percent in traffic.items():
        filled = round(BAR_WIDTH * max(0.0, min(100.0, percent)) / 100)
        bar = Text("█" * filled, style="cyan") + Text("░" * (BAR_WIDTH - filled), style="dim")
        table.add_row(version, bar, f"{percent:g}%")
    return table


# -- services and releases -----------------------------------------------------------


def status_table(views: Sequence[View], stats: View | None = None) -> Table:
    """`zerodown status`: one row per service; with `stats` (/v1/stats), an
    `edge` column when a service's rules refused requests or its cache answered."""
    services = (stats or {}).get("services") or {}
    edges = [edge_text(services.get(view["service"])) for view in views]
    columns = ["service", "current", "instances", "traffic", "deploying"]
    table = Table(*columns, *(["edge"] if any(edges) else []))
    for view, edge in zip(views, edges, strict=True):
        deploying = view.get("deploying")
        table.add_row(
            view["service"],
            _current(view),
            _instance_lines(view.get("instances", [])),
            _split(view.get("traffic", {})),
            _deploying(deploying, pause_text(view.get("pause"), view["service"])),
            *([edge or "-"] if any(edges) else []),
        )
    return table


def releases_table(views: Sequence[View]) -> Table:
    """`zerodown releases SERVICE`: newest first, as the API lists them."""
    table = Table("version", "status", "created", "last deployed")
    for view in views:
        status = str(view.get("status", ""))
        table.add_row(
            str(view.get("version", "")),
            Text(status, style=_RELEASE_STYLE.get(status, "")),
            _when(view.get("created_at")),
            _when(view.get("last_deployed_at")),
        )
    return table


def _current(view: View) -> RenderableType:
    """The current version, and under it the crash loop that stopped its restarts."""
    current = str(view.get("current") or "-")
    crashing = crash_loop_text(view.get("crash_loop"), view["service"])
    if not crashing:
        return current  # as a plain string, shown as it always was
    return Text(current) + Text(f"\n{crashing}", style=_CRASH_LOOP_STYLE)


def _instance_lines(instances: Sequence[View]) -> Text:
    lines = Text()
    for i, instance in enumerate(instances):
        state = str(instance.get("state", ""))
        lines.append("\n" if i else "")
        lines.append(f"{instance.get('version', '')} {instance.get('address', '')} ")
        lines.append(state, style=_STATE_STYLE.get(state, ""))
    return lines if instances else Text("-")


def _split(traffic: dict[str, float]) -> str:
    return " / ".join(f"{version} {percent:g}%" for version, percent in traffic.items()) or "-"


def _deploying(view: View | None, pause: str) -> Text:
    if view is None:
        return Text("-")
    text = Text(f"#{view['id']} {view['version']} {view.get('state', '')}")
    if pause:
        text.append(f"\n{pause}", style="bold yellow")
    return text


# -- formatting -------------------------------------------------------------------


def _elapsed(view: View) -> str:
    started = view.get("started_at")
    if not isinstance(started, int | float):
        return ""
    end = view.get("finished_at") or time.time()
    return f"{max(0.0, end - started):.1f}s"


def _when(stamp: Any) -> str:
    if not isinstance(stamp, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
