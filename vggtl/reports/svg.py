"""Charts as inline SVG strings: no plotting library, no image files.

Each function returns the markup of one ``<svg>`` element, sized by its
``viewBox`` so it scales with the page (a phone or a laptop screen).
"""

from __future__ import annotations

import math
import re
from html import escape

# How the charts' parts look: the pages' style sheet and every standalone file share it.
CHART_STYLE = """\
.chart text { font-size: 11px; fill: #333; } .chart .title { font-size: 13px; font-weight: 600; } .chart .small { font-size: 9px; }
.chart .grid { stroke: #eee; } .chart .axis { stroke: #888; } .chart .best { stroke: #d62728; stroke-dasharray: 4 3; }
.chart .best-dot { fill: #d62728; } .chart .best-text { fill: #d62728; font-weight: 600; }
.chart .diagonal { stroke: #999; stroke-dasharray: 4 3; } .chart .bar { fill: #1f77b4; fill-opacity: .55; }"""

WIDTH, HEIGHT = 480, 260
MARGIN = {"left": 52, "right": 14, "top": 30, "bottom": 40}
LEGEND_ROW = 15
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= m * step)
    first = math.ceil(low / step) * step
    return [round(first + i * step, 10) for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}"


def line_chart(title: str, series: list[tuple[str, list[float]]], y_label: str, marker: tuple[int, float, str] | None = None,
               y_range: tuple[float, float] | None = None, xs: list[float] | None = None, x_label: str = "epoch") -> str:
    """Lines over epochs 1..N (or over the values ``xs``).

    Args:
        title: shown above the plot.
        series: ``(name, values per epoch)``; NaN values are left out.
        y_label: the quantity on the vertical axis.
        marker: ``(epoch, value, text)``: a vertical line at ``epoch`` (1-based;
            with ``xs``, an x value) and a dot at ``value`` labelled ``text``
            (the best epoch, a threshold), or None.
        y_range: fixed ``(low, high)``; by default the data's range.
        xs: the x value of each point (e.g. images per class), in place of
            epochs 1..N; ``x_label`` names them.
    """
    finite = [v for _, values in series for v in values if v is not None and math.isfinite(v)]
    epochs = max((len(values) for _, values in series), default=1)
    xs = list(xs) if xs is not None else list(range(1, epochs + 1))
    x_low, x_high = (min(xs), max(xs)) if xs else (1, 1)
    low, high = y_range or ((min(finite), max(finite)) if finite else (0.0, 1.0))
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    x0, x1 = MARGIN["left"], WIDTH - MARGIN["right"]
    y0, y1 = HEIGHT - MARGIN["bottom"], MARGIN["top"]

    def x(value: float) -> float:
        return x0 + (x1 - x0) * ((value - x_low) / max(x_high - x_low, 1e-12))

    def y(value: float) -> float:
        return y0 - (y0 - y1) * ((value - low) / (high - low))

    parts = [_frame(title, y_label, x_label)]
    for tick in _ticks(low, high):
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{x0 - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    for tick in _ticks(x_low, x_high):
        if float(tick).is_integer():
            parts.append(f'<text x="{x(tick):.1f}" y="{y0 + 16}" text-anchor="middle">{int(tick)}</text>')
    for i, (name, values) in enumerate(series):
        points = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in zip(xs, values) if v is not None and math.isfinite(v))
        color = COLORS[i % len(COLORS)]
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"><title>{escape(name)}</title></polyline>')
        # The legend goes under the plot, one row per series: inside it hid the curves.
        parts.append(f'<rect x="{x0}" y="{HEIGHT + 1 + LEGEND_ROW * i}" width="12" height="3" fill="{color}"/>'
                     f'<text x="{x0 + 16}" y="{HEIGHT + 6 + LEGEND_ROW * i}">{escape(name)}</text>')
    if marker is not None:
        epoch, value, text = marker
        parts.append(f'<line x1="{x(epoch):.1f}" x2="{x(epoch):.1f}" y1="{y0}" y2="{y1}" class="best"/>')
        if value is not None and math.isfinite(value):
            parts.append(f'<circle cx="{x(epoch):.1f}" cy="{y(value):.1f}" r="4" class="best-dot" data-epoch="{epoch}" '
                         f'data-value="{value:.6f}"/><text x="{x(epoch) + 6:.1f}" y="{y(value) - 6:.1f}" class="best-text">'
                         f'{escape(text)}</text>')
    return _svg(parts, title, HEIGHT + LEGEND_ROW * len(series))


