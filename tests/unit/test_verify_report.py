"""The verify report from hand-made samples: counts, percentiles, buckets,
share per version, JSON, summary and the SVG chart. Also the pure parts of
the load generator (request mix, pacing, spec checks). No sockets, no clock.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from zerodown.errors import ConfigError
from zerodown.verify import FAILURE_KINDS, LoadResult, LoadSpec, Mark, Report, Sample
from zerodown.verify.chart import SHARE, nice_step
from zerodown.verify.load import Mix, Pacer, Target, build_requests
from zerodown.verify.report import Latency, bucket_for, percentile
from zerodown.verify.story import deploy_marks, step_label

SVG = "{http://www.w3.org/2000/svg}"


def result(*samples: Sample, elapsed: float = 3.0, reconnects: int = 0) -> LoadResult:
    spec = LoadSpec("http://127.0.0.1:8080/")
    return LoadResult(spec, samples, reconnects, elapsed, started_at=0.0, origin=0.0)


def ok(start: float, version: str, latency: float = 0.01) -> Sample:
    return Sample(start, latency, 200, version)


DEPLOY = result(
    ok(0.1, "v1", 0.010),
    ok(0.5, "v1", 0.020),
    ok(1.2, "v1", 0.030),
    Sample(1.5, 0.001, 0, "-", "connect"),
    Sample(1.6, 0.004, 502, "-", "5xx"),
    ok(1.7, "v2", 0.040),
    Sample(1.8, 5.0, 200, "v2", kind="long"),  # measures the app's sleep: not in percentiles
    ok(2.9, "v2", 0.050),
    elapsed=3.0,
    reconnects=2,
)


# -- aggregation ---------------------------------------------------------------------


def test_counts() -> None:
    report = Report.from_result(DEPLOY)
    assert (report.total, report.ok, report.failed, report.reconnects) == (8, 6, 2, 2)
    assert report.failures == {"connect": 1, "reset": 0, "5xx": 1, "timeout": 0, "protocol": 0}
    assert list(report.failures) == list(FAILURE_KINDS)
    assert report.statuses == {200: 6, 502: 1}
    assert report.rate == pytest.approx(8 / 3)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_latency_is_of_answered_short_requests() -> None:
    # Answered: v1 10/20/30 ms, the 502 in 4 ms, v2 40/50 ms; the connect failure
    # never got an answer and the long request is left out.
    latency = Report.from_result(DEPLOY).latency
    assert latency == Latency(p50=0.02, p90=0.05, p99=0.05, max=0.05)
    assert Latency.of([]) == Latency(0.0, 0.0, 0.0, 0.0)


def test_latency_of_a_run_of_long_requests_only() -> None:
    long_only = result(Sample(0.1, 5.0, 200, "v1", kind="long"))
    assert Report.from_result(long_only).latency.max == 5.0


def test_versions_in_order_of_first_answer() -> None:
    versions = Report.from_result(DEPLOY).versions
    assert list(versions) == ["v1", "v2"]
    assert (versions["v1"].requests, versions["v1"].first, versions["v1"].last) == (3, 0.1, 1.2)
    assert (versions["v2"].requests, versions["v2"].first, versions["v2"].last) == (3, 1.7, 2.9)


def test_buckets_cover_the_run_with_counts_per_version() -> None:
    buckets = Report.from_result(DEPLOY, bucket=1.0).buckets
    assert [b.start for b in buckets] == [0.0, 1.0, 2.0]
    assert [dict(b.ok) for b in buckets] == [{"v1": 2}, {"v1": 1, "v2": 2}, {"v2": 1}]
    assert [b.failed for b in buckets] == [0, 2, 0]
    middle = buckets[1]
    assert middle.total == 5
    assert (middle.share("v1"), middle.share("v2"), middle.share("v9")) == (0.2, 0.4, 0.0)


def test_buckets_of_other_widths_and_empty_ones() -> None:
    report = Report.from_result(result(ok(0.1, "v1"), ok(1.9, "v2"), elapsed=2.0), bucket=0.5)
    assert [b.total for b in report.buckets] == [1, 0, 0, 1]
    with pytest.raises(ValueError, match="bucket must be positive"):
        Report.from_result(DEPLOY, bucket=0)


def test_a_sample_after_the_elapsed_time_still_has_a_bucket() -> None:
    # The last requests start just before the stop; rounding must not lose them.
    report = Report.from_result(result(ok(2.0, "v1"), elapsed=2.0), bucket=1.0)
    assert len(report.buckets) == 3
    assert report.buckets[2].total == 1
    assert report.buckets[2].width > 0
    assert report.end > 2.0


def test_json() -> None:
    marks = [Mark(1.0, "deploy"), Mark(2.0, "deploy done")]
    data = json.loads(json.dumps(Report.from_result(DEPLOY, bucket=1.0, marks=marks).to_json()))
    assert (data["total"], data["ok"], data["failed"], data["reconnects"]) == (8, 6, 2, 2)
    assert data["failures"]["5xx"] == 1
    assert data["statuses"] == {"200": 6, "502": 1}
    assert data["latency_ms"] == {"p50": 20.0, "p90": 50.0, "p99": 50.0, "max": 50.0}
    assert data["versions"]["v2"] == {"requests": 3, "share": 0.375, "first": 1.7, "last": 2.9}
    assert data["buckets"][1] == {
        "start": 1.0,
        "width": 1.0,
        "ok": {"v1": 1, "v2": 2},
        "failed": 2,
        "p50_ms": 30.0,  # of 30 and 40 ms: the long request is left out
        "p99_ms": 40.0,
    }
    assert data["marks"] == [
        {"at": 1.0, "label": "deploy", "tone": "step"},
        {"at": 2.0, "label": "deploy done", "tone": "step"},
    ]
    assert data["during"] is None


def test_summary() -> None:
    text = Report.from_result(DEPLOY).summary()
    assert "8 requests" in text
    assert "2 failed" in text
    assert "2 reconnects" in text
    assert "connect 1 · 5xx 1" in text
    assert "p50 20.0 ms" in text
    assert "p99 50.0 ms" in text
    assert "v1 37.5% (0.1 to 1.2 s)" in text
    assert "v2 37.5%" in text
    assert len(text.splitlines()) == 4


def test_summary_says_first_how_the_deploy_ended() -> None:
    # "0 failed · failures: none" alone reads as a success; a rollback must say so.
    report = Report.from_result(DEPLOY).with_deploy(deploy("rolled_back", "canary p99 3.1x"))
    lines = report.summary().splitlines()
    assert lines[0] == "deploy web v1 → v2, canary: rolled back: canary p99 3.1x"
    assert len(lines) == 5
    done = Report.from_result(DEPLOY).with_deploy(deploy("succeeded"))
    assert done.summary().splitlines()[0] == "deploy web v1 → v2, canary: succeeded"
    ran = Report.from_result(DEPLOY).with_command(["./smoke.sh", "-q"], 3)
    assert ran.summary().splitlines()[0] == "command `./smoke.sh -q`: exit 3"


def test_summary_of_nothing() -> None:
    text = Report.from_result(result(elapsed=1.0)).summary()
    assert "0 requests" in text
    assert "failures: none" in text
    assert "none answered" in text


# -- the chart ---------------------------------------------------------------------


def svg(report: Report) -> ET.Element:
    return ET.fromstring(report.chart_svg())


def texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def legend(root: ET.Element) -> list[str]:
    group = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    return [t.text or "" for t in group.iter(f"{SVG}text")]


def test_chart_is_svg_with_a_legend_per_version_and_failures() -> None:
    root = svg(Report.from_result(DEPLOY, marks=[Mark(1.4, "deploy")]))
    assert root.tag == f"{SVG}svg"
    assert legend(root) == [
        "version",
        "v1  37.5% (3)",
        "v2  37.5% (3)",
        "failed  25.0% (2)",
        "p50",
        "p99",
    ]
    subtitle = texts(root)[1]
    assert "8 requests" in subtitle
    assert "2 failed" in subtitle
    assert "deploy" in texts(root)
    assert "100%" in texts(root)
    assert "seconds" in texts(root)


def share_bars(root: ET.Element) -> list[ET.Element]:
    """The share panel's segments: hover titles that say "N of M"."""
    return [r for r in root.iter(f"{SVG}rect") if " of " in (r.findtext(f"{SVG}title") or "")]


