"""Small static SVG charts for the HTML report: lines over steps, and horizontal bars.

Plain SVG strings, so the report needs no plotting library and no network to render. The layout
measures its text (titles wrap, margins fit the tick labels, the legend sits beside the plot
rather than over the curves), with the advance widths of DejaVu Sans, the font the charts ask
for (report.css): the widest of the common sans fonts, so a fallback font fits too.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

# Font sizes in px, as in report.css (.chart-title, .axis, .tick, .legend).
TITLE_SIZE, AXIS_SIZE, TICK_SIZE, LEGEND_SIZE = 13, 11, 10, 11
# DejaVu Sans advance widths of ASCII 32..126, in thousandths of the font size (regular, bold).
_WIDTHS = (
    318, 401, 460, 838, 636, 950, 780, 275, 390, 390, 500, 838, 318, 361, 318, 337, 636, 636, 636,
    636, 636, 636, 636, 636, 636, 636, 337, 337, 838, 838, 838, 531, 1000, 684, 686, 698, 770,
    632, 575, 775, 752, 295, 295, 656, 557, 863, 748, 787, 603, 787, 695, 635, 611, 732, 684, 989,
    685, 611, 685, 390, 337, 390, 838, 500, 500, 613, 635, 550, 635, 615, 352, 635, 634, 278,
    278, 579, 278, 974, 634, 612, 635, 635, 411, 521, 392, 634, 592, 818, 592, 592, 525, 636,
    337, 636, 838)
_BOLD_WIDTHS = (
    348, 456, 521, 838, 696, 1002, 872, 306, 457, 457, 523, 838, 380, 415, 380, 365, 696, 696,
    696, 696, 696, 696, 696, 696, 696, 696, 400, 400, 838, 838, 838, 580, 1000, 774, 762, 734,
    830, 683, 683, 821, 837, 372, 372, 775, 637, 995, 837, 850, 733, 850, 770, 720, 682, 812, 774,
    1103, 771, 724, 725, 457, 365, 457, 838, 500, 500, 675, 716, 593, 716, 678, 435, 716, 712,
    343, 343, 665, 343, 1042, 712, 687, 716, 716, 493, 595, 478, 712, 652, 924, 645, 652, 582,
    712, 365, 712, 838)
_WIDEST = 1103  # any character outside ASCII: as wide as the widest one


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The width in px of `text` set in DejaVu Sans at `size` px."""
    table = _BOLD_WIDTHS if bold else _WIDTHS
    return size * sum(table[ord(c) - 32] if 32 <= ord(c) < 127 else _WIDEST for c in text) / 1000


