"""The report as a picture: what was deployed and how it ended (title), then
three panels on one time axis: which version served (100 %-stacked bars per
time bucket, failed requests in red on top), the request rate, and latency
(p50 and p99 per bucket, log scale so a held request and a 2 ms answer both
show). The deploy's steps are marked across all three, labelled above.

A standalone SVG built from strings: the chart needs nothing but the standard
library, and a test renders it to PNG to see that it draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from zerodown.verify.report import Bucket, Report
    from zerodown.verify.story import Mark

WIDTH = 960
LEFT, RIGHT = 76, 790  # the plot area's sides; the legend is right of it
LEGEND_X = RIGHT + 22
TITLE_Y, SUBTITLE_Y, REASON_Y = 28, 48, 66
MARK_ROWS = (84, 98, 112, 126)  # baselines of the step labels, staggered so they do not overlap
SHARE = (140, 330)  # top and bottom of each panel
RATE = (354, 444)
LATENCY = (468, 578)
AXIS_Y = LATENCY[1]
HEIGHT = AXIS_Y + 52
CHAR_WIDTH = 6.2  # of an 11 px label, to tell whether two labels collide
CLUSTER_PX = 6.0  # marks closer than this share one line and stack their labels
REASON_CHARS = 140  # a longer judge's reason is cut, with an ellipsis

PALETTE = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
NO_VERSION_COLOR = "#7f7f7f"  # answers without X-Version
FAILED_COLOR = "#d62728"  # kept out of PALETTE: red means failure only
RATE_COLOR = "#8da0b6"
P50_COLOR, P99_COLOR = "#333333", "#e6550d"
MARK_COLORS = {"step": "#666666", "end": "#222222", "failed": FAILED_COLOR}
FAILED = "failed"
MAX_TICKS = 10
FONT = "font-family:DejaVu Sans,Verdana,system-ui,sans-serif"


def render(report: Report) -> str:
    """The whole SVG document."""
    colors = series_colors(report)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" style="{FONT}">',
        tag("rect", width=WIDTH, height=HEIGHT, fill="white"),
        *title(report),
        *time_axis(report),
        *share_panel(report, colors),
        *rate_panel(report),
        *latency_panel(report),
        *marks(report),
        *legend(report, colors),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def series_colors(report: Report) -> dict[str, str]:
    """A color per version in the order they first answered, then "failed"."""
    colors: dict[str, str] = {}
    for version in report.versions:
        palette_color = PALETTE[len(colors) % len(PALETTE)]
        colors[version] = NO_VERSION_COLOR if version == "-" else palette_color
    if report.failed:
        colors[FAILED] = FAILED_COLOR
    return colors


# -- title --------------------------------------------------------------------------


def title(report: Report) -> list[str]:
    """What ran and how it ended; the numbers; and why, when it did not succeed."""
    during = report.during
    if during is None:
        headline, color = f"zerodown verify: load on {report.url}", "#111"
    else:
        headline = f"{during.what}: {during.outcome}"
        color = "#111" if during.ok else FAILED_COLOR
    parts = [tag("text", headline, x=LEFT, y=TITLE_Y, font_size=17, font_weight="bold", fill=color)]
    parts.append(tag("text", numbers(report), x=LEFT, y=SUBTITLE_Y, font_size=12, fill="#444"))
    if during is not None and during.reason:
        reason = _cut(f"{during.outcome}: {during.reason}", REASON_CHARS)
        parts.append(tag("text", reason, x=LEFT, y=REASON_Y, font_size=12, fill=FAILED_COLOR))
    return parts


def numbers(report: Report) -> str:
    failures = ", ".join(f"{kind} {n}" for kind, n in report.failures.items() if n)
    failed = f"{report.failed} failed" + (f" ({failures})" if failures else "")
    lat = report.latency
    return (
        f"{report.total} requests, {failed} · {report.rate:.0f} req/s · "
        f"p50 {_ms(lat.p50)} · p99 {_ms(lat.p99)} · {report.duration:.1f} s · "
        f"{report.bucket * 1000:g} ms buckets"
    )


# -- panels -------------------------------------------------------------------------


def time_axis(report: Report) -> list[str]:
    """Seconds along the bottom, with a faint vertical grid through every panel."""
    span = report.end or 1.0
    step = nice_step(span)
    parts = []
    for i in range(int(span / step + 1e-9) + 1):
        x = x_of(i * step, span)
        parts.append(line(x, SHARE[0], x, AXIS_Y, "#eee"))
        parts.append(line(x, AXIS_Y, x, AXIS_Y + 5, "#333"))
        label = f"{i * step:g}"
        parts.append(tag("text", label, x=x, y=AXIS_Y + 18, font_size=11, text_anchor="middle"))
    x_mid = (LEFT + RIGHT) / 2
    parts.append(tag("text", "seconds", x=x_mid, y=AXIS_Y + 38, font_size=12, text_anchor="middle"))
    return parts


def share_panel(report: Report, colors: dict[str, str]) -> list[str]:
    top, bottom = SHARE
    parts = panel_frame(SHARE, "share of requests")
    for pct in (0, 25, 50, 75, 100):
        y = bottom - (bottom - top) * pct / 100
        parts += y_tick(y, f"{pct}%")
    if not report.total:
        x, y = (LEFT + RIGHT) / 2, (top + bottom) / 2
        no = tag("text", "no requests", x=x, y=y, font_size=14, fill="#888", text_anchor="middle")
        return [*parts, no]
    for bucket, x, width in columns(report):
        parts += column(bucket, x, width, colors)
    return parts


def column(bucket: Bucket, x: float, width: float, colors: dict[str, str]) -> list[str]:
    """One bucket's stacked segments, the first version at the bottom."""
    if not bucket.total:
        return []
    top, bottom = SHARE
    parts = []
    y = float(bottom)
    for name, color in colors.items():
        count = bucket.failed if name == FAILED else bucket.ok.get(name, 0)
        if not count:
            continue
        height = (bottom - top) * count / bucket.total
        y -= height
        hover = f"{name}: {count} of {bucket.total} at {bucket.start:.2f} s"
        parts.append(bar(x, y, width, height, color, hover))
    return parts