def test_chart_colors_failures_red_and_versions_apart() -> None:
    root = svg(Report.from_result(DEPLOY, bucket=1.0))
    fills = Counter(r.get("fill") for r in share_bars(root))
    assert fills["#d62728"] == 1  # one bucket had failures
    assert len(fills) == 3  # v1, v2, failed


def test_chart_bars_stack_to_the_full_height() -> None:
    root = svg(Report.from_result(DEPLOY, bucket=1.0))
    by_x: dict[str, float] = {}
    for bar in share_bars(root):
        by_x[bar.get("x", "")] = by_x.get(bar.get("x", ""), 0.0) + float(bar.get("height", "0"))
    height = SHARE[1] - SHARE[0]
    assert len(by_x) == 3
    assert all(h == pytest.approx(height, abs=0.05) for h in by_x.values())


def test_bucket_width_follows_the_run_length() -> None:
    widths = [bucket_for(s) for s in (0.5, 3.0, 4.0, 8.0, 10.0, 20.0, 60.0, 600.0, 1e6)]
    assert widths == [0.1, 0.1, 0.1, 0.2, 0.25, 0.5, 2.0, 15.0, 60.0]
    report = Report.from_result(DEPLOY)  # 3 s: 30 buckets of 100 ms
    assert report.bucket == 0.1
    assert len(report.buckets) == 30


