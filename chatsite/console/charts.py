"""Charts drawn on the server as SVG: nothing to vendor, nothing run in the browser, and the
Content Security Policy stays strict. Colours come from the stylesheet (classes), so both
themes apply."""
from __future__ import annotations

import math

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 180
LEFT, BOTTOM, TOP = 48, 22, 8


def _nice_top(value: float) -> float:
    """The axis's top: 1, 2 or 5 times a power of ten, at least `value` (which may be tiny:
    a cost of a few thousandths of a dollar)."""
    if value <= 0:
        return 1
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude * (1 + 1e-9):
            return step * magnitude
    return 10 * magnitude


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


def stacked_bars(*, labels: list[str], series: dict[str, list[float]], title: str, unit: str) -> SafeString:
    """Stacked bars, one per label, a layer per series (the series' name is its CSS class)."""
    count = len(labels)
    totals = [sum(values[i] for values in series.values()) for i in range(count)]
    top = _nice_top(max(totals, default=0))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    bar_w = plot_w / max(count, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 4}" y2="{TOP + plot_h}"/>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + 8}" text-anchor="end">{_number(top)}</text>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
        f'<text class="tick" x="{LEFT - 6}" y="{TOP + plot_h / 2 + 4}" text-anchor="end">{escape(unit)}</text>',
    ]
    for i, label in enumerate(labels):
        x = LEFT + i * bar_w
        y = TOP + plot_h
        for name, values in series.items():
            height = values[i] / top * plot_h
            if height <= 0:
                continue
            y -= height
            parts.append(
                f'<rect class="{escape(name)}" x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                f'height="{height:.1f}"><title>{escape(label)}: {escape(name)} {values[i]:g}</title></rect>'
            )
    for i in sorted({0, count // 2, count - 1} if count else set()):
        x = LEFT + (i + 0.5) * bar_w
        anchor = "start" if i == 0 else "end" if i == count - 1 else "middle"
        parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">{escape(labels[i])}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every text above is escaped
