"""The verify chart, drawn: a canary run that the judge rolled back (samples
and the deploy's view shaped like the demo's v5) is rendered to SVG, converted
to PNG by librsvg's `rsvg-convert` (scripts/system-deps installs it), and the
pixels are checked: the right size, mostly drawn, with both versions' colours
and the failures' red. The PNG is decoded here with zlib, no imaging library.
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from zerodown.verify import LoadResult, LoadSpec, Report, Sample, chart

START = 1_700_000_000.0  # wall clock at the load's time 0
CANARY_FROM, ROLLED_BACK_AT, END = 2.2, 3.4, 3.9


def canary_run() -> LoadResult:
    """v4 serves; from 2.2 s a 20 % canary of v5 fails 30 % of its requests,
    until the rollback at 3.4 s. 3,000 requests a second, latency 2-20 ms."""
    rng = random.Random(5)
    samples = []
    for i in range(int(END * 3000)):
        start = i / 3000
        latency = rng.uniform(0.002, 0.004) if rng.random() < 0.95 else rng.uniform(0.01, 0.02)
        canary = CANARY_FROM <= start < ROLLED_BACK_AT and rng.random() < 0.2
        if canary and rng.random() < 0.3:
            samples.append(Sample(start, latency, 500, "v5", "5xx"))
        else:
            samples.append(Sample(start, latency, 200, "v5" if canary else "v4"))
    return LoadResult(LoadSpec("http://127.0.0.1:8080/"), tuple(samples), 0, END, START, 0.0)


def step(index: int, kind: str, phase: str, at: float, **params: object) -> dict[str, object]:
    return {
        "index": index,
        "kind": kind,
        "step": {"kind": kind, **params},
        "phase": phase,
        "detail": None,
        "at": START + at,
    }


REASON = "error rate 32.58% (217/666) on canary vs 0.00% (0/2719) on stable"
VIEW = {
    "id": 5,
    "service": "web",
    "version": "v5",
    "strategy": "canary",
    "state": "rolled_back",
    "outcome": "rolled_back",
    "reason": REASON,
    "started_at": START + 0.5,
    "finished_at": START + ROLLED_BACK_AT,
    "steps": [
        step(0, "start", "before", 0.5, role="new", count=2),
        step(0, "start", "after", 0.51, role="new", count=2),
        step(1, "wait_healthy", "before", 0.52, role="new"),
        step(1, "wait_healthy", "after", 2.19, role="new"),
        step(2, "set_traffic", "before", 2.2, mode="split", new_weight=20.0, preview=False),
        step(2, "set_traffic", "after", 2.21, mode="split", new_weight=20.0, preview=False),
        step(3, "pause", "before", 2.21, seconds=3.0),
        step(3, "pause", "failed", 3.15, seconds=3.0),
    ],
}


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the pixels' RGB bytes of an 8-bit RGB or RGBA,
    non-interlaced PNG, as rsvg-convert writes (RGB when all is opaque)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, color, interlace) in ((8, 2, 0), (8, 6, 0)), (depth, color, interlace)
    size = 3 if color == 2 else 4  # bytes per pixel
    raw, stride, rows = zlib.decompress(idat), width * size, []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for x in range(stride):
            a = line[x - size] if x >= size else 0
            b, c = previous[x], previous[x - size] if x >= size else 0
            line[x] = (line[x] + unfilter(kind, a, b, c)) & 0xFF
        rows.append(b"".join(line[x : x + 3] for x in range(0, stride, size)))
        previous = line
    return width, height, rows


def unfilter(kind: int, a: int, b: int, c: int) -> int:
    """PNG filter types (RFC 2083, 6.2): what was subtracted from a byte."""
    if kind == 0:
        return 0
    if kind == 1:
        return a
    if kind == 2:
        return b
    if kind == 3:
        return (a + b) // 2
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def rgb(hex_color: str) -> bytes:
    return bytes.fromhex(hex_color.lstrip("#"))


def test_the_chart_of_a_rolled_back_canary_draws(tmp_path: Path) -> None:
    report = Report.from_result(canary_run()).with_deploy(VIEW)
    assert report.bucket == 0.1
    assert len(report.buckets) == 39
    svg = tmp_path / "canary.svg"
    svg.write_text(report.chart_svg())
    converter = shutil.which("rsvg-convert")
    assert converter, "rsvg-convert is missing: run scripts/system-deps (librsvg2-bin)"
    png = tmp_path / "canary.png"
    subprocess.run([converter, "-o", str(png), str(svg)], check=True, timeout=30)

    width, height, rows = png_pixels(png.read_bytes())
    assert (width, height) == (chart.WIDTH, chart.HEIGHT)
    pixels = [row[x : x + 3] for row in rows for x in range(0, len(row), 3)]
    drawn = sum(p != b"\xff\xff\xff" for p in pixels)
    assert drawn / len(pixels) > 0.25  # bars, lines and text, not a blank page
    colors = set(pixels)
    v4, v5 = (rgb(c) for c in chart.PALETTE[:2])
    assert {v4, v5, rgb(chart.FAILED_COLOR), rgb(chart.RATE_COLOR)} <= colors
    # The failures are a sliver: red covers far less of the picture than v4's blue.
    assert 0 < pixels.count(rgb(chart.FAILED_COLOR)) < pixels.count(v4) / 10