def wrap(text: str, size: float, width: float, bold: bool = False) -> list[str]:
    """`text` in lines no wider than `width` (a single word wider than that gets its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", size, bold) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def fit(text: str, size: float, width: float) -> str:
    """`text`, cut with an ellipsis to fit `width`."""
    if text_width(text, size) <= width:
        return text
    while text and text_width(text + "…", size) > width:
        text = text[:-1]
    return text + "…"


def _title(title: str, width: int, top: float) -> tuple[list[str], float]:
    """The title's SVG lines, wrapped to the chart's width, and the height they take."""
    lines = wrap(title, TITLE_SIZE, width - 16, bold=True)
    parts = [f'<text x="{width / 2}" y="{top + TITLE_SIZE + i * (TITLE_SIZE + 3)}" '
             f'class="chart-title">{escape(line)}</text>' for i, line in enumerate(lines)]
    return parts, top + len(lines) * (TITLE_SIZE + 3) + 10


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = (high - low) / (count - 1)
    return [low + i * step for i in range(count)]


def _format(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:.3g}"


def line_chart(series: dict[str, Sequence[tuple[float, float]]], title: str, x_label: str,
               y_label: str, width: int = 460, height: int = 280) -> str:
    """Lines of (x, y) points, one per named series, with axes, ticks and a legend beside the
    plot (never over the curves)."""
    points = [p for values in series.values() for p in values]
    if not points:
        return f'<p class="empty">{escape(title)}: no data</p>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 if max(ys) > 0 else 1.0
    y_ticks = _ticks(y0, y1)
    x_ticks = _ticks(x0, x1, min(6, len(set(xs))))
    if all(float(x).is_integer() for x in xs):  # steps, epochs, buckets: whole numbers only
        x_ticks = sorted({round(x) for x in x_ticks})

    title_parts, top = _title(title, width, 4)
    # Legend entries: a 10 px swatch, a 5 px gap and the name; at most a third of the width.
    legend_room = width / 3
    names = [fit(name, LEGEND_SIZE, legend_room - 15) for name in series]
    legend_width = 15 + max(text_width(name, LEGEND_SIZE) for name in names)
    left = 8 + AXIS_SIZE + 6 + max(text_width(_format(y), TICK_SIZE) for y in y_ticks) + 6
    right = 12 + legend_width + 8
    last_tick = text_width(_format(x_ticks[-1]), TICK_SIZE) / 2  # centred on the last x
    right = max(right, last_tick + 4)
    bottom = 10 + TICK_SIZE + 8 + AXIS_SIZE + 6
    height = max(height, int(top + 16 * len(series) + bottom))

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>', *title_parts,
             '<g class="plot-area">']
    for y in y_ticks:
        parts.append(f'<line x1="{left:.1f}" x2="{width - right:.1f}" y1="{sy(y):.1f}" '
                     f'y2="{sy(y):.1f}" class="grid"/>')
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in values)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                     'stroke-width="2"/>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}">'
                  f'<title>{escape(name)}: {_format(y)} at {_format(x)}</title></circle>'
                  for x, y in values]
    parts.append("</g>")
    for y in y_ticks:
        parts.append(f'<text x="{left - 6:.1f}" y="{sy(y) + 4:.1f}" class="tick" '
                     f'text-anchor="end">{_format(y)}</text>')
    for x in x_ticks:
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 6 + TICK_SIZE}" '
                     f'class="tick" text-anchor="middle">{_format(x)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 6}" class="axis" '
                 f'text-anchor="middle">{escape(fit(x_label, AXIS_SIZE, width - 16))}</text>')
    parts.append(f'<text transform="translate({8 + AXIS_SIZE - 2} {(top + height - bottom) / 2})'
                 f' rotate(-90)" class="axis" text-anchor="middle">'
                 f'{escape(fit(y_label, AXIS_SIZE, height - top - bottom))}</text>')
    legend_x = width - right + 12
    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{legend_x:.1f}" y="{top + 4 + 16 * i}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{legend_x + 15:.1f}" y="{top + 13 + 16 * i}" '
                     f'class="legend">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(rows: Sequence[tuple[str, float]], title: str, width: int = 520,
              bar: int = 18, label_width: int = 330, colour: str = PALETTE[0]) -> str:
    """Horizontal bars, one row per (label, value), largest first as given. Labels longer than
    `label_width` are cut with an ellipsis (the full label is the tooltip)."""
    if not rows:
        return f'<p class="empty">{escape(title)}: no data</p>'
    title_parts, top = _title(title, width, 4)
    height = top + bar * len(rows) + 8
    peak = max(value for _, value in rows) or 1.0
    value_room = max(text_width(_format(value), TICK_SIZE) for _, value in rows) + 10
    labels = [fit(label, TICK_SIZE, label_width - 12) for label, _ in rows]
    label_width = min(label_width, int(max(text_width(s, TICK_SIZE) for s in labels)) + 14)
    span = width - label_width - value_room - 4
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>', *title_parts]
    for i, ((label, value), shown) in enumerate(zip(rows, labels, strict=True)):
        y = top + i * bar
        length = max(value / peak * span, 1.0)
        parts.append(f'<text x="{label_width - 6}" y="{y + bar * 0.7:.1f}" class="tick" '
                     f'text-anchor="end"><title>{escape(label)}</title>{escape(shown)}</text>'
                     f'<rect x="{label_width}" y="{y + 2}" width="{length:.1f}" '
                     f'height="{bar - 4}" fill="{colour}"/>'
                     f'<text x="{label_width + length + 4:.1f}" y="{y + bar * 0.7:.1f}" '
                     f'class="tick">{_format(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)
