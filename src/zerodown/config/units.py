"""Durations and sizes as people write them: "1m30s", "500ms", "16k", "8KiB".

Plain functions raising ValueError with the reason, so the config models can
use them as validators and pydantic reports the reason under the right key.
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# "ms" before "m" so that "500ms" is not read as 500 minutes and a stray "s".
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_DURATION_HINT = "use seconds (30, 0.5) or a string like '500ms', '1s', '2m', '1h', '1m30s'"

# Binary multiples whatever the spelling: "16k" means 16384 as it does in
# nginx, and a size limit that is 2.4 % smaller than the user meant is a bug.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    **dict.fromkeys(("k", "kb", "kib"), 1024),
    **dict.fromkeys(("m", "mb", "mib"), 1024**2),
    **dict.fromkeys(("g", "gb", "gib"), 1024**3),
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_SIZE_HINT = "use bytes (1024) or a string like '16k', '8KiB', '1m', '1g'"


def parse_duration(value: str | int | float) -> float:
    """Seconds from a number of seconds or a string such as "1m30s"."""
    if isinstance(value, str):
        return _duration_from_text(value.strip())
    # bool is an int: `timeout = true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{_shown(value)} is not a duration: {_DURATION_HINT}")
    return _non_negative(float(value), value, "duration")


def parse_size(value: str | int | float) -> int:
    """Bytes from a number of bytes or a string such as "16k" (binary multiples)."""
    if isinstance(value, str):
        return _size_from_text(value.strip())
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{_shown(value)} is not a size: {_SIZE_HINT}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(_non_negative(float(value), value, "size"))


def _duration_from_text(text: str) -> float:
    if _is_number(text):
        return _non_negative(float(text), text, "duration")
    if not _DURATION.fullmatch(text):
        reason = "is negative" if text.startswith("-") else "is not a duration"
        raise ValueError(f"{text!r} {reason}: {_DURATION_HINT}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


def _size_from_text(text: str) -> int:
    match = _SIZE.fullmatch(text.lower())
    if match is None or match[2] not in _SIZE_UNITS:
        reason = "is negative" if text.startswith("-") else "is not a size"
        raise ValueError(f"{text!r} {reason}: {_SIZE_HINT}")
    size = float(match[1]) * _SIZE_UNITS[match[2]]
    if not size.is_integer():
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(size)


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _non_negative(number: float, shown: object, what: str) -> float:
    if not math.isfinite(number):
        raise ValueError(f"{what} {shown!r} is not finite")
    if number < 0:
        raise ValueError(f"{what} {shown!r} is negative")
    return number
