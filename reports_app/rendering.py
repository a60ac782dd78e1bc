"""A report's figures as CSV (one tidy table) and as PDF (reportlab)."""

from __future__ import annotations

import io
from datetime import date, datetime, timedelta
from typing import Any
from xml.sax.saxutils import escape

from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from agents_app.choices import PackageType
from events_app.rendering import records_csv_lines
from reports_app.compliance import Figures

# Every CSV row has the same five columns, so a spreadsheet can filter and pivot the whole file.
CSV_COLUMNS = ("section", "subject", "severity", "measure", "value")
# The PDF lists this many overdue machines and packages (the CSV lists them all).
PDF_LIST_LIMIT = 100
NO_VALUE = "—"
# A table cell longer than this (a 255-character hostname) is cut in the PDF, which does not wrap plain cells;
# the CSV keeps every name whole.
PDF_CELL_CHARS = 60


def _number(value: Any) -> str:
    return NO_VALUE if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _package(name: str, package_type: str) -> str:
    return f"{name} ({PackageType(package_type).label if package_type in PackageType.values else package_type})"


def csv_records(figures: Figures) -> list[dict[str, Any]]:
    counts = figures.counts
    records = [
        {"section": "summary", "subject": figures.scope, "severity": "", "measure": measure, "value": value}
        for measure, value in (
            ("period start", figures.period_start.isoformat()),
            ("generated at", figures.generated_at.isoformat()),
            ("machines", counts.machines),
            ("machines online", counts.online),
            ("outstanding updates", counts.outstanding_updates),
            ("outstanding security updates", counts.outstanding_security),
            ("compliant machines", counts.compliant),
            ("compliance percent", counts.compliance_percent),
        )
    ]
    for row in counts.by_severity:
        records += [
            {"section": "compliance", "subject": figures.scope, "severity": row.severity, "measure": measure,
             "value": value}
            for measure, value in (("deadline days", row.deadline_days), ("compliant machines", row.compliant),
                                   ("compliance percent", row.percent))
        ]
    for row in figures.time_to_patch:
        records += [
            {"section": "time to patch", "subject": figures.scope, "severity": row.severity, "measure": measure,
             "value": value}
            for measure, value in (("patched updates", row.patched), ("median days", row.median_days),
                                   ("mean days", row.mean_days), ("longest days", row.longest_days))
        ]
    for point in figures.trend:
        records += [
            {"section": "trend", "subject": point.day, "severity": "", "measure": measure, "value": value}
            for measure, value in (("compliance percent", point.compliance_percent),
                                   ("outstanding security updates", point.outstanding_security),
                                   ("machines online", point.online), ("machines", point.machines))
        ]
    for machine in figures.overdue_machines:
        records += [
            {"section": "overdue machine", "subject": machine.hostname, "severity": machine.severity,
             "measure": "overdue updates", "value": machine.updates},
            {"section": "overdue machine", "subject": machine.hostname, "severity": machine.severity,
             "measure": "oldest days", "value": machine.oldest_days},
        ]
    for package in figures.overdue_packages:
        subject = _package(package.name, package.package_type)
        records += [
            {"section": "overdue package", "subject": subject, "severity": package.severity,
             "measure": "machines", "value": package.machines},
            {"section": "overdue package", "subject": subject, "severity": package.severity,
             "measure": "oldest days", "value": package.oldest_days},
        ]
    return records


def render_csv(figures: Figures) -> bytes:
    """UTF-8 CSV; hostnames and package names are the agents' words, kept from spreadsheet formulas."""
    return "".join(records_csv_lines(csv_records(figures), CSV_COLUMNS)).encode()


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _cut(text: str) -> str:
    return text if len(text) <= PDF_CELL_CHARS else text[:PDF_CELL_CHARS - 1] + "…"


def _table(header: list[str], rows: list[list[str]]) -> Table:
    # Table cells are plain strings, never Paragraph markup: a hostname such as "<b>" stays text.
    table = Table([header, *([_cut(cell) for cell in row] for row in rows)], repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle([
        ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
        ("FONTSIZE", (0, 0), (-1, -1), 9),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eaed")),
        ("GRID", (0, 0), (-1, -1), 0.25, colors.HexColor("#b0b4ba")),
        ("ALIGN", (1, 1), (-1, -1), "RIGHT"),
    ]))
    return table


