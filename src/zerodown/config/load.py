"""Reading a config file, and turning every way it can be wrong into a ConfigError.

Each problem becomes one line: `file: dotted.key: reason`, and a file with
several gets them all at once, unknown keys and bad values alike, in the
order they appear in the file. Pydantic's own wording ("Input should be
...") is kept where it is clear and reworded where it names Python types
instead of TOML ones.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    checked = _validate(data, file)
    if isinstance(checked, Config):
        return checked
    raise checked[0] if len(checked) == 1 else ConfigProblems(checked)


def _validate(data: dict[str, Any], file: str) -> Config | list[ConfigError]:
    """The config, or every problem of the file, in file order: all unknown keys
    and all bad values.

    A table with an unknown key stops there (`Table` refuses it before its
    values are read, to name the closest known key), so one pass would hide
    the table's value errors until the typo is fixed. Each pass drops the
    unknown keys it found and validates again, until a pass finds none; its
    value errors are then complete. Passes are bounded by the number of keys.
    `data` is the parser's fresh output and is changed in place.
    """
    order = _file_order(data)
    found: list[ErrorDetails] = []
    while True:
        try:
            config = Config.model_validate(data)
        except ValidationError as exc:
            errors = exc.errors()
        else:
            if not found:
                return config
            errors = []
        typos = [e for e in errors if _is_unknown_key(e)]
        if not typos or not _drop_keys(data, [_location(e) for e in typos]):
            found += [e for e in errors if not _follows_from(e, found)]
            found.sort(key=lambda e: _rank(order, _location(e)))  # stable: pydantic's order next
            return [_problem(e, file) for e in found]
        found += typos


def _follows_from(error: ErrorDetails, typos: list[ErrorDetails]) -> bool:
    """An absence in a table that had a misspelt key: `adress` leaves `address`
    missing, `upstream` leaves the service with neither `upstreams` nor `command`.
    The typo's own line says what to fix; these would only repeat it."""
    tables = {_location(t)[:-1] for t in typos}
    loc = _location(error)
    return loc in tables or (error["type"] == "missing" and loc[:-1] in tables)


def _file_order(data: Any, loc: tuple[int | str, ...] = ()) -> dict[tuple[int | str, ...], int]:
    """Every location in the parsed file, numbered as its keys came (TOML tables keep order)."""
    order = {loc: 0}
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in items:
        for sub in _file_order(value, (*loc, key)):
            order[sub] = len(order)
    return order


def _rank(order: dict[tuple[int | str, ...], int], loc: tuple[int | str, ...]) -> int:
    """The place of `loc`, or of its nearest enclosing table (a missing key is in its table)."""
    while loc not in order:
        loc = loc[:-1]
    return order[loc]


def _is_unknown_key(error: ErrorDetails) -> bool:
    return error["type"] == PROBLEM and str(error["ctx"]["reason"]).startswith("unknown key")


def _location(error: ErrorDetails) -> tuple[int | str, ...]:
    """Where the error points in the file: a PROBLEM's ctx["key"] extends its loc."""
    extra = error.get("ctx", {}).get("key", ()) if error["type"] == PROBLEM else ()
    return (*error["loc"], *extra)


def _drop_keys(data: dict[str, Any], locations: list[tuple[int | str, ...]]) -> bool:
    """Delete each location's last key from `data`; False if one is not there as written.

    A validator that reshaped its input (`"host:port"` to a table) could name a
    place the raw data lacks; then the loop stops rather than spin.
    """
    for loc in locations:
        node: Any = data
        for part in loc[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                return False
        if not isinstance(node, dict) or loc[-1] not in node:
            return False
        del node[loc[-1]]
    return True


def _problem(error: ErrorDetails, file: str) -> ConfigError:
    return ConfigError(_reason(error), file=file, key=dotted_key(_location(error)) or None)


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
