"""The building blocks of the config models: a strict table and typed values.

Every model is a `Table`: TOML already has real types, so nothing is coerced
(`instances = "2"` is refused rather than silently read), and an unknown key
is refused with the closest known one, because a typo in a key otherwise
falls back to the default without a word.
"""

from __future__ import annotations

import difflib
import ipaddress
import string
from collections.abc import Collection, Mapping
from copy import copy
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError, PydanticUndefined

from zerodown.config.units import parse_duration, parse_size
from zerodown.routing import parse_address

T = TypeVar("T")

PROBLEM = "zerodown_config"  # error type the loader recognises; ctx["key"] extends the location


def problem(reason: str, *key: str | int) -> PydanticCustomError:
    """An error at the validated model's location extended by `key` (names and indexes).

    A model validator can only fail the whole model; this names the key inside it
    that is wrong, such as one service's route or the second canary step.
    """
    return PydanticCustomError(PROBLEM, "{reason}", {"reason": reason, "key": key})


def unknown_key(key: str, known: Collection[str]) -> PydanticCustomError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return problem(f"unknown key{hint}", key)


class Table(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key not in cls.model_fields:
                    raise unknown_key(str(key), cls.model_fields)
        return data


def same_as(model: type[BaseModel], name: str, *, required: bool = False) -> Any:
    """The default and bounds of `model.name`, so a config key and its spec cannot drift."""
    field = copy(model.model_fields[name])
    if required:
        field.default = PydanticUndefined
    return field


def not_empty(items: tuple[T, ...]) -> tuple[T, ...]:
    # An after-validator, not min_length: pydantic checks min_length on the items
    # that survived, so one bad item would also report "at least 1 item".
    if not items:
        raise ValueError("must not be empty")
    return items


def table_or_false(value: Any) -> Any:
    """`health = false` turns a feature off (None); `true` keeps its defaults."""
    if value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table or false, got {value!r}")
    return value


def check_address(value: str) -> str:
    parse_address(value)
    return value


def check_listener(value: str) -> str:
    # Port 0 lets the OS pick a free port: how tests and the demo avoid collisions.
    host, _, port = value.rpartition(":")
    if port == "0" and host:
        return value
    return check_address(value)


def check_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path {value!r} must start with '/'")
    return value


def check_cidr(value: str) -> str:
    # strict: "10.0.0.1/8" is almost certainly a typo for a host or for 10.0.0.0/8.
    return str(ipaddress.ip_network(value, strict=True))


def check_template(template: str, allowed: Collection[str]) -> str:
    """Refuse placeholders other than `allowed`, before a deploy trips on them."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)]
    except ValueError as exc:
        raise ValueError(f"{template!r}: {exc}; write {{{{ and }}}} for literal braces") from None
    names = ", ".join(f"{{{n}}}" for n in sorted(allowed))
    for name, spec, conv in fields:
        if name is not None and (name not in allowed or spec or conv):
            shown = name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"placeholder {{{shown}}} in {template!r}: only {names} are filled in, "
                "as written; write {{ and }} for literal braces"
            )
    return template


Duration = Annotated[float, BeforeValidator(parse_duration)]  # seconds, 0 allowed
Timeout = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size)]  # bytes
Address = Annotated[str, AfterValidator(check_address)]  # "host:port"
Listener = Annotated[str, AfterValidator(check_listener)]  # "host:port", port 0 allowed
Cidr = Annotated[str, AfterValidator(check_cidr)]
UrlPath = Annotated[str, AfterValidator(check_path)]
NotEmpty = AfterValidator(not_empty)
