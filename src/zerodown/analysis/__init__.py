"""Canary analysis: pure functions that compare the canary pool with the stable one."""

from zerodown.analysis.judge import Judgement, Sample, Verdict, judge

__all__ = ["Judgement", "Sample", "Verdict", "judge"]
