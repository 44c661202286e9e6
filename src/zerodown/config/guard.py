"""`allow`, `deny`, `rate_limit` and `block` of `[services.NAME]`: what the
service refuses at the edge (guardspec.py has the meaning of each).

The checks that make a value wrong live in the spec; these tables add the
config's strictness (no coercion, unknown keys named) and its units
("1s" durations), and map to the spec in one place (`guard_spec`).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from zerodown.config.fields import Cidr, Table, Timeout
from zerodown.guardspec import (
    BlockSpec,
    GuardSpec,
    RateLimitSpec,
    check_methods,
    check_patterns,
    check_rate_key,
)

__all__ = ["BlockConfig", "RateLimitConfig", "guard_spec"]


class RateLimitConfig(Table):
    requests: int = Field(ge=1)
    per: Timeout
    burst: int = Field(default=0, ge=0)
    key: str = "ip"

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        return check_rate_key(key)

    def spec(self) -> RateLimitSpec:
        return RateLimitSpec(**self.model_dump())


class BlockConfig(Table):
    paths: tuple[str, ...] = Field(default=(), strict=False)
    methods: tuple[str, ...] = Field(default=(), strict=False)
    user_agents: tuple[str, ...] = Field(default=(), strict=False)

    @field_validator("paths", "user_agents")
    @classmethod
    def _patterns(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return check_patterns(values)

    @field_validator("methods")
    @classmethod
    def _methods(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return check_methods(values)

    def spec(self) -> BlockSpec:
        return BlockSpec(**self.model_dump())


Cidrs = tuple[Cidr, ...]


def guard_spec(
    allow: Cidrs, deny: Cidrs, rate_limit: RateLimitConfig | None, block: BlockConfig | None
) -> GuardSpec | None:
    """The routing table's guard of a service; None when it sets none of these keys."""
    spec = GuardSpec(
        allow=allow,
        deny=deny,
        rate_limit=rate_limit.spec() if rate_limit else None,
        block=block.spec() if block else None,
    )
    return None if spec.empty else spec
