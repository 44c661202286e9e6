"""The per-strategy tables of a service: `rolling`, `blue_green`, `canary`, `recreate`.

Validated at start like everything else, so a deploy never fails halfway
through on a typo in a table that was only read when its strategy ran.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from zerodown.config import defaults
from zerodown.config.fields import Duration, NotEmpty, Table, problem, same_as
from zerodown.config.units import parse_duration
from zerodown.routing import CohortRule, PoolName, Split

StrategyName = Literal["rolling", "blue_green", "canary", "recreate"]


class RollingConfig(Table):
    max_surge: int = Field(default=defaults.MAX_SURGE, ge=0)
    max_unavailable: int = Field(default=defaults.MAX_UNAVAILABLE, ge=0)

    @model_validator(mode="after")
    def _moves(self) -> RollingConfig:
        # Both 0 means no instance may be added or removed: the deploy can never start.
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise problem("max_surge and max_unavailable cannot both be 0", "max_surge")
        return self


def _pause(value: Any) -> Any:
    return value if value == "manual" else parse_duration(value)


class BlueGreenConfig(Table):
    scale_down_delay: Duration = defaults.SCALE_DOWN_DELAY
    preview_header: str = Field(default=defaults.PREVIEW_HEADER, min_length=1)
    # How long green is reachable only with the preview header before the
    # switch: "manual" waits for `zerodown promote` (smoke tests in CI), 0 skips.
    preview_pause: Annotated[float | Literal["manual"], BeforeValidator(_pause)] = (
        defaults.PREVIEW_PAUSE
    )


class CanaryStep(Table):
    weight: float = same_as(Split, "canary_weight", required=True)  # percent of traffic
    # "manual": wait for `zerodown promote`
    pause: Annotated[float | Literal["manual"], BeforeValidator(_pause)]


class CohortConfig(Table):
    """Requests whose header or cookie has one of `values` always go to `pool`."""

    header: str | None = None
    cookie: str | None = None
    values: Annotated[tuple[str, ...], NotEmpty] = Field(strict=False)
    pool: PoolName

    @model_validator(mode="after")
    def _one_source(self) -> CohortConfig:
        if (self.header is None) == (self.cookie is None):
            raise problem("a cohort names exactly one of header or cookie")
        return self

    def rule(self) -> CohortRule:
        return CohortRule(**self.model_dump())


def _false_is_none(value: Any) -> Any:
    return None if value is False else value


_DEFAULT_STEPS = tuple(CanaryStep(weight=w, pause=p) for w, p in defaults.CANARY_STEPS)


class CanaryConfig(Table):
    steps: Annotated[tuple[CanaryStep, ...], NotEmpty] = Field(default=_DEFAULT_STEPS, strict=False)
    error_rate_threshold: float = Field(default=defaults.ERROR_RATE_THRESHOLD, ge=0, le=1)
    p99_threshold: float = Field(default=defaults.P99_THRESHOLD, ge=1)
    min_requests: int = Field(default=defaults.MIN_REQUESTS, ge=1)
    cohorts: tuple[CohortConfig, ...] = Field(default=(), strict=False)
    # false: no stickiness, a client may flip between versions from one request to the next
    sticky_cookie: Annotated[str | None, BeforeValidator(_false_is_none)] = defaults.STICKY_COOKIE

    @field_validator("steps")
    @classmethod
    def _rising(cls, steps: tuple[CanaryStep, ...]) -> tuple[CanaryStep, ...]:
        # A step that lowers the weight is a rollback in disguise; the judge
        # compares pools step by step and expects traffic only to grow.
        for i, (before, after) in enumerate(itertools.pairwise(steps), start=1):
            if after.weight <= before.weight:
                reason = f"weights must rise step by step: {before.weight:g} then {after.weight:g}"
                raise problem(reason, i, "weight")
        return steps


class RecreateConfig(Table):
    max_pause: Duration = defaults.MAX_PAUSE
    maintenance_page: str | None = None  # HTML file answered with 503 instead of holding