def test_the_last_partial_bucket_is_as_wide_as_the_time_it_covers() -> None:
    report = Report.from_result(DEPLOY, bucket=0.4)  # 3.0 s: 7 whole buckets and 0.2 s
    assert [round(b.width, 3) for b in report.buckets] == [0.4] * 7 + [0.2]
    last = report.buckets[-1]
    assert last.total == 1
    assert last.rate == pytest.approx(5.0)  # 1 request in 0.2 s
    assert report.end == pytest.approx(3.0)
    widths = [float(r.get("width", "0")) for r in share_bars(svg(report))]
    assert widths[-1] == pytest.approx(widths[0] / 2, abs=1.0)  # less the 1 px gap


def test_buckets_have_rate_and_latency() -> None:
    first = Report.from_result(DEPLOY, bucket=1.0).buckets[1]
    assert first.rate == 5.0
    assert (first.p50, first.p99) == (0.03, 0.04)  # 30 and 40 ms; the long one left out


def test_chart_title_tells_the_deploy_and_how_it_ended() -> None:
    view = deploy(outcome="rolled_back", reason="error rate 31% on canary")
    root = svg(Report.from_result(DEPLOY).with_deploy(view))
    lines = texts(root)
    assert lines[0] == "web v1 → v2, canary: rolled back"
    assert lines[1].startswith("8 requests, 2 failed (connect 1, 5xx 1) · 3 req/s")
    assert lines[2] == "rolled back: error rate 31% on canary"
    assert {"start", "gate", "shift 20%", "pause (manual)", "promote", "rolled back"} <= set(lines)
    ok = svg(Report.from_result(DEPLOY).with_deploy(deploy(outcome="succeeded")))
    assert texts(ok)[0] == "web v1 → v2, canary: succeeded"
    assert "succeeded:" not in " ".join(texts(ok))  # no reason line


def test_chart_of_a_command_and_of_load_only() -> None:
    assert texts(svg(Report.from_result(DEPLOY).with_command(["./smoke.sh", "a b"], 3)))[0] == (
        "`./smoke.sh 'a b'`: exit 3"
    )
    assert texts(svg(Report.from_result(DEPLOY)))[0] == (
        "zerodown verify: load on http://127.0.0.1:8080/"
    )


def test_chart_panels_for_share_rate_and_latency() -> None:
    root = svg(Report.from_result(DEPLOY, bucket=1.0))
    labels = texts(root)
    assert {"share of requests", "req/s", "latency", "seconds", "p50", "p99"} <= set(labels)
    lines = [e for e in root.iter(f"{SVG}polyline")]
    assert len(lines) == 2  # p50 and p99, unbroken: every bucket had an answer


def test_chart_escapes_what_the_server_sent() -> None:
    root = svg(Report.from_result(result(ok(0.1, '<v1 & "friends">'))))
    assert '<v1 & "friends">  100.0% (1)' in legend(root)


def deploy(outcome: str, reason: str | None = None) -> dict[str, object]:
    """A DeployView of a canary with a manual pause; journal times in unix seconds, the
    load's origin at 0 (DEPLOY's started_at), so 1.0 is one second into the load."""

    def entry(index: int, phase: str, at: float, **step: object) -> dict[str, object]:
        return {"index": index, "kind": step["kind"], "step": step, "phase": phase, "at": at}

    return {
        "id": 3,
        "service": "web",
        "version": "v2",
        "strategy": "canary",
        "outcome": outcome,
        "reason": reason,
        "started_at": 1.0,
        "finished_at": 2.8,
        "steps": [
            entry(0, "before", 1.0, kind="start", role="new", count=2),
            entry(0, "after", 1.1, kind="start", role="new", count=2),
            entry(1, "before", 1.1, kind="wait_healthy", role="new"),
            entry(2, "before", 1.4, kind="set_traffic", mode="split", new_weight=20.0),
            entry(3, "before", 1.5, kind="pause", seconds=None),
            entry(3, "after", 2.5, kind="pause", seconds=None),
        ],
    }


def test_deploy_marks_from_the_journal() -> None:
    marks = deploy_marks(deploy("rolled_back", "judge"), origin=0.5)
    assert [(m.at, m.label, m.tone) for m in marks] == [
        (0.5, "start", "step"),
        (pytest.approx(0.6), "gate", "step"),
        (pytest.approx(0.9), "shift 20%", "step"),
        (1.0, "pause (manual)", "step"),
        (2.0, "promote", "step"),  # a manual pause ends when a person promotes
        (pytest.approx(2.3), "rolled back", "failed"),
    ]


