"""A wrong config file is reported whole: every unknown key and every bad value
at once, one line each, in file order (docs/config.md, "Errors")."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from zerodown.cli.app import app
from zerodown.config import ConfigProblems, load_config, parse_config
from zerodown.errors import ConfigError


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, file="zerodown.toml")
    return str(caught.value).splitlines()


def test_an_unknown_key_and_a_bad_value_of_one_table_are_both_reported() -> None:
    lines = problems_of("[services.web]\ncommand = 'x'\ninstancez = 2\nbalance = 'rr'\n")
    assert len(lines) == 2
    assert (
        lines[0] == "zerodown.toml: services.web.instancez: unknown key; did you mean 'instances'?"
    )
    assert lines[1].startswith("zerodown.toml: services.web.balance: must be 'round_robin'")
    assert lines[1].endswith("(got 'rr')")


def test_every_problem_of_a_file_in_file_order() -> None:
    text = """
[proxy]
workerz = 2
listen = ["x"]
listn = ["127.0.0.1:1"]

[services.web]
command = "a"
health = { intervl = "1s", rise = 0 }
"""
    keys = [line.split(": ")[1] for line in problems_of(text)]
    assert keys == [
        "proxy.workerz",
        "proxy.listen[0]",
        "proxy.listn",
        "services.web.health.intervl",
        "services.web.health.rise",
    ]


def test_an_absence_caused_by_a_typo_is_not_reported_twice() -> None:
    # `adress` leaves `address` missing, and `upstream` leaves the service with
    # neither upstreams nor command: the typo's line already says what to fix.
    lines = problems_of(
        "[services.web]\nupstream = ['a:1']\n[services.api]\nupstreams = [{ adress = 'b:2' }]\n"
    )
    assert [line.split(": ")[1] for line in lines] == [
        "services.web.upstream",
        "services.api.upstreams[0].adress",
    ]


def test_a_file_with_only_typos_names_each_with_its_close_match() -> None:
    error = problems_of("[proxy]\nworkerz = 2\nadmn = '127.0.0.1:1'\n")
    assert error == [
        "zerodown.toml: proxy.workerz: unknown key; did you mean 'workers'?",
        "zerodown.toml: proxy.admn: unknown key; did you mean 'admin'?",
    ]


def test_the_cli_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "zerodown.toml"
    config.write_text("[proxy]\nworkerz = 2\nadmin = 'nope'\n")
    with pytest.raises(ConfigProblems) as caught:
        load_config(config)
    assert len(caught.value.problems) == 2
    result = CliRunner().invoke(app, ["status", "-c", str(config)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"zerodown: {config}: proxy.workerz: unknown key; did you mean 'workers'?",
        f"zerodown: {config}: proxy.admin: address 'nope' is not host:port",
    ]
