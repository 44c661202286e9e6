"""The proof that a deploy dropped nothing: a load generator, and the report of
what it saw (failures by kind, latency, share of traffic by version over time).

    report, code = await verify(LoadSpec("http://127.0.0.1:8080/"),
                                during=lambda: run_command(["zerodown", "deploy", "web", "v2"]))
    print(report.summary()); report.write("verify-v2")
"""

from zerodown.verify.load import FAILURE_KINDS, LoadResult, LoadSpec, Sample, run_load
from zerodown.verify.proof import run_command, verify
from zerodown.verify.report import Bucket, During, Latency, Mark, Report, VersionSeen

__all__ = [
    "FAILURE_KINDS",
    "Bucket",
    "During",
    "Latency",
    "LoadResult",
    "LoadSpec",
    "Mark",
    "Report",
    "Sample",
    "VersionSeen",
    "run_command",
    "run_load",
    "verify",
]