def test_step_labels() -> None:
    steps: list[dict[str, object]] = [
        {"kind": "set_traffic", "mode": "pool"},
        {"kind": "set_traffic", "mode": "split", "new_weight": 100.0},
        {"kind": "set_traffic", "mode": "split", "new_weight": 0.0, "preview": True},
        {"kind": "pause", "seconds": 30.0},
        {"kind": "analyze"},
        {"kind": "drain", "role": "old", "count": 1},
        {"kind": "stop", "role": "old", "count": 1},
        {"kind": "start", "role": "old", "count": 1},
        {"kind": "hold", "on": True},
        {"kind": "keep_warm", "seconds": 600.0},
    ]
    assert [step_label(s) for s in steps] == [
        "shift",
        "switch",
        "preview",
        "pause 30s",
        "judge",
        "drain old",
        "stop old",
        "start old",
        "hold",
        "keep warm",
    ]


def test_chart_of_nothing() -> None:
    root = svg(Report.from_result(result(elapsed=0.0)))
    assert "no requests" in texts(root)
    assert legend(root) == ["version", "p50", "p99"]


def test_nice_steps() -> None:
    assert [nice_step(s) for s in (1.0, 3.0, 10.0, 45.0, 600.0)] == [0.1, 0.5, 1.0, 5.0, 100.0]


def test_write(tmp_path: Path) -> None:
    json_path, svg_path = Report.from_result(DEPLOY).write(tmp_path / "deploy-v2")
    assert (json_path.name, svg_path.name) == ("deploy-v2.json", "deploy-v2.svg")
    assert json.loads(json_path.read_text())["total"] == 8
    assert ET.parse(svg_path).getroot().tag == f"{SVG}svg"


# -- the load generator's pure parts -------------------------------------------------


def test_mix_holds_shares_in_every_stretch() -> None:
    mix = Mix(post_ratio=0.2, long_ratio=0.1)
    kinds = [mix.next() for _ in range(1000)]
    assert Counter(kinds) == {"get": 700, "post": 200, "long": 100}
    assert Counter(kinds[:10]) == {"get": 7, "post": 2, "long": 1}
    assert {Mix(0.0, 0.0).next() for _ in range(10)} == {"get"}
    assert {Mix(1.0, 0.0).next() for _ in range(10)} == {"post"}


def test_pacer_keeps_a_grid_despite_late_timers() -> None:
    pacer = Pacer(rate=100, origin=10.0)
    now = 10.0
    for _ in range(100):
        now += max(pacer.delay(now), 0.0) + 0.001  # every timer fires 1 ms late
    assert pacer.delay(now) == pytest.approx(10.0 + 1.0 - now)


def test_pacer_forgets_a_backlog_beyond_the_lag() -> None:
    pacer = Pacer(rate=100, origin=0.0)
    assert pacer.delay(0.0) == 0.0
    assert pacer.delay(5.0) == pytest.approx(-0.1)  # late by MAX_LAG at most
    assert pacer.delay(5.0) == pytest.approx(-0.09)  # then back on a 10 ms grid


def test_requests_are_built_once_per_kind() -> None:
    spec = LoadSpec("http://example.test:8080/app?x=1", headers={"X-Test": "1"}, post_path="/e")
    requests = build_requests(spec, Target.parse(spec.url))
    assert requests["get"].startswith(b"GET /app?x=1 HTTP/1.1\r\nHost: example.test:8080\r\n")
    assert b"\r\nX-Test: 1\r\n" in requests["get"]
    assert requests["long"].startswith(b"GET /slow?ms=5000 HTTP/1.1\r\n")
    head, body = requests["post"].split(b"\r\n\r\n")
    assert head.startswith(b"POST /e HTTP/1.1")
    assert f"Content-Length: {len(body)}".encode() in head


def test_target_from_url() -> None:
    assert Target.parse("https://example.test/") == Target(
        "example.test", 443, True, "/", "example.test"
    )
    assert Target.parse("http://[::1]:81").host == "::1"
    assert Target.parse("http://h").path == "/"


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "ftp://example.test/"},
        {"url": "http://:80/"},
        {"url": "http://h:99999/"},
        {"concurrency": 0},
        {"rate": 0.0},
        {"duration": -1.0},
        {"timeout": 0.0},
        {"post_ratio": 1.5},
        {"post_ratio": 0.6, "long_ratio": 0.6},
    ],
)
def test_spec_checks(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"url": "http://127.0.0.1:8080/", **bad}
    with pytest.raises(ConfigError):
        LoadSpec(**fields)  # type: ignore[arg-type]
