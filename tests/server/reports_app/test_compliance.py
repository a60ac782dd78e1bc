"""The compliance figures of the seeded history (conftest.py's table), checked by hand-picked cases."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from agents_app.choices import UpdateStatus
from reports_app.compliance import fleet_counts, overdue_machines, overdue_packages, report_figures, time_to_patch
from tests.server.reports_app.conftest import DAY, NOW, add_machines, machine, update

pytestmark = pytest.mark.django_db

WEEK = 7


def by_severity(counts) -> dict[str, tuple[int, float | None]]:
    return {row.severity: (row.compliant, row.percent) for row in counts.by_severity}


def test_one_machine_with_an_eight_day_old_critical_update_leaves_the_fleet_75_percent_compliant(history):
    counts = fleet_counts(now=NOW)
    assert (counts.machines, counts.online) == (4, 3)  # old-01 is revoked: not counted
    assert by_severity(counts) == {"critical": (3, 75.0), "important": (3, 75.0), "moderate": (4, 100.0),
                                   "low": (4, 100.0), "unknown": (4, 100.0)}
    assert (counts.compliant, counts.compliance_percent) == (2, 50.0)
    # Outstanding: web-01 1, web-02 2, db-01 2 (the ignored one is not outstanding); security: 4.
    assert (counts.outstanding_updates, counts.outstanding_security) == (5, 4)


def test_an_update_exactly_at_its_deadline_is_not_yet_overdue(db):
    agent = machine("edge-01")
    update(agent, "openssl", "critical", age=7 * DAY)
    assert by_severity(fleet_counts(now=NOW))["critical"] == (1, 100.0)
    assert by_severity(fleet_counts(now=NOW + 1 * DAY / 86400))["critical"] == (0, 0.0)  # one second later


def test_time_to_patch_counts_the_updates_resolved_within_the_period(history):
    rows = {row.severity: row for row in time_to_patch(group=None, since=NOW - WEEK * DAY, now=NOW)}
    assert (rows["critical"].patched, rows["critical"].median_days, rows["critical"].longest_days) == (1, 3.0, 3.0)
    # vim: 5 days; tar was closed 9 days ago, before this week.
    assert (rows["important"].patched, rows["important"].median_days) == (1, 5.0)
    assert (rows["moderate"].patched, rows["moderate"].median_days) == (0, None)
    # Over a fortnight tar's 1 day joins: median of 1 and 5 days.
    fortnight = {row.severity: row for row in time_to_patch(group=None, since=NOW - 14 * DAY, now=NOW)}
    assert (fortnight["important"].patched, fortnight["important"].median_days,
            fortnight["important"].mean_days) == (2, 3.0, 3.0)


def test_overdue_machines_and_packages_longest_waiting_first(history):
    assert [(row.hostname, row.severity, row.updates, row.oldest_days) for row in overdue_machines(group=None, now=NOW)
            ] == [("web-02", "important", 1, 15.0), ("web-01", "critical", 1, 8.0)]
    # web-02's openssl (6 days) is not overdue, so openssl waits on one machine only; old-01 is revoked.
    assert [(row.name, row.severity, row.machines) for row in overdue_packages(group=None, now=NOW)] == [
        ("curl", "important", 1), ("openssl", "critical", 1)]


def test_a_group_scopes_every_figure(history):
    web = history["web"]
    counts = fleet_counts(group=web, now=NOW)
    assert (counts.machines, counts.online, counts.compliant, counts.compliance_percent) == (2, 2, 0, 0.0)
    assert by_severity(counts)["critical"] == (1, 50.0)
    assert (counts.outstanding_updates, counts.outstanding_security) == (3, 3)
    assert {row.severity: row.patched for row in time_to_patch(group=web, since=NOW - WEEK * DAY, now=NOW)
            }["critical"] == 0  # bash was patched on db-02, outside the group
    assert {row.hostname for row in overdue_machines(group=web, now=NOW)} == {"web-01", "web-02"}


def test_an_empty_scope_has_no_compliance_figure_rather_than_100_percent(db):
    counts = fleet_counts(now=NOW)
    assert (counts.machines, counts.compliance_percent) == (0, None)
    assert all(row.percent is None for row in counts.by_severity)


@override_settings(REDFLAG_PATCH_DEADLINES_DAYS={"critical": 10, "important": 14, "moderate": 30, "low": 90,
                                                 "unknown": 30})
def test_the_deadlines_come_from_the_settings(history):
    counts = fleet_counts(now=NOW)
    assert by_severity(counts)["critical"] == (4, 100.0)  # web-01's 8 days are within a 10-day deadline
    assert [row.deadline_days for row in counts.by_severity] == [10, 14, 30, 90, 30]


def test_a_reopened_or_failed_update_still_counts_as_outstanding(db):
    agent = machine("web-09")
    update(agent, "openssl", "critical", age=9 * DAY, status=UpdateStatus.FAILED)
    assert by_severity(fleet_counts(now=NOW))["critical"] == (0, 0.0)


def queries_of(function) -> int:
    with CaptureQueriesContext(connection) as captured:
        function()
    return len(captured)


def test_the_query_count_does_not_grow_with_the_fleet(history):
    def figures():
        report_figures(period_days=WEEK, now=NOW)
        report_figures(group=history["web"], period_days=WEEK, now=NOW)

    figures()  # warms ServerSettings' per-process cache, as any earlier request would
    small = queries_of(figures)
    add_machines(40)
    assert queries_of(figures) == small == 12  # six per scope: two counts, time to patch, the trend, two lists
    assert report_figures(period_days=WEEK, now=NOW).counts.machines == 44