def rate_panel(report: Report) -> list[str]:
    """Requests started per second, per bucket; the failed ones in red at the bottom."""
    top, bottom = RATE
    peak = max((b.rate for b in report.buckets), default=0.0)
    scale = nice_ceiling(peak)
    parts = panel_frame(RATE, "req/s")
    for value in (0.0, scale / 2, scale):
        parts += y_tick(bottom - (bottom - top) * value / scale, f"{value:g}")
    for bucket, x, width in columns(report):
        if not bucket.total:
            continue
        height = (bottom - top) * bucket.rate / scale
        hover = f"{bucket.rate:.0f} req/s at {bucket.start:.2f} s, {bucket.failed} failed"
        parts.append(bar(x, bottom - height, width, height, RATE_COLOR, hover))
        if bucket.failed:
            failed = height * bucket.failed / bucket.total
            parts.append(
                tag("rect", x=x, y=bottom - failed, width=width, height=failed, fill=FAILED_COLOR)
            )
    return parts


def latency_panel(report: Report) -> list[str]:
    """p50 and p99 of each bucket, on a log scale of whole decades."""
    top, bottom = LATENCY
    timed = [v for b in report.buckets for v in (b.p50, b.p99) if v > 0]
    low = 10 ** math.floor(math.log10(min(timed))) if timed else 0.001
    high = 10 ** math.ceil(math.log10(max(timed))) if timed else 0.1
    high = max(high, low * 10)
    decades = round(math.log10(high / low))

    def y_of(seconds: float) -> float:
        return bottom - (bottom - top) * math.log10(seconds / low) / decades

    parts = panel_frame(LATENCY, "latency")
    for i in range(decades + 1):
        parts += y_tick(y_of(low * 10**i), _ms(low * 10**i, digits=0), grid=0 < i < decades)
    for value, color in ((_p50, P50_COLOR), (_p99, P99_COLOR)):
        parts += polylines(report, value, y_of, color)
    return parts


