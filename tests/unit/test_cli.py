"""The CLI verbs in-process (typer's CliRunner) against a real admin API.

The admin API is AdminServer + FakeControl from the admin deploy tests,
served from a background thread with its own event loop, so the CLI's
blocking client talks to it over a real socket exactly as it would to
`zerodown serve`. What is checked is the CLI's contract: exit codes per
outcome, JSON that parses, the messages on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import uvloop
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

import zerodown
from harness import DEADLINE
from integration.test_admin_deploy import (
    RELEASES,
    STATUS,
    STEPS,
    TOKEN,
    FakeControl,
    deploy_view,
    make_app,
)
from zerodown.cli.app import app
from zerodown.cli.client import AdminClient, admin_url, parse_sse
from zerodown.cli.progress import (
    crash_loop_text,
    latest_steps,
    outcome_line,
    releases_table,
    render_deploy,
    status_table,
    step_text,
)
from zerodown.control.server import AdminServer
from zerodown.control.wire import WAIT_MAX
from zerodown.errors import ConfigError, DeployBusy, NotDeployable, UnknownRelease

runner = CliRunner()


@dataclass
class Daemon:
    """Where the CLI finds the fake daemon: a config file naming its admin port."""

    control: FakeControl
    config: Path
    port: int

    def zerodown(self, *args: str, token: str | None = TOKEN, **env: str) -> Any:
        """Run `zerodown ARGS -c CONFIG` in-process; the result has exit_code, stdout, stderr."""
        environ: dict[str, str | None] = {"ZERODOWN_TOKEN": token, **env}
        return runner.invoke(app, [*args, "-c", str(self.config)], env=environ)


@contextlib.contextmanager
def serving(control: FakeControl) -> Iterator[int]:
    """AdminServer with `control` on its own loop in a background thread; yields its port."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = AdminServer(make_app(control), "127.0.0.1", 0)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(DEADLINE)
        yield server.port
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(DEADLINE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()


def write_config(directory: Path, port: int) -> Path:
    config = directory / "zerodown.toml"
    config.write_text(f'[proxy]\nadmin = "127.0.0.1:{port}"\n')
    return config


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    control = FakeControl()
    with serving(control) as port:
        yield Daemon(control, write_config(tmp_path, port), port)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- deploy ----------------------------------------------------------------------


def test_deploy_that_succeeds_exits_0_with_its_view_as_json(daemon: Daemon) -> None:
    result = daemon.zerodown("deploy", "web", "v2")
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)  # not a terminal: one DeployView, as JSON
    assert (view["id"], view["version"], view["outcome"]) == (1, "v2", "succeeded")
    assert view["steps"] == STEPS
    assert result.stderr == ""
    assert daemon.control.calls[0] == ("deploy", "web", "v2", None)


@pytest.mark.parametrize(
    ("outcome", "code"),
    [("rolled_back", 3), ("failed", 4), ("aborted", 5)],
)
def test_deploy_exit_code_tells_the_outcome_and_stderr_the_reason(
    daemon: Daemon, outcome: str, code: int
) -> None:
    daemon.control.outcome = outcome
    daemon.control.reason = "canary error rate 31% above 5%"
    result = daemon.zerodown("deploy", "web", "v2", "--json", "--strategy", "canary")
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["outcome"] == outcome
    said = outcome.replace("_", " ")
    assert result.stderr == (
        f"zerodown: deploy 1 of web v2 {said}: canary error rate 31% above 5%\n"
    )
    assert daemon.control.calls[0] == ("deploy", "web", "v2", "canary")


def test_deploy_still_running_at_the_timeout_exits_6(daemon: Daemon) -> None:
    daemon.control.outcome = None
    result = daemon.zerodown("deploy", "web", "v2", "--timeout", "0.1")
    assert result.exit_code == 6, result.output
    assert json.loads(result.stdout)["outcome"] is None
    assert "--timeout ran out; deploy 1 runs on (state shifting)" in result.stderr
    assert "`zerodown abort web`" in result.stderr
    waits = [call for call in daemon.control.calls if call[0] == "wait"]
    assert waits
    assert all(call[2] <= 0.1 for call in waits)


