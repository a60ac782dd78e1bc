"""Line charts over days as inline SVG, drawn on the server: no JavaScript, nothing from a CDN.

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` (first and last value of each
line, for screen readers), a tooltip ``<title>`` on every point, and the same numbers in a table under a
``<details>`` element. Everything is built with format_html: labels are escaped like any other text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 16, 12, 30
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    values: list[float | None]  # one per day of the chart; None where no snapshot was taken


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}".strip() if unit else text


def nice_ceiling(value: float) -> float:
    """The y axis' top: 1, 2 or 5 times a power of ten at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def _segments(values: list[float | None]) -> list[list[int]]:
    """Runs of consecutive days with a value: a missing day breaks the line rather than bridging it."""
    runs, current = [], []
    for index, value in enumerate(values):
        if value is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(index)
    if current:
        runs.append(current)
    return runs


def describe(title: str, days: list[date], series: list[Series], unit: str) -> str:
    parts = []
    for line in series:
        known = [value for value in line.values if value is not None]
        parts.append(f"{line.label} from {_figure(known[0], unit)} to {_figure(known[-1], unit)}" if known
                     else f"{line.label}: no data")
    return f"{title}, {days[0]:%d %b %Y} to {days[-1]:%d %b %Y}: " + "; ".join(parts) + "."


def line_chart(*, chart_id: str, title: str, days: list[date], series: list[Series], unit: str = "",
               y_max: float | None = None) -> SafeString:
    """One chart: ``days`` along x (oldest first), each series a line; y from 0 to ``y_max`` (or the data's
    nice ceiling)."""
    top = y_max if y_max is not None else nice_ceiling(max(
        (value for line in series for value in line.values if value is not None), default=0))
    step = PLOT_WIDTH / (len(days) - 1) if len(days) > 1 else 0

    def x(index: int) -> float:
        return round(LEFT + index * step if step else LEFT + PLOT_WIDTH / 2, 1)

    def y(value: float) -> float:
        return round(TOP + PLOT_HEIGHT * (1 - min(value, top) / top), 1)

    grid = format_html_join("", '<line class="rf-grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                                '<text class="rf-axis" x="{}" y="{}" text-anchor="end">{}</text>',
                            ((LEFT, WIDTH - RIGHT, y(value), y(value), LEFT - 6, y(value) + 4, _figure(value, unit))
                             for value in (0, top / 2, top)))
    ticks = sorted({0, len(days) // 2, len(days) - 1})

    def anchor(index: int) -> str:  # the first and last labels stay inside the drawing
        return "start" if index == 0 and len(days) > 1 else "end" if index == len(days) - 1 > 0 else "middle"

    x_labels = format_html_join("", '<text class="rf-axis" x="{}" y="{}" text-anchor="{}">{}</text>',
                                ((x(index), HEIGHT - 8, anchor(index), days[index].strftime("%d %b"))
                                 for index in ticks))
    lines = format_html_join("", "{}", ((_series_svg(line, days, unit, x, y),) for line in series))
    return format_html(
        '<figure class="rf-trend" id="{id}">'
        '<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-labelledby="{id}-title {id}-desc" '
        'preserveAspectRatio="xMidYMid meet">'
        '<title id="{id}-title">{title}</title><desc id="{id}-desc">{desc}</desc>{grid}{x_labels}{lines}</svg>'
        '<figcaption>{legend}</figcaption>{table}</figure>',
        id=chart_id, w=WIDTH, h=HEIGHT, title=title, desc=describe(title, days, series, unit), grid=grid,
        x_labels=x_labels, lines=lines, legend=_legend(series), table=_numbers_table(title, days, series, unit),
    )


def _series_svg(line: Series, days: list[date], unit: str, x, y) -> SafeString:
    polylines = format_html_join(
        "", '<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>',
        ((line.colour, " ".join(f"{x(index)},{y(line.values[index])}" for index in run))
         for run in _segments(line.values) if len(run) > 1))
    points = format_html_join(
        "", '<circle cx="{}" cy="{}" r="3" fill="{}"><title>{}: {} {}</title></circle>',
        ((x(index), y(value), line.colour, days[index].isoformat(), line.label, _figure(value, unit))
         for index, value in enumerate(line.values) if value is not None))
    return format_html('<g class="rf-series" data-series="{}">{}{}</g>', line.label, polylines, points)


def _legend(series: list[Series]) -> SafeString:
    return format_html_join(" ", '<span class="rf-key"><span class="rf-swatch" style="background:{}"></span>{}</span>',
                            ((line.colour, line.label) for line in series))


def _numbers_table(title: str, days: list[date], series: list[Series], unit: str) -> SafeString:
    header = format_html_join("", '<th scope="col">{}</th>', ((line.label,) for line in series))
    rows = format_html_join(
        "", '<tr><th scope="row">{}</th>{}</tr>',
        ((day.isoformat(), format_html_join("", "<td>{}</td>", ((_figure(line.values[index], unit),)
                                                                 for line in series)))
         for index, day in enumerate(days) if any(line.values[index] is not None for line in series)))
    return format_html('<details class="rf-numbers"><summary>Numbers</summary>'
                       '<table><caption>{}</caption><thead><tr><th scope="col">Day</th>{}</tr></thead>'
                       '<tbody>{}</tbody></table></details>', title, header, rows)
