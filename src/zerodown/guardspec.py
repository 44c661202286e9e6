"""What a service refuses at the edge, as the routing table carries it: who
may reach it (allow/deny networks), what is blocked outright (paths, methods,
user agents) and how fast one client may ask (a token bucket).

Values only, checked once where the table is built; the embedded proxy
compiles them (proxy/guard.py) and the HAProxy and nginx drivers render them
into their own configuration. Regular expressions are Python's `re`, kept to
the subset PCRE (HAProxy, nginx) reads the same way; the config layer refuses
a pattern that does not compile.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BlockSpec",
    "GuardSpec",
    "RateLimitSpec",
    "check_methods",
    "check_patterns",
    "check_rate_key",
    "rate_key_header",
]

# A method is an HTTP token (RFC 9110 §9.1); written upper case, as it is sent.
_METHOD: Final = re.compile(r"^[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*$")
_HEADER: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_cidrs(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(str(ipaddress.ip_network(value, strict=True)) for value in values)


def check_patterns(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a regular expression: {exc}") from None
    return values


def check_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    for method in methods:
        if not _METHOD.match(method):
            raise ValueError(f"method {method!r} is not an upper-case HTTP method")
    return methods


def check_rate_key(key: str) -> str:
    kind, _, name = key.partition(":")
    if key == "ip" or (kind == "header" and _HEADER.match(name)):
        return key
    raise ValueError(f"key {key!r} is not ip or header:NAME")


class RateLimitSpec(_Value):
    """A token bucket per key: it holds `requests + burst` tokens and refills at
    `requests` per `per` seconds; each request takes one, an empty bucket is a 429."""

    requests: int = Field(ge=1)
    per: float = Field(gt=0)  # seconds
    burst: int = Field(default=0, ge=0)
    key: str = "ip"  # "ip" or "header:NAME"

    @field_validator("key")
    @classmethod
    def _known_key(cls, key: str) -> str:
        return check_rate_key(key)

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.requests / self.per

    @property
    def capacity(self) -> int:
        """The most requests one key may make at once."""
        return self.requests + self.burst

    @property
    def retry_after(self) -> int:
        """Whole seconds until an empty bucket holds one token again (at least 1)."""
        return max(1, math.ceil(1 / self.rate))


def rate_key_header(spec: RateLimitSpec) -> str | None:
    """The header a rate limit is keyed by, lower case; None when keyed by address."""
    kind, _, name = spec.key.partition(":")
    return name.lower() if kind == "header" else None


class BlockSpec(_Value):
    """Requests refused with 403 whatever their client: each list matches on its own."""

    paths: tuple[str, ...] = ()  # regexes searched in the path (no query), as sent and decoded
    methods: tuple[str, ...] = ()  # exact, upper case
    user_agents: tuple[str, ...] = ()  # regexes searched in User-Agent, any case

    @field_validator("paths", "user_agents")
    @classmethod
    def _patterns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return check_patterns(values)

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: tuple[str, ...]) -> tuple[str, ...]:
        return check_methods(methods)

    @property
    def empty(self) -> bool:
        return not (self.paths or self.methods or self.user_agents)


class GuardSpec(_Value):
    """Everything a service refuses at the edge. Checked in this order: deny and
    allow (403), block (403), then the rate limit (429), so a refused request
    takes no token."""

    allow: tuple[str, ...] = ()  # CIDRs; when given, any other client is refused
    deny: tuple[str, ...] = ()  # CIDRs refused, even inside an allowed network
    rate_limit: RateLimitSpec | None = None
    block: BlockSpec | None = None

    @field_validator("allow", "deny")
    @classmethod
    def _cidrs(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return _check_cidrs(values)

    @model_validator(mode="after")
    def _drop_empty_block(self) -> GuardSpec:
        if self.block is not None and self.block.empty:
            object.__setattr__(self, "block", None)
        return self

    @property
    def empty(self) -> bool:
        return not (self.allow or self.deny or self.rate_limit or self.block)
