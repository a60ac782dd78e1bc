"""Retention: the daily job deletes events older than the configured period, in batches, and says so."""

from __future__ import annotations

from datetime import timedelta

import pytest

from events_app import tasks
from events_app.choices import EventType
from events_app.models import SystemEvent
from events_app.services import events_purge
from tests.server.test_audit_helpers import NOW, bulk_events


@pytest.fixture
def aged_events(db):
    """Five rows past a 365-day retention, three inside it (the newest exactly at NOW)."""
    expired = bulk_events(5, start=NOW - timedelta(days=366), step=timedelta(days=10), message="old")
    kept = bulk_events(3, start=NOW, step=timedelta(days=182), message="recent")  # NOW, -182 d, -364 d
    return expired, kept


def test_purge_deletes_only_expired_rows_in_batches_and_records_one_event(aged_events):
    expired, kept = aged_events
    removed = events_purge(now=NOW, retention_days=365, batch_size=2)
    assert removed == 5
    remaining = set(SystemEvent.objects.exclude(event_type=EventType.EVENTS_PURGED).values_list("pk", flat=True))
    assert remaining == {e.pk for e in kept}
    record = SystemEvent.objects.get(event_type=EventType.EVENTS_PURGED)
    assert record.metadata == {
        "removed": 5, "retention_days": 365, "cutoff": (NOW - timedelta(days=365)).isoformat(),
        "oldest_removed": (NOW - timedelta(days=366 + 40)).isoformat(),
    }
    assert record.actor == "system"


def test_a_second_run_removes_nothing_more(aged_events):
    events_purge(now=NOW, retention_days=365)
    assert events_purge(now=NOW, retention_days=365) == 0
    assert SystemEvent.objects.filter(event_type=EventType.EVENTS_PURGED).count() == 2


def test_batches_are_bounded_queries(aged_events, django_assert_num_queries):
    # oldest lookup + 3 batches of (select ids, delete) + a short final batch ends it + the record.
    with django_assert_num_queries(1 + 3 * 2 + 1):
        events_purge(now=NOW, retention_days=365, batch_size=2)


def test_scheduled_task_uses_the_server_setting(aged_events, monkeypatch):
    from redflag.models import ServerSettings

    settings_row = ServerSettings.current()
    settings_row.event_retention_days = 30
    settings_row.save()
    monkeypatch.setattr(tasks.timezone, "now", lambda: NOW)
    assert tasks.purge_expired_events() == 5 + 2  # with 30 days, the -182 d and -364 d rows go too


def test_daily_schedule_exists(db):
    from django_q.models import Schedule

    schedule = Schedule.objects.get(func="events_app.tasks.purge_expired_events")
    assert schedule.schedule_type == Schedule.DAILY and schedule.repeats == -1


def test_rows_cannot_be_deleted_one_by_one(aged_events):
    from events_app.models import AppendOnlyError

    with pytest.raises(AppendOnlyError):
        aged_events[0][0].delete()