def test_deploy_no_wait_returns_at_once(daemon: Daemon) -> None:
    daemon.control.outcome = None
    result = daemon.zerodown("deploy", "web", "v2", "--no-wait")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("deploy 1 of web v2 started; `zerodown status web`")
    result = daemon.zerodown("deploy", "web", "v3", "--no-wait", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["id"] == 2
    assert not [call for call in daemon.control.calls if call[0] == "wait"]


def test_deploy_live_view_on_a_terminal(daemon: Daemon) -> None:
    result = daemon.zerodown("deploy", "web", "v2", TTY_COMPATIBLE="1", COLUMNS="120")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "deploy 1" in out
    assert "web → v2" in out
    assert "start 2 of v2" in out
    assert "traffic: v1 90 % · v2 10 %" in out
    assert "new_weight" not in out
    assert "web-v2-1" in out
    assert "starting" in out
    assert "90%" in out
    assert "10%" in out
    assert "deploy 1 of web v2 succeeded: v2 serves all traffic" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_refusals_exit_1_or_2_with_the_servers_message(daemon: Daemon) -> None:
    daemon.control.refuse["deploy"] = DeployBusy("deploy 3 of web (v2) is running")
    result = daemon.zerodown("deploy", "web", "v4")
    assert (result.exit_code, result.stderr) == (1, "zerodown: deploy 3 of web (v2) is running\n")
    del daemon.control.refuse["deploy"]
    result = daemon.zerodown("deploy", "api", "v2")  # an unknown service is a usage error
    assert (result.exit_code, result.stderr) == (2, "zerodown: no service named 'api'\n")
    result = daemon.zerodown("deploy", "web", "../v2")
    assert result.exit_code == 2
    assert "version" in result.stderr


def test_bad_strategy_is_refused_by_the_cli(daemon: Daemon) -> None:
    result = daemon.zerodown("deploy", "web", "v2", "--strategy", "yolo")
    assert result.exit_code == 2
    assert daemon.control.calls == []


def test_wrong_token_exits_1_and_names_the_variable(daemon: Daemon) -> None:
    result = daemon.zerodown("status", token="wrong")
    assert result.exit_code == 1
    assert result.stderr == (
        "zerodown: missing or wrong bearer token\n"
        "zerodown: set ZERODOWN_TOKEN to the daemon's token\n"
    )


def test_unreachable_daemon_exits_1_with_the_hint(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port)
    for verb in (["deploy", "web", "v2"], ["status"], ["promote", "web"]):
        result = runner.invoke(app, [*verb, "-c", str(config)])
        assert result.exit_code == 1, verb
        assert result.stderr == (
            f"zerodown: cannot reach zerodown at http://127.0.0.1:{port}: "
            "is `zerodown serve` running?\n"
        )


def test_bad_config_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "-c", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert "file not found" in result.stderr
    config = tmp_path / "zerodown.toml"
    config.write_text('[proxy]\nadmin = "127.0.0.1:0"\n')
    result = runner.invoke(app, ["status", "-c", str(config)])
    assert result.exit_code == 2
    assert "proxy.admin: port 0 cannot be reached from the CLI" in result.stderr


# -- rollback and the running deploy -------------------------------------------------


def test_rollback_follows_like_deploy(daemon: Daemon) -> None:
    result = daemon.zerodown("rollback", "web", "--to", "v0")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == "v0"
    daemon.control.outcome = "failed"
    daemon.control.reason = "v1 not healthy within 60s"
    result = daemon.zerodown("rollback", "web")
    assert result.exit_code == 4
    assert [c for c in daemon.control.calls if c[0] == "rollback"] == [
        ("rollback", "web", "v0"),
        ("rollback", "web", None),
    ]


def test_rollback_with_nothing_to_go_back_to_exits_1(daemon: Daemon) -> None:
    daemon.control.refuse["rollback"] = NotDeployable("no release before v1")
    result = daemon.zerodown("rollback", "web")
    assert (result.exit_code, result.stderr) == (1, "zerodown: no release before v1\n")


@pytest.mark.parametrize("verb", ["promote", "abort", "pause", "resume"])
def test_actions(daemon: Daemon, verb: str) -> None:
    result = daemon.zerodown(verb, "web")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("web: ")
    daemon.control.refuse[verb] = NotDeployable("no deploy of web is running")
    result = daemon.zerodown(verb, "web")
    assert (result.exit_code, result.stderr) == (1, "zerodown: no deploy of web is running\n")
    assert daemon.control.calls == [(verb, "web"), (verb, "web")]


# -- status and releases -----------------------------------------------------------


def test_status_json(daemon: Daemon) -> None:
    result = daemon.zerodown("status", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [STATUS]
    result = daemon.zerodown("status", "web", "--json")
    assert json.loads(result.stdout) == STATUS  # one service: one object


def test_status_table(daemon: Daemon) -> None:
    result = daemon.zerodown("status", COLUMNS="120")
    assert result.exit_code == 0, result.output
    for text in ("web", "v1", "127.0.0.1:9002", "starting", "v1 90% / v2 10%"):
        assert text in result.stdout, text


def test_releases(daemon: Daemon) -> None:
    result = daemon.zerodown("releases", "web", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == RELEASES
    result = daemon.zerodown("releases", "web")
    assert "current" in result.stdout
    assert "previous" in result.stdout
    assert daemon.zerodown("releases", "api").exit_code == 2


def test_help_documents_the_exit_codes() -> None:
    for verb in ("deploy", "rollback"):
        result = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0
        for line in ("3    rolled back", "4    failed", "5    aborted", "6    --timeout"):
            assert line in result.stdout, (verb, line)


def test_the_cli_long_polls_as_long_as_the_server_allows(daemon: Daemon) -> None:
    # One constant bounds both sides (control.wire.WAIT_MAX): a longer poll
    # would be refused with a 400, a shorter one would poll more than needed.
    for timeout in ([], ["--timeout", "1000"]):
        result = daemon.zerodown("deploy", "web", "v2", "--json", *timeout)
        assert result.exit_code == 0, result.output
    waits = [call[2] for call in daemon.control.calls if call[0] == "wait"]
    assert waits == [WAIT_MAX, WAIT_MAX]


# -- the client's pure parts ----------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "url"),
    [
        ("127.0.0.1:9900", "http://127.0.0.1:9900"),
        ("0.0.0.0:9900", "http://127.0.0.1:9900"),
        ("[::1]:9900", "http://[::1]:9900"),
        ("[::]:9900", "http://[::1]:9900"),
        ("localhost:9900", "http://localhost:9900"),
    ],
)
def test_admin_url(listener: str, url: str) -> None:
    assert admin_url(listener) == url


def test_admin_url_refuses_port_0() -> None:
    with pytest.raises(ConfigError, match="port 0"):
        admin_url("127.0.0.1:0")


def test_from_config_takes_the_token_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zerodown.config import parse_config

    config = parse_config('[proxy]\nadmin = "127.0.0.1:9911"\n')
    monkeypatch.setenv("ZERODOWN_TOKEN", "t0k")
    client = AdminClient.from_config(config)
    assert (client.base_url, client.token) == ("http://127.0.0.1:9911", "t0k")
    monkeypatch.setenv("ZERODOWN_TOKEN", "")
    assert AdminClient.from_config(config).token is None
    assert repr(client) == "<AdminClient http://127.0.0.1:9911 token=set>"


def test_parse_sse() -> None:
    lines = [
        ": keep-alive",
        "",
        "id: 1",
        "event: step",
        "data: {}",
        "",
        "id: 2",
        "data:first",
        "data: second",
        "retry: 10",
        "x-unknown: ignored",
        "",
        "data: unterminated",  # no blank line: the stream ended mid-message
    ]
    assert list(parse_sse(lines)) == [
        {"id": "1", "event": "step", "data": "{}"},
        {"id": "2", "data": "first\nsecond", "retry": "10"},
    ]


# -- rendering --------------------------------------------------------------------------


def rendered(renderable: Any) -> str:
    console = Console(record=True, width=120, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def test_latest_steps_keeps_one_entry_per_step_in_plan_order() -> None:
    assert [(s["index"], s["phase"]) for s in latest_steps(STEPS)] == [(0, "after"), (1, "before")]


def test_render_deploy() -> None:
    view = deploy_view(7, "web", "v2", "canary", None, None)
    pause = {"by": "promote", "left": None}
    text = rendered(render_deploy(view, {**STATUS, "paused": True, "pause": pause}))
    assert "deploy 7" in text
    assert "web → v2" in text
    assert "canary" in text
    assert "shifting" in text
    assert "start 2 of v2" in text
    assert "done" in text
    assert "+0.5s" in text
    assert "traffic: v1 90 % · v2 10 %" in text
    assert "running" in text
    assert "paused until promote (zerodown promote web)" in text
    assert "░" in text
    assert "90%" in text
    assert "=" not in text  # no plan fields such as new_weight=10.0


@pytest.mark.parametrize(
    ("pause", "said"),
    [
        ({"by": "operator", "left": None}, "paused by operator (zerodown resume web)"),
        ({"by": "promote", "left": None}, "paused until promote (zerodown promote web)"),
        ({"by": "timer", "left": 12.4}, "pause: 12 s left"),
    ],
)
def test_the_live_view_and_status_say_why_a_deploy_waits(pause: Any, said: str) -> None:
    deploying = deploy_view(7, "web", "v2", "canary", None, None)
    status = {**STATUS, "deploying": deploying, "pause": pause}
    assert said in rendered(render_deploy(deploying, status))
    assert said in rendered(status_table([status]))


POOL: dict[str, Any] = {"kind": "set_traffic", "mode": "pool", "new_weight": 0.0}
SPLIT: dict[str, Any] = {"kind": "set_traffic", "mode": "split"}


@pytest.mark.parametrize(
    ("step", "said"),
    [
        # a pool step's new_weight (0.0) is not what traffic gets: the ready instances share it
        (POOL, "traffic: shared by ready instances"),
        ({**SPLIT, "new_weight": 100.0}, "traffic: v2 100 %"),
        ({**SPLIT, "new_weight": 20.0}, "traffic: v1 80 % · v2 20 %"),
        ({"kind": "pause", "seconds": None}, "pause until promote"),
        ({"kind": "pause", "seconds": 30.0}, "pause 30 s"),
        ({"kind": "drain", "role": "old", "count": 1}, "drain 1 of v1"),
        ({"kind": "wait_healthy", "role": "new"}, "health gate of v2"),
        ({"kind": "keep_warm", "seconds": 600.0}, "keep v1 warm 600 s"),
    ],
)
def test_steps_are_said_in_words_with_their_versions(step: dict[str, Any], said: str) -> None:
    assert step_text({"step": step, "kind": step["kind"]}, "v2", "v1") == said


def test_the_last_traffic_step_done_says_the_split_in_force() -> None:
    # The case: the last rolling step, new_weight=0.0, gives v2 all traffic.
    done = {"index": 4, "kind": "set_traffic", "step": POOL, "phase": "after", "at": 1002.0}
    view = {**deploy_view(7, "web", "v2", "rolling", None, None), "steps": [*STEPS, done]}
    text = rendered(render_deploy(view, {**STATUS, "traffic": {"v2": 100.0}}))
    assert "traffic: v2 100 %" in text
    assert "new_weight" not in text
    assert step_text(done, "v2", "v1", {"v1": 50.0, "v2": 50.0}) == "traffic: v1 50 % · v2 50 %"


def test_outcome_line() -> None:
    done = deploy_view(7, "web", "v2", "rolling", "succeeded", None)
    assert outcome_line(done) == "deploy 7 of web v2 succeeded: v2 serves all traffic (2.5s)"
    failed = deploy_view(7, "web", "v2", "rolling", "rolled_back", "crash loop")
    assert outcome_line(failed) == "deploy 7 of web v2 rolled back: crash loop"
    running = deploy_view(7, "web", "v2", "rolling", None, None)
    assert outcome_line(running) == "deploy 7 of web v2 is still running (state shifting)"


def test_status_and_releases_tables() -> None:
    deploying = deploy_view(7, "web", "v2", "canary", None, None)
    pause = {"by": "promote", "left": None}
    text = rendered(status_table([{**STATUS, "deploying": deploying, "pause": pause}]))
    assert "#7 v2 shifting" in text
    assert "paused until promote" in text
    assert "v1 127.0.0.1:9001 ready" in text
    text = rendered(releases_table(RELEASES))
    assert "v2" in text
    assert "current" in text


def test_the_live_view_and_status_show_a_crash_loop() -> None:
    # The service runs under capacity: status must not read as healthy.
    loop = {"version": "v1", "crashes": 5, "since": 1000.0, "message": "web v1 crashed ..."}
    status = {**STATUS, "crash_loop": loop}
    said = "crash loop: v1 crashed 5 times, not restarted (deploy a fix or `zerodown rollback web`)"
    assert crash_loop_text(loop, "web") == said
    console = Console(record=True, width=200, force_terminal=False)
    console.print(status_table([status]))
    table = console.export_text()
    assert "crash loop: v1 crashed 5 times, not restarted" in table
    assert table.count("crash loop") == 1
    deploying = deploy_view(7, "web", "v2", "rolling", None, None)
    assert rendered(render_deploy(deploying, status)).count(said) == 1
    assert crash_loop_text(None, "web") == ""
    assert "crash loop" not in rendered(status_table([{**STATUS, "crash_loop": None}]))


def test_every_release_status_that_ended_a_deploy_has_its_colour() -> None:
    statuses = ["new", "current", "previous", "failed", "aborted", "rolled_back", "retired"]
    views = [
        {"version": f"v{i}", "status": status, "created_at": 1.0, "last_deployed_at": None}
        for i, status in enumerate(statuses)
    ]
    cells = list(releases_table(views).columns[1].cells)
    styles = {cell.plain: str(cell.style) for cell in cells if isinstance(cell, Text)}
    assert len(styles) == len(statuses)
    assert styles == {
        "new": "",
        "current": "bold green",
        "previous": "",
        "failed": "red",
        "aborted": "red",
        "rolled_back": "yellow",
        "retired": "dim",
    }


# -- help, version and usage ---------------------------------------------------------


def commands() -> dict[str, Any]:
    """The click commands typer builds: the group (for --version) and each verb."""
    group: Any = typer.main.get_command(app)
    return {"zerodown": group, **group.commands}


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, f"zerodown {zerodown.__version__}\n")


def test_every_argument_and_option_of_every_command_has_help() -> None:
    found = {name: [p.name for p in cmd.params] for name, cmd in commands().items()}
    assert len(found) == 13  # the group and its 12 verbs
    for name, cmd in commands().items():
        for param in cmd.params:
            text = getattr(param, "help", None)
            assert text, f"zerodown {name}: {param.name} has no help"
            assert len(text) > 10, f"zerodown {name}: {param.name} has no help"
    assert "service" in found["promote"]
    assert "concurrency" in found["verify"]


def test_help_names_no_internal_types() -> None:
    for name in commands():
        args = ["--help"] if name == "zerodown" else [name, "--help"]
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0
        assert not re.search(r"\b[A-Z]\w*View\b", result.stdout), name


def test_verify_usage_shows_the_command_after_dashes() -> None:
    result = runner.invoke(app, ["verify", "--help"], env={"COLUMNS": "200"})
    assert "verify [OPTIONS] [-- COMMAND...]" in result.stdout.splitlines()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--deploy", "web", "v2", "--", "sleep", "1"],
            "verify runs either --deploy or a command under load, not both",
        ),
        (["--strategy", "canary"], "verify: --strategy goes with --deploy"),
        (["--duration", "3", "--", "true"], "verify: --duration is for load only"),
    ],
)
def test_verify_refuses_what_it_would_ignore(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["verify", *args])
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"zerodown: {message}")


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        ("nosuchcmd-zerodown", 127, "nosuchcmd-zerodown: command not found"),
        ("./no/such/file", 127, "./no/such/file: command not found"),
        ("{tmp}/plain.txt", 126, "{tmp}/plain.txt: not an executable file"),
    ],
)
def test_verify_of_a_command_that_cannot_run_is_one_line_with_a_shells_code(
    tmp_path: Path, command: str, code: int, message: str
) -> None:
    (tmp_path / "plain.txt").write_text("echo hi\n")  # mode 644: not executable
    command, message = command.format(tmp=tmp_path), message.format(tmp=tmp_path)
    config = write_config(tmp_path, free_port())  # never reached: refused before any load
    result = runner.invoke(app, ["verify", "-c", str(config), "--", command, "arg"])
    assert (result.exit_code, result.stderr) == (code, f"zerodown: verify: {message}\n")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_verify_with_no_deploy_or_command_says_it_only_loads(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/"  # nothing listens: every request fails
    config = write_config(tmp_path, free_port())
    out = tmp_path / "load"
    args = ["verify", "-c", str(config), "--url", url, "--duration", "0.3", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1  # requests failed
    first = result.stderr.splitlines()[0]
    assert first == (
        "zerodown verify: no --deploy or command given: "
        f"load only, 0.3 s of 16 connections to {url}"
    )
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["during"] is None
    assert report["failed"] == report["total"] > 0


def test_rollback_to_an_unknown_version_exits_2(daemon: Daemon) -> None:
    # A version that was never deployed is a mistake on the command line, like
    # an unknown service (README, exit codes): 2, not 1 as for "busy".
    daemon.control.refuse["rollback"] = UnknownRelease("web has no release v9")
    result = daemon.zerodown("rollback", "web", "--to", "v9")
    assert (result.exit_code, result.stderr) == (2, "zerodown: web has no release v9\n")
