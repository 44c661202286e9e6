"""Canary analysis: pure functions that compare the canary pool with the stable one."""

from zerodown.analysis.judge import (
    NO_TRAFFIC,
    Criteria,
    ErrorCheck,
    Judgement,
    LatencyCheck,
    Sample,
    Verdict,
    judge,
    pool_samples,
)

__all__ = [
    "NO_TRAFFIC",
    "Criteria",
    "ErrorCheck",
    "Judgement",
    "LatencyCheck",
    "Sample",
    "Verdict",
    "judge",
    "pool_samples",
]
