"""Reading a config file, and turning every way it can be wrong into a ConfigError.

Each problem becomes one line: `file: dotted.key: reason`. Pydantic's own
wording ("Input should be ...") is kept where it is clear and reworded where
it names Python types instead of TOML ones.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from zerodown.config.fields import PROBLEM
from zerodown.config.model import Config
from zerodown.errors import ConfigError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # what TOML allows unquoted
_SCALAR = (str, int, float, bool)
_REASONS = {
    "missing": "required key is missing",
    "model_type": "expected a table",
    "dict_type": "expected a table",
    "tuple_type": "expected an array",
    "list_type": "expected an array",
    "extra_forbidden": "unknown key",
}


class ConfigProblems(ConfigError):
    """Several problems found in one pass: attributes name the first, the message lists all."""

    def __init__(self, problems: Sequence[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.reason, file=first.file, key=first.key)
        self.problems = tuple(problems)
        self.args = ("\n".join(str(p) for p in problems),)


def load_config(path: str | Path) -> Config:
    """Read, default and validate the TOML file at `path`; ConfigError says what is wrong."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=file) from None
    return parse_config(text, file=file)


def parse_config(text: str, *, file: str = "<string>") -> Config:
    """Validate TOML text; `file` only names the source in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already ends with "(at line N, column M)".
        raise ConfigError(f"TOML syntax error: {exc}", file=file) from None
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(error, file) for error in exc.errors()]
        raise (problems[0] if len(problems) == 1 else ConfigProblems(problems)) from None


def _problem(error: ErrorDetails, file: str) -> ConfigError:
    ctx = error.get("ctx", {})
    loc = (*error["loc"], *ctx.get("key", ())) if error["type"] == PROBLEM else error["loc"]
    return ConfigError(_reason(error), file=file, key=dotted_key(loc) or None)


def dotted_key(loc: Sequence[int | str]) -> str:
    """("services", "web", "upstreams", 1) -> "services.web.upstreams[1]", as TOML spells it."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            name = part if _BARE_KEY.fullmatch(part) else f'"{part}"'
            key += f".{name}" if key else name
    return key


def _reason(error: ErrorDetails) -> str:
    kind, ctx, value = error["type"], error.get("ctx", {}), error["input"]
    if kind == PROBLEM:
        return str(ctx["reason"])
    if kind == "value_error":
        return str(ctx["error"])  # our validators' ValueError, already says what it got
    reason = _REASONS.get(kind) or error["msg"].replace("Input should be", "must be")
    if kind not in ("missing", "extra_forbidden") and isinstance(value, _SCALAR):
        reason += f" (got {_toml(value)})"
    if kind == "literal_error" and isinstance(value, str):
        reason += _did_you_mean(value, re.findall(r"'([^']*)'", str(ctx["expected"])))
    return reason


def _toml(value: object) -> str:
    # As the user wrote it: `false`, not Python's `False`.
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _did_you_mean(value: str, options: list[str]) -> str:
    close = difflib.get_close_matches(value, options, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
