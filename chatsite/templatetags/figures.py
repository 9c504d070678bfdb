"""Numbers as people read them: units, and rounding that keeps two or three significant digits."""
from __future__ import annotations

from django import template

register = template.Library()
DASH = "–"


@register.filter
def usd(value) -> str:
    if value is None:
        return DASH
    value = float(value)
    if value == 0:
        return "$0"
    if abs(value) >= 1000:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.2g}" if abs(value) >= 0.01 else f"{value * 100:.2g} ¢"


@register.filter
def seconds(value) -> str:
    if value is None:
        return DASH
    value = float(value)
    if value < 1:
        return f"{value * 1000:.3g} ms"
    if value < 120:
        return f"{value:.3g} s"
    if value < 7200:
        return f"{value / 60:.3g} min"
    return f"{value / 3600:.3g} h"


@register.filter
def count(value) -> str:
    if value is None:
        return DASH
    value = float(value)
    for limit, suffix in ((1e9, " bn"), (1e6, " M")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:,.0f}" if value == int(value) or abs(value) >= 100 else f"{value:.3g}"


@register.filter
def share(value) -> str:
    if value is None:
        return DASH
    return f"{float(value) * 100:.1f} %"


@register.filter
def p(figures, arg: str):
    """`figures|p:"ttft,0.95"`: that percentile of a billing.usage_report.Figures."""
    metric, q = arg.split(",")
    return figures.p(metric, float(q))
