"""Small static SVG charts for the HTML report: lines over steps, and horizontal bars.

Plain SVG strings, so the report needs no plotting library and no network to render.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _format(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.3g}"


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str,
               y_label: str, width: int = 460, height: int = 280) -> str:
    """Lines of (x, y) points, one per named series, with axes, ticks and a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f'<p class="empty">{escape(title)}: no data</p>'
    left, right, top, bottom = 56, 16, 30, 44
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 if max(ys) > 0 else 1.0

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{width / 2}" y="18" class="chart-title">{escape(title)}</text>']
    for y in _ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" '
                     'class="grid"/>'
                     f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" class="tick" '
                     f'text-anchor="end">{_format(y)}</text>')
    x_ticks = _ticks(x0, x1, min(6, len(set(xs))))
    if all(float(x).is_integer() for x in xs):  # steps, epochs, buckets: whole numbers only
        x_ticks = sorted({round(x) for x in x_ticks})
    for x in x_ticks:
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" class="tick" '
                     f'text-anchor="middle">{_format(x)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" class="axis" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(14 {(top + height - bottom) / 2}) rotate(-90)" '
                 f'class="axis" text-anchor="middle">{escape(y_label)}</text>')
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}">'
                  f'<title>{escape(name)}: {_format(y)} at {_format(x)}</title></circle>'
                  for x, y in values]
        parts.append(f'<rect x="{width - right - 150}" y="{top + 4 + 16 * i}" width="10" '
                     f'height="10" fill="{colour}"/><text x="{width - right - 135}" '
                     f'y="{top + 13 + 16 * i}" class="legend">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(rows: Sequence[tuple[str, float]], title: str, width: int = 520,
              bar: int = 18, label_width: int = 330, colour: str = PALETTE[0]) -> str:
    """Horizontal bars, one row per (label, value), largest first as given."""
    if not rows:
        return f'<p class="empty">{escape(title)}: no data</p>'
    top = 28
    height = top + bar * len(rows) + 8
    peak = max(value for _, value in rows) or 1.0
    span = width - label_width - 48
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="{width / 2}" y="18" class="chart-title">{escape(title)}</text>']
    for i, (label, value) in enumerate(rows):
        y = top + i * bar
        shown = label if len(label) <= 52 else label[:50] + "…"
        length = max(value / peak * span, 1.0)
        parts.append(f'<text x="{label_width - 6}" y="{y + bar * 0.7:.1f}" class="tick" '
                     f'text-anchor="end"><title>{escape(label)}</title>{escape(shown)}</text>'
                     f'<rect x="{label_width}" y="{y + 2}" width="{length:.1f}" '
                     f'height="{bar - 4}" fill="{colour}"/>'
                     f'<text x="{label_width + length + 4:.1f}" y="{y + bar * 0.7:.1f}" '
                     f'class="tick">{_format(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)