def _p50(bucket: Bucket) -> float:
    return bucket.p50


def _p99(bucket: Bucket) -> float:
    return bucket.p99


def polylines(
    report: Report,
    value: Callable[[Bucket], float],
    y_of: Callable[[float], float],
    color: str,
) -> list[str]:
    """A line through each bucket's value at its middle; broken where a bucket has none."""
    runs: list[list[str]] = [[]]
    for bucket, x, width in columns(report):
        seconds = value(bucket)
        if seconds > 0:
            runs[-1].append(f"{_number(x + width / 2)},{_number(y_of(seconds))}")
        elif runs[-1]:
            runs.append([])
    return [
        tag("polyline", points=" ".join(run), fill="none", stroke=color, stroke_width=1.8)
        if len(run) > 1
        else tag("circle", cx=run[0].split(",")[0], cy=run[0].split(",")[1], r=2, fill=color)
        for run in runs
        if run
    ]


def marks(report: Report) -> list[str]:
    """The deploy's steps: a line across every panel, the label above, in the first
    row where it does not run into the previous label. Steps a few pixels apart
    (drain and stop right after a switch) share one line, their labels stacked."""
    span = report.end or 1.0
    ends = [-math.inf] * len(MARK_ROWS)  # where the last label of each row ends
    parts = []
    for x, group in clusters(report.marks, span):
        tone = next((m.tone for m in group if m.tone != "step"), "step")
        color = MARK_COLORS[tone]
        parts.append(line(x, SHARE[0] - 6, x, AXIS_Y, color, dashed=tone != "end"))
        for label, label_tone in stacked(group):
            row = _row(ends, x)
            ends[row] = x + 3 + CHAR_WIDTH * len(label)
            label_color = MARK_COLORS[label_tone]
            parts.append(line(x, MARK_ROWS[row] + 3, x, SHARE[0] - 6, color, dashed=True))
            parts.append(
                tag("text", label, x=x + 3, y=MARK_ROWS[row], font_size=11, fill=label_color)
            )
    return parts


def clusters(all_marks: Sequence[Mark], span: float) -> list[tuple[float, list[Mark]]]:
    """Marks in time order, grouped while each is within CLUSTER_PX of the group's first."""
    groups: list[tuple[float, list[Mark]]] = []
    for mark in sorted(all_marks, key=lambda m: m.at):
        x = x_of(min(max(mark.at, 0.0), span), span)
        if groups and x - groups[-1][0] < CLUSTER_PX:
            groups[-1][1].append(mark)
        else:
            groups.append((x, [mark]))
    return groups


def _row(ends: Sequence[float], x: float) -> int:
    """The first row free at `x`, else the one whose last label ended first."""
    free = [i for i, end in enumerate(ends) if end + 4 <= x]
    return free[0] if free else min(range(len(ends)), key=lambda i: ends[i])


def stacked(group: Sequence[Mark]) -> list[tuple[str, str]]:
    """One label per row; what does not fit is joined into the last one."""
    rows = len(MARK_ROWS) - 1  # leave a row for the next group's first label
    labels: list[tuple[str, str]] = [(m.label, m.tone) for m in group]
    if len(labels) <= rows:
        return labels
    rest = labels[rows - 1 :]
    tone = next((t for _, t in rest if t != "step"), "step")
    return [*labels[: rows - 1], (", ".join(label for label, _ in rest), tone)]


