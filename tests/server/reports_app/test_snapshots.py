"""The daily fleet snapshot: one row per day and scope, refreshed by later runs the same day."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from reports_app.models import FleetSnapshot
from reports_app.services import snapshot_take
from reports_app.tasks import take_snapshots
from tests.server.reports_app.conftest import DAY, NOW, machine, update

pytestmark = pytest.mark.django_db


def test_a_snapshot_keeps_the_fleets_and_each_groups_numbers(history):
    fleet, web = snapshot_take(now=NOW)
    assert (fleet.day.isoformat(), fleet.group, fleet.machines, fleet.online, fleet.outstanding_updates,
            fleet.outstanding_security, fleet.compliant_machines, fleet.compliance_percent) == (
        "2026-12-01", None, 4, 3, 5, 4, 2, 50.0)
    assert fleet.by_severity == {"critical": 75.0, "important": 75.0, "moderate": 100.0, "low": 100.0,
                                 "unknown": 100.0}
    assert (web.group, web.machines, web.compliance_percent) == (history["web"], 2, 0.0)


def test_a_second_run_the_same_day_refreshes_the_days_row(history):
    snapshot_take(now=NOW)
    update(history["db-01"], "sudo-ng", "critical", age=8 * DAY)  # db-01 falls behind later that day
    snapshot_take(now=NOW + 3600 * (DAY / 86400))
    assert FleetSnapshot.objects.count() == 2  # the fleet and the one group, still one row each
    fleet = FleetSnapshot.objects.fleet().get()
    assert (fleet.compliant_machines, fleet.compliance_percent, fleet.taken_at) == (1, 25.0, NOW + DAY / 24)
    snapshot_take(now=NOW + DAY)
    assert list(FleetSnapshot.objects.fleet().values_list("day", flat=True).order_by("day")) == [
        NOW.date(), (NOW + DAY).date()]


def test_the_database_refuses_a_second_row_for_a_day(db):
    machine("web-01")
    snapshot_take(now=NOW)
    fleet = FleetSnapshot.objects.fleet().get()
    with pytest.raises(IntegrityError), transaction.atomic():
        FleetSnapshot.objects.create(day=fleet.day, machines=0, online=0, outstanding_updates=0,
                                     outstanding_security=0, compliant_machines=0)


def test_the_scheduled_task_takes_todays_snapshot(history):
    assert take_snapshots() == 2
    assert FleetSnapshot.objects.fleet().get().machines == 4
