"""The daily retention task (events_app/tasks.py): scheduled, and reading its period from the server settings."""

from __future__ import annotations

from django_q.models import Schedule

from events_app import tasks
from events_app.services import PurgePace
from redflag.models import ServerSettings
from tests.server.events_app.helpers import NOW


def test_scheduled_task_uses_the_server_setting(aged_events, monkeypatch):
    settings_row = ServerSettings.current()
    settings_row.event_retention_days = 30
    settings_row.save()
    monkeypatch.setattr(tasks.timezone, "now", lambda: NOW)
    assert tasks.purge_expired_events() == 5 + 2  # with 30 days, the -182 d and -364 d rows go too


def test_daily_schedule_exists(db):
    schedule = Schedule.objects.get(func="events_app.tasks.purge_expired_events")
    assert schedule.schedule_type == Schedule.DAILY and schedule.repeats == -1


def test_a_purge_stopped_at_its_time_budget_continues_in_a_new_task(aged_events, monkeypatch):
    queued = []
    monkeypatch.setattr(tasks.timezone, "now", lambda: NOW)
    monkeypatch.setattr(tasks, "PURGE_PACE", PurgePace(batch_size=2, time_budget=0))
    monkeypatch.setattr(tasks, "async_task", lambda func, *args: queued.append(func))
    assert tasks.purge_expired_events() == 2
    assert queued == ["events_app.tasks.purge_expired_events"]


def test_a_complete_purge_queues_nothing(aged_events, monkeypatch):
    queued = []
    monkeypatch.setattr(tasks.timezone, "now", lambda: NOW)
    monkeypatch.setattr(tasks, "async_task", lambda func, *args: queued.append(func))
    assert tasks.purge_expired_events() == 5
    assert queued == []