def legend(report: Report, colors: dict[str, str]) -> list[str]:
    parts = [tag("text", "version", x=LEGEND_X, y=SHARE[0] + 10, font_size=12, font_weight="bold")]
    for i, (name, color) in enumerate(colors.items()):
        y = SHARE[0] + 20 + i * 22
        count = report.failed if name == FAILED else report.versions[name].requests
        share = count / report.total if report.total else 0.0
        parts.append(tag("rect", x=LEGEND_X, y=y, width=14, height=14, fill=color))
        label = f"{name}  {share:.1%} ({count})"
        parts.append(tag("text", label, x=LEGEND_X + 20, y=y + 11, font_size=12))
    y = LATENCY[0]
    for name, color in (("p50", P50_COLOR), ("p99", P99_COLOR)):
        parts.append(line(LEGEND_X, y + 7, LEGEND_X + 14, y + 7, color, width=2.5))
        parts.append(tag("text", name, x=LEGEND_X + 20, y=y + 11, font_size=12))
        y += 22
    return ['<g class="legend">', *parts, "</g>"]


# -- geometry and markup -----------------------------------------------------------


def columns(report: Report) -> list[tuple[Bucket, float, float]]:
    """Each bucket with its x and drawn width: its own width, so the last,
    partial bucket is drawn as wide as the time it covers."""
    span = report.end or 1.0
    scale = (RIGHT - LEFT) / span
    out = []
    for bucket in report.buckets:
        width = bucket.width * scale
        gap = 1.0 if width > 4 else 0.0  # thin bars touch, and read as an area
        out.append((bucket, x_of(bucket.start, span), max(width - gap, 0.5)))
    return out


def panel_frame(panel: tuple[int, int], name: str) -> list[str]:
    top, bottom = panel
    y_mid = (top + bottom) / 2
    turn = f"rotate(-90 18 {y_mid:g})"
    return [
        line(LEFT, bottom, RIGHT, bottom, "#333"),
        line(LEFT, top, LEFT, bottom, "#333"),
        tag("text", name, x=18, y=y_mid, font_size=12, text_anchor="middle", transform=turn),
    ]


def y_tick(y: float, label: str, grid: bool = True) -> list[str]:
    parts = [line(LEFT, y, RIGHT, y, "#e4e4e4")] if grid else []
    parts.append(tag("text", label, x=LEFT - 6, y=y + 4, font_size=11, text_anchor="end"))
    return parts


def x_of(seconds: float, span: float) -> float:
    return LEFT + (RIGHT - LEFT) * seconds / span


def nice_step(span: float, max_ticks: int = MAX_TICKS) -> float:
    """The smallest 1, 2 or 5 times 10^k that puts at most `max_ticks` ticks on `span`."""
    raw = span / max_ticks
    magnitude: float = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times 10^k at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    magnitude: float = 10.0 ** math.floor(math.log10(value))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= value)


def bar(x: float, y: float, width: float, height: float, color: str, hover: str) -> str:
    rect = attrs(x=x, y=y, width=width, height=height, fill=color)
    return f"<rect {rect}><title>{escape(hover)}</title></rect>"


def line(
    x1: float,
    y1: float,
    x2: float,
    y2: float,
    color: str,
    dashed: bool = False,
    width: float = 1.0,
) -> str:
    dash = "4 3" if dashed else "none"
    return tag(
        "line", x1=x1, y1=y1, x2=x2, y2=y2, stroke=color, stroke_width=width, stroke_dasharray=dash
    )


def tag(name: str, text: str | None = None, **attributes: str | float) -> str:
    """An element; attribute names are written with "_" for SVG's "-"."""
    if text is None:
        return f"<{name} {attrs(**attributes)}/>"
    return f"<{name} {attrs(**attributes)}>{escape(text)}</{name}>"


def attrs(**attributes: str | float) -> str:
    return " ".join(
        f"{key.replace('_', '-')}={quoteattr(_number(value))}" for key, value in attributes.items()
    )


def _number(value: str | float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def _ms(seconds: float, digits: int = 1) -> str:
    if seconds >= 1:
        return f"{seconds:.{digits}f} s" if digits else f"{seconds:g} s"
    return f"{seconds * 1000:.{digits}f} ms"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
