"""Small inline SVG charts for admin pages: bars over time and lines per series.

Server-side SVG needs no JavaScript library and no network, prints, and reads in every browser;
the numbers stay available as each mark's tooltip (``<title>``) for people who want the figure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

__all__ = ["bar_chart", "line_chart"]

WIDTH, HEIGHT = 1200, 220
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 16, 36
COLORS = ["#417690", "#c0392b", "#27ae60", "#8e44ad", "#d35400", "#2c3e50"]

Number = int | float | Decimal


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1.0
    step = 10 ** (len(str(int(top))) - 1)
    for factor in (1, 2, 2.5, 5, 10):
        if top <= step * factor:
            return float(step * factor)
    return float(step * 10)


def _axis(maximum: float, unit: str) -> list[str]:
    parts = []
    for i in range(5):
        value = maximum * i / 4
        y = TOP + (HEIGHT - TOP - BOTTOM) * (1 - i / 4)
        label = f"{value:,.0f}" if maximum >= 10 else f"{value:,.1f}"
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#ddd" stroke-width="1"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#666">{escape(label)}{escape(unit)}</text>'
        )
    return parts


def _svg(body: list[str], title: str) -> SafeString:
    return mark_safe(  # every piece of text in body went through escape()
        f'<svg class="keel-chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
        'style="max-width:1200px;font-family:sans-serif">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def bar_chart(
    points: Sequence[tuple[dt.datetime, Number]],
    *,
    title: str,
    unit: str = "",
    label: str = "%d %b %H:00",
    tip: str = "%Y-%m-%d %H:00 UTC",
) -> SafeString:
    """One bar per point (oldest left), labelled every few bars with the time as ``label``
    (a strftime format; ``tip`` is the tooltip's)."""
    if not points:
        return _svg(
            [
                f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#666">'
                "nothing to show yet</text>"
            ],
            title,
        )
    maximum = _nice(max(float(v) for _, v in points))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    slot = plot_w / len(points)
    body = _axis(maximum, unit)
    every = max(1, len(points) // 12)
    for i, (moment, value) in enumerate(points):
        h = plot_h * float(value) / maximum
        x = LEFT + i * slot + slot * 0.1
        y = TOP + plot_h - h
        shown = f"{moment.strftime(tip)}: {value}{unit}"
        body.append(
            f'<rect class="keel-bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{h:.1f}" fill="{COLORS[0]}"><title>{escape(shown)}</title></rect>'
        )
        if i % every == 0:
            body.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{HEIGHT - BOTTOM + 16}" font-size="11" '
                f'text-anchor="middle" fill="#666">{escape(moment.strftime(label))}</text>'
            )
    return _svg(body, title)


def line_chart(
    series: Mapping[str, Sequence[tuple[dt.datetime, Number]]], *, title: str, unit: str = ""
) -> SafeString:
    """One line per series over a shared time axis, with a legend."""
    points = [p for values in series.values() for p in values]
    if not points:
        return _svg(
            [
                f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#666">'
                "no samples yet: a running worker records one every few seconds</text>"
            ],
            title,
        )
    start = min(t for t, _ in points)
    end = max(t for t, _ in points)
    span = max((end - start).total_seconds(), 1.0)
    maximum = _nice(max(float(v) for _, v in points))
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    body = _axis(maximum, unit)
    for k, (name, values) in enumerate(sorted(series.items())):
        color = COLORS[k % len(COLORS)]
        coords = " ".join(
            f"{LEFT + plot_w * (t - start).total_seconds() / span:.1f},"
            f"{TOP + plot_h * (1 - float(v) / maximum):.1f}"
            for t, v in sorted(values)
        )
        body.append(
            f'<polyline class="keel-line" points="{coords}" fill="none" stroke="{color}" '
            f'stroke-width="2"><title>{escape(name)}</title></polyline>'
        )
        body.append(
            f'<text x="{LEFT + 10 + k * 160}" y="{HEIGHT - 6}" font-size="12" '
            f'fill="{color}">■ {escape(name)}</text>'
        )
    for moment, anchor in ((start, "start"), (end, "end")):
        x = LEFT if anchor == "start" else WIDTH - RIGHT
        body.append(
            f'<text x="{x}" y="{HEIGHT - BOTTOM + 16}" font-size="11" text-anchor="{anchor}" '
            f'fill="#666">{escape(f"{moment:%H:%M:%S}")} UTC</text>'
        )
    return _svg(body, title)