def render_pdf(figures: Figures) -> bytes:
    styles = getSampleStyleSheet()
    counts = figures.counts
    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm,
                                 title=f"RedFlag compliance report: {figures.scope}", author="RedFlag")

    def heading(text: str):
        return Paragraph(escape(text), styles["Heading2"])

    story = [
        Paragraph(escape(f"RedFlag compliance report: {figures.scope}"), styles["Title"]),
        Paragraph(escape(f"Period {_when(figures.period_start)} to {_when(figures.generated_at)}"), styles["Normal"]),
        Spacer(1, 6 * mm),
        heading("Summary"),
        _table(["Measure", "Value"], [
            ["Machines", _number(counts.machines)],
            ["Machines online", _number(counts.online)],
            ["Outstanding updates", _number(counts.outstanding_updates)],
            ["Outstanding security updates", _number(counts.outstanding_security)],
            ["Compliant machines", _number(counts.compliant)],
            ["Compliance", f"{_number(counts.compliance_percent)} %"],
        ]),
        heading("Compliance by severity"),
        _table(["Severity", "Deadline (days)", "Compliant machines", "Compliance"], [
            [row.severity, _number(row.deadline_days), f"{row.compliant} of {row.machines}",
             f"{_number(row.percent)} %"] for row in counts.by_severity
        ]),
        heading("Time to patch (security updates resolved in the period)"),
        _table(["Severity", "Patched", "Median days", "Mean days", "Longest days"], [
            [row.severity, _number(row.patched), _number(row.median_days), _number(row.mean_days),
             _number(row.longest_days)] for row in figures.time_to_patch
        ]),
        heading("Compliance over the period"),
        *_trend(figures, styles),
        heading("Overdue machines"),
    ]
    story += _limited(["Machine", "Severity", "Overdue updates", "Oldest (days)"],
                      [[machine.hostname, machine.severity, _number(machine.updates), _number(machine.oldest_days)]
                       for machine in figures.overdue_machines], styles, "No machine has an overdue security update.")
    story.append(heading("Overdue packages"))
    story += _limited(["Package", "Severity", "Machines", "Oldest (days)"],
                      [[_package(package.name, package.package_type), package.severity, _number(package.machines),
                        _number(package.oldest_days)] for package in figures.overdue_packages],
                      styles, "No overdue security package.")
    document.build(story)
    return buffer.getvalue()


def _trend(figures: Figures, styles) -> list:
    """A line of the daily compliance (one line per run of consecutive days: a missing day is a gap) and a
    sentence with its first and last values."""
    known = [point for point in figures.trend if point.compliance_percent is not None]
    if not known:
        return [Paragraph("No daily snapshot in this period.", styles["Normal"])]
    first_day = date.fromisoformat(figures.trend[0].day)
    runs, run, previous = [], [], None
    for point in known:
        offset = (date.fromisoformat(point.day) - first_day).days
        if previous is not None and offset != previous + 1:
            runs.append(run)
            run = []
        run.append((offset, point.compliance_percent))
        previous = offset
    runs.append(run)
    span = max((date.fromisoformat(figures.trend[-1].day) - first_day).days, 1)
    drawing = Drawing(170 * mm, 55 * mm)
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 12 * mm, 8 * mm, 150 * mm, 42 * mm
    plot.data = runs
    plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = 0, span
    plot.xValueAxis.valueSteps = sorted({0, span // 2, span})
    plot.xValueAxis.labelTextFormat = lambda offset: (first_day + timedelta(days=int(offset))).strftime("%d %b")
    plot.yValueAxis.valueMin, plot.yValueAxis.valueMax, plot.yValueAxis.valueStep = 0, 100, 25
    plot.yValueAxis.labelTextFormat = "%d %%"
    for index in range(len(runs)):
        plot.lines[index].strokeColor = colors.HexColor("#2e7d32")
        plot.lines[index].symbol = makeMarker("FilledCircle", size=3)
    drawing.add(plot)
    sentence = (f"Compliance went from {_number(known[0].compliance_percent)} % on {known[0].day} to "
                f"{_number(known[-1].compliance_percent)} % on {known[-1].day} ({len(known)} daily snapshots).")
    return [drawing, Paragraph(escape(sentence), styles["Normal"])]


def _limited(header: list[str], rows: list[list[str]], styles, empty: str) -> list:
    if not rows:
        return [Paragraph(escape(empty), styles["Normal"])]
    flowables = [_table(header, rows[:PDF_LIST_LIMIT])]
    if len(rows) > PDF_LIST_LIMIT:
        flowables.append(Paragraph(escape(f"… and {len(rows) - PDF_LIST_LIMIT} more rows in the CSV."),
                                   styles["Normal"]))
    return flowables
