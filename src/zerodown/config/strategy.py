"""The per-strategy tables of a service: `rolling`, `blue_green`, `canary`, `recreate`.

Validated at start like everything else, so a deploy never fails halfway
through on a typo in a table that was only read when its strategy ran.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from zerodown.analysis.judge import Criteria
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


# Deprecated key -> the key it became (docs/config.md).
_RENAMED = {"error_rate_threshold": "min_error_increase", "p99_threshold": "min_latency_increase"}

_DEFAULT_STEPS = tuple(CanaryStep(weight=w, pause=p) for w, p in defaults.CANARY_STEPS)


class CanaryConfig(Table):
    steps: Annotated[tuple[CanaryStep, ...], NotEmpty] = Field(default=_DEFAULT_STEPS, strict=False)
    # Strictly inside (0.5, 1): at 0.5 a bound is the estimate itself, at 1 infinite.
    confidence: float = Field(default=defaults.CANARY_CONFIDENCE, gt=0.5, lt=1)
    # Above 0: a canary can pass only once an increase of this size is ruled
    # out, and no sample rules out every increase.
    min_error_increase: float = Field(default=defaults.MIN_ERROR_INCREASE, gt=0, le=1)
    min_latency_increase: float = Field(default=defaults.MIN_LATENCY_INCREASE, ge=0)
    min_latency_shift: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = (
        defaults.MIN_LATENCY_SHIFT
    )
    min_requests: int = Field(default=defaults.MIN_REQUESTS, ge=1)
    cohorts: tuple[CohortConfig, ...] = Field(default=(), strict=False)
    # false: no stickiness, a client may flip between versions from one request to the next
    sticky_cookie: Annotated[str | None, BeforeValidator(_false_is_none)] = defaults.STICKY_COOKIE

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        """The keys of the fixed-threshold judge, read as the nearest new ones so
        that old configs load: "fail above stable by more than X" is a minimum
        effect of X; a p99 multiple M is a minimum increase of M - 1."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in _RENAMED.items():
            if old in data:
                if new in data:
                    raise problem(f"{old} is the old name of {new}: give only {new}", old)
                value = data.pop(old)
                is_number = isinstance(value, int | float) and not isinstance(value, bool)
                data[new] = value - 1 if old == "p99_threshold" and is_number else value
        return data

    def criteria(self) -> Criteria:
        """What the judge asks, from these keys."""
        return Criteria(
            confidence=self.confidence,
            min_error_increase=self.min_error_increase,
            min_latency_increase=self.min_latency_increase,
            min_latency_shift=self.min_latency_shift,
            min_requests=self.min_requests,
        )

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