def reliability(bins: list[dict], ece: float, title: str) -> str:
    """Accuracy against confidence per bin, bars with their image counts, and the diagonal."""
    x0, x1 = MARGIN["left"], WIDTH - MARGIN["right"]
    y0, y1 = HEIGHT - MARGIN["bottom"], MARGIN["top"]

    def x(value: float) -> float:
        return x0 + (x1 - x0) * value

    def y(value: float) -> float:
        return y0 - (y0 - y1) * value

    parts = [_frame(f"{title} (ECE {ece:.3f})", "accuracy", "confidence of the predicted class")]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<line x1="{x0}" x2="{x1}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
                     f'<text x="{x0 - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>'
                     f'<text x="{x(tick):.1f}" y="{y0 + 16}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" class="diagonal"/>')
    for b in bins:
        left, width = x(b["low"]), x(b["high"]) - x(b["low"])
        parts.append(f'<rect x="{left + 1:.1f}" y="{y(b["accuracy"]):.1f}" width="{width - 2:.1f}" '
                     f'height="{y0 - y(b["accuracy"]):.1f}" class="bar"><title>confidence {b["confidence"]:.3f}, accuracy '
                     f'{b["accuracy"]:.3f}, {b["count"]} image(s)</title></rect>'
                     f'<text x="{left + width / 2:.1f}" y="{y(b["accuracy"]) - 3:.1f}" text-anchor="middle" class="small">'
                     f'{b["count"]}</text>')
    return _svg(parts, title)


def _frame(title: str, y_label: str, x_label: str) -> str:
    x0, y0 = MARGIN["left"], HEIGHT - MARGIN["bottom"]
    return (f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>'
            f'<text x="{(x0 + WIDTH) / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>'
            f'<text x="12" y="{(MARGIN["top"] + y0) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {(MARGIN["top"] + y0) / 2})">{escape(y_label)}</text>'
            f'<line x1="{x0}" y1="{y0}" x2="{WIDTH - MARGIN["right"]}" y2="{y0}" class="axis"/>'
            f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{MARGIN["top"]}" class="axis"/>')


def _svg(parts: list[str], label: str, height: int = HEIGHT) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}" class="chart" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def document(charts: list[str], columns: int = 2, gap: int = 12) -> str:
    """A standalone SVG file of ``charts`` (from this module) in a grid of
    ``columns``, with their style and a white background: what ``report.md``
    shows (a Markdown viewer cannot style inline markup)."""
    sizes = [tuple(int(v) for v in re.search(r'viewBox="0 0 (\d+) (\d+)"', chart).groups()) for chart in charts]
    rows = [sizes[i : i + columns] for i in range(0, len(sizes), columns)]
    heights = [max(h for _, h in row) for row in rows]
    width = min(columns, len(charts)) * (WIDTH + gap) - gap if charts else 0
    height = sum(heights) + gap * (len(rows) - 1)
    placed = []
    for i, (chart, (w, h)) in enumerate(zip(charts, sizes)):
        x, y = (i % columns) * (WIDTH + gap), sum(heights[: i // columns]) + gap * (i // columns)
        placed.append(chart.replace("<svg ", f'<svg x="{x}" y="{y}" width="{w}" height="{h}" ', 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'font-family="sans-serif"><style>{CHART_STYLE}</style><rect width="100%" height="100%" fill="white"/>'
            f'{"".join(placed)}</svg>\n')
