"""The CI examples (examples/ci/, docs/ci.md) parse, and call only what the CLI has."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from zerodown.cli.app import app

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "ci"
GITHUB = EXAMPLES / "github-actions.yml"
GITLAB = EXAMPLES / "gitlab-ci.yml"
HOOK_SCRIPT = EXAMPLES / "zerodown-hook.sh"
DOC = ROOT / "docs" / "ci.md"


def github_lines(doc: dict[Any, Any]) -> Iterator[str]:
    for job in doc["jobs"].values():
        for step in job["steps"]:
            yield from str(step.get("run", "")).splitlines()


def gitlab_lines(doc: dict[str, Any]) -> Iterator[str]:
    for job in doc.values():
        if isinstance(job, dict):
            for key in ("before_script", "script", "after_script"):
                yield from job.get(key, [])


def doc_lines() -> Iterator[str]:
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        yield from block.replace("\\\n", " ").splitlines()


def invocations(line: str) -> Iterator[list[str]]:
    """Each `zerodown ...` in a shell line, as its words; also inside `ssh host "..."`."""
    words = shlex.split(line, comments=True)
    for i, word in enumerate(words):
        if word == "zerodown" or word.endswith("/zerodown"):
            rest = words[i + 1 :]
            ends = [j for j, w in enumerate(rest) if w in ("&&", "||", ";", "|", ">")]
            yield rest[: ends[0]] if ends else rest
        elif " " in word and "zerodown " in word:
            yield from invocations(word)  # a quoted command, as ssh runs it


def check(words: list[str]) -> str:
    """The verb, once its options are known to the CLI (else the test fails)."""
    # Typer's group: click's Group interface (`commands`), whichever click it carries.
    group: Any = typer.main.get_command(app)
    verb = words[0]
    assert verb in group.commands, f"no verb `zerodown {verb}`"
    known = {opt for param in group.commands[verb].params for opt in param.opts}
    known |= {opt for param in group.commands[verb].params for opt in param.secondary_opts}
    for word in words[1:]:
        if word.startswith("-"):
            assert word.split("=")[0] in known, f"`zerodown {verb}` has no option {word}"
    return verb


def test_github_actions_example_parses_and_calls_real_verbs() -> None:
    doc = yaml.safe_load(GITHUB.read_text())
    assert doc.get("on", doc.get(True)) == {
        "push": {"branches": ["main"]}
    }  # YAML 1.1 reads `on` as True
    assert set(doc["jobs"]) >= {"staging", "production", "hook"}
    verbs = [check(words) for line in github_lines(doc) for words in invocations(line)]
    assert sorted(verbs) == ["deploy", "verify"]


def test_gitlab_ci_example_parses_and_calls_real_verbs() -> None:
    doc = yaml.safe_load(GITLAB.read_text())
    assert doc["stages"] == ["staging", "production"]
    for name in ("staging", "production"):
        assert doc[name]["extends"] == ".ssh"
        assert doc[name]["stage"] in doc["stages"]
    verbs = [check(words) for line in gitlab_lines(doc) for words in invocations(line)]
    assert sorted(verbs) == ["deploy", "verify"]


def test_the_docs_commands_exist() -> None:
    verbs = {check(words) for line in doc_lines() for words in invocations(line)}
    assert verbs == {"deploy", "verify"}


@pytest.mark.parametrize("example", [GITHUB, GITLAB])
def test_the_hook_script_the_examples_call_is_the_one_shipped(example: Path) -> None:
    called = set(re.findall(r"sh (\S+zerodown-hook\.sh)", example.read_text()))
    assert called == {"ci/zerodown-hook.sh"}  # a copy of examples/ci/zerodown-hook.sh
    assert HOOK_SCRIPT.stat().st_mode & 0o111


def test_a_command_the_cli_lacks_is_caught() -> None:
    with pytest.raises(AssertionError, match="no verb"):
        check(["deplo", "web", "v2"])
    with pytest.raises(AssertionError, match="no option --wiat"):
        check(["deploy", "web", "v2", "--wiat"])
    assert [w[0] for w in invocations("ssh h 'cd /srv && zerodown deploy web v2 --json'")] == [
        "deploy"
    ]
