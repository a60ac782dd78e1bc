"""The dashboard's trend charts: server-drawn SVG, accessible, escaped, one query whatever the history."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest
from django.utils.html import escape

from reports_app.charts import Series, line_chart, nice_ceiling
from reports_app.models import FleetSnapshot
from reports_app.trends import dashboard_trends
from tests.server.reports_app.conftest import NOW

TODAY = NOW.date()
FIRST = date(2026, 11, 28)


def chart(values, label="Compliant", **options):
    days = [FIRST + timedelta(days=offset) for offset in range(len(values))]
    return str(line_chart(chart_id="c", title="Compliance", days=days, series=[Series(label, "#2e7d32", values)],
                          **options))


def test_a_chart_says_what_it_shows_to_screen_readers_and_in_a_table():
    svg = chart([60.0, None, 70.0, 75.0], unit="%", y_max=100)
    assert '<svg viewBox="0 0 640 220" width="100%" role="img" aria-labelledby="c-title c-desc"' in svg
    assert '<title id="c-title">Compliance</title>' in svg
    assert '<desc id="c-desc">Compliance, 28 Nov 2026 to 01 Dec 2026: Compliant from 60 % to 75 %.</desc>' in svg
    assert "<title>2026-11-30: Compliant 70 %</title>" in svg  # each point's tooltip
    rows = re.findall(r'<tr><th scope="row">([-0-9]+)</th><td>([^<]+)</td></tr>', svg)
    assert rows == [("2026-11-28", "60 %"), ("2026-11-30", "70 %"), ("2026-12-01", "75 %")]  # days with data


def test_a_missing_day_breaks_the_line_instead_of_bridging_it():
    svg = chart([60.0, None, 70.0, 75.0], y_max=100)
    polylines = re.findall(r'<polyline [^>]*points="([^"]+)"', svg)
    assert len(polylines) == 1 and len(polylines[0].split()) == 2  # 30 Nov → 1 Dec only; 28 Nov stands alone
    assert svg.count("<circle") == 3


def test_labels_are_escaped():
    svg = chart([1.0], label='<script>alert("x")</script>')
    assert "<script>" not in svg and escape('<script>alert("x")</script>') in svg


def test_the_y_axis_ends_on_a_round_number():
    assert [nice_ceiling(value) for value in (0, 1, 3, 7, 12, 480, 1000)] == [1, 1, 5, 10, 20, 500, 1000]


@pytest.mark.django_db
def test_the_dashboard_reads_the_fleet_snapshots_in_one_query(django_assert_num_queries):
    for offset in range(60):
        FleetSnapshot.objects.create(day=TODAY - timedelta(days=offset), machines=10, online=8 - offset % 3,
                                     outstanding_updates=20, outstanding_security=offset, compliant_machines=9,
                                     compliance_percent=90.0 - offset / 2)
    with django_assert_num_queries(1):
        month = dashboard_trends(days=30, today=TODAY)
    with django_assert_num_queries(1):
        quarter = dashboard_trends(days=90, today=TODAY)
    assert (month["snapshots"], quarter["snapshots"]) == (30, 60)
    assert [str(chart).count("<circle") for chart in month["charts"]] == [30, 30, 60]  # machines: online and total
    assert "Compliant from 75.5 % to 90 %" in str(month["charts"][0])
    assert "Security updates from 59 to 0" in str(quarter["charts"][1])


@pytest.mark.django_db
def test_no_snapshot_yet_means_no_chart():
    assert dashboard_trends(days=30, today=TODAY)["charts"] == []
