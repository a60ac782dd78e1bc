"""The daily retention task (events_app/tasks.py): scheduled, and reading its period from the server settings."""

from __future__ import annotations

from django_q.models import Schedule

from events_app import tasks
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
