"""The report as a picture: traffic share by version over time, stacked bars
(one per time bucket, each the 100 % of requests that started in it), failed
requests in red on top, deploy marks as dashed lines. A standalone SVG built
from strings, so the chart needs nothing but the standard library.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from zerodown.verify.report import Bucket, Report

WIDTH, HEIGHT = 900, 440
LEFT, RIGHT, TOP, BOTTOM = 64, 720, 76, 390  # the plot area
LEGEND_X = RIGHT + 24
PALETTE = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22")
NO_VERSION_COLOR = "#7f7f7f"  # answers without X-Version
FAILED_COLOR = "#d62728"  # kept out of PALETTE: red means failure only
FAILED = "failed"
MAX_TICKS = 10
FONT = "font-family:system-ui,sans-serif"


def render(report: Report) -> str:
    """The whole SVG document."""
    colors = series_colors(report)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" style="{FONT}">',
        tag("rect", width=WIDTH, height=HEIGHT, fill="white"),
        *title(report),
        *axes(report),
        *bars(report, colors),
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


def title(report: Report) -> list[str]:
    failures = " · ".join(f"{kind} {n}" for kind, n in report.failures.items())
    lat = report.latency
    headline = f"zerodown verify: {report.total} requests, {report.failed} failed"
    detail = (
        f"{failures} · {report.reconnects} reconnects · "
        f"p50 {lat.p50 * 1000:.1f} ms · p99 {lat.p99 * 1000:.1f} ms · {report.rate:.0f} req/s"
    )
    return [
        tag("text", headline, x=LEFT, y=28, font_size=17, font_weight="bold"),
        tag("text", detail, x=LEFT, y=50, font_size=12, fill="#444"),
    ]


def axes(report: Report) -> list[str]:
    parts = []
    for pct in (0, 25, 50, 75, 100):
        y = BOTTOM - (BOTTOM - TOP) * pct / 100
        parts.append(line(LEFT, y, RIGHT, y, "#ddd"))
        parts.append(tag("text", f"{pct}%", x=LEFT - 6, y=y + 4, font_size=11, text_anchor="end"))
    span = timespan(report)
    step = nice_step(span)
    for i in range(int(span / step + 1e-9) + 1):
        x = x_of(i * step, span)
        parts.append(line(x, BOTTOM, x, BOTTOM + 5, "#333"))
        label = f"{i * step:g}"
        parts.append(tag("text", label, x=x, y=BOTTOM + 18, font_size=11, text_anchor="middle"))
    parts.append(line(LEFT, BOTTOM, RIGHT, BOTTOM, "#333"))
    parts.append(line(LEFT, TOP, LEFT, BOTTOM, "#333"))
    x_mid, y_mid = (LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2
    x_title = "seconds since start"
    parts.append(tag("text", x_title, x=x_mid, y=BOTTOM + 38, font_size=12, text_anchor="middle"))
    turn = f"rotate(-90 16 {y_mid:g})"
    y_title = "share of requests"
    parts.append(
        tag("text", y_title, x=16, y=y_mid, font_size=12, text_anchor="middle", transform=turn)
    )
    return parts


def bars(report: Report, colors: dict[str, str]) -> list[str]:
    span = timespan(report)
    if not report.total:
        x, y = (LEFT + RIGHT) / 2, (TOP + BOTTOM) / 2
        return [
            tag("text", "no requests", x=x, y=y, font_size=14, fill="#888", text_anchor="middle")
        ]
    width = (RIGHT - LEFT) * report.bucket / span
    gap = 1.0 if width > 4 else 0.0  # thin bars touch, and read as an area
    parts = []
    for bucket in report.buckets:
        parts += column(bucket, x_of(bucket.start, span), width - gap, colors)
    return parts


def column(bucket: Bucket, x: float, width: float, colors: dict[str, str]) -> list[str]:
    """One bucket's stacked segments, the first version at the bottom."""
    if not bucket.total:
        return []
    parts = []
    y = float(BOTTOM)
    for name, color in colors.items():
        count = bucket.failed if name == FAILED else bucket.ok.get(name, 0)
        if not count:
            continue
        height = (BOTTOM - TOP) * count / bucket.total
        y -= height
        hover = f"{name}: {count} of {bucket.total} at {bucket.start:g} s"
        rect = attrs(x=x, y=y, width=width, height=height, fill=color)
        parts.append(f"<rect {rect}><title>{escape(hover)}</title></rect>")
    return parts


def marks(report: Report) -> list[str]:
    span = timespan(report)
    parts = []
    for mark in report.marks:
        x = x_of(min(max(mark.at, 0.0), span), span)
        parts.append(line(x, TOP - 8, x, BOTTOM, "#222", dashed=True))
        parts.append(tag("text", mark.label, x=x + 3, y=TOP - 10, font_size=11))
    return parts


def legend(report: Report, colors: dict[str, str]) -> list[str]:
    parts = [tag("text", "version", x=LEGEND_X, y=TOP - 10, font_size=12)]
    for i, (name, color) in enumerate(colors.items()):
        y = TOP + i * 22
        count = report.failed if name == FAILED else report.versions[name].requests
        share = count / report.total if report.total else 0.0
        parts.append(tag("rect", x=LEGEND_X, y=y, width=14, height=14, fill=color))
        label = f"{name}  {share:.1%} ({count})"
        parts.append(tag("text", label, x=LEGEND_X + 20, y=y + 11, font_size=12))
    return ['<g class="legend">', *parts, "</g>"]


# -- geometry and markup -----------------------------------------------------------


def timespan(report: Report) -> float:
    """Seconds the x axis covers: all buckets, at least one."""
    return max(len(report.buckets), 1) * report.bucket


def x_of(seconds: float, span: float) -> float:
    return LEFT + (RIGHT - LEFT) * seconds / span


def nice_step(span: float, max_ticks: int = MAX_TICKS) -> float:
    """The smallest 1, 2 or 5 times 10^k that puts at most `max_ticks` ticks on `span`."""
    raw = span / max_ticks
    magnitude: float = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def line(x1: float, y1: float, x2: float, y2: float, color: str, dashed: bool = False) -> str:
    dash = "5 4" if dashed else "none"
    return tag("line", x1=x1, y1=y1, x2=x2, y2=y2, stroke=color, stroke_dasharray=dash)


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
