"""The audit trail cannot be wiped: a retention floor in the purge itself (events_app.services.events_purge),
in its daily task, and in the setting (redflag.models.ServerSettings.event_retention_days).

Ordinary events are kept at least 90 days; security events (component security) and the trail's record of
itself (events_purged, config_changed) at least 365 days, whatever retention the purge is given.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from agents_app.services.server_settings import server_settings_update
from events_app import tasks
from events_app.choices import EventType
from events_app.models import SystemEvent
from events_app.services import events_purge
from redflag.errors import InvalidRequest
from redflag.models import EVENT_RETENTION_FLOOR_DAYS, SECURITY_EVENT_RETENTION_FLOOR_DAYS, ServerSettings
from tests.server.events_app.helpers import NOW, bulk_events

# What each kind of event is, as bulk_events fields.
KINDS = {
    "ordinary": dict(event_type="agent_checkin", component="agent"),
    "security": dict(event_type="auth_failure", event_subtype="failed", component="security"),
    "config_changed": dict(event_type="config_changed", event_subtype="success", component="config"),
    "events_purged": dict(event_type="events_purged", event_subtype="success", component="scheduler"),
}
SECURITY_KINDS = ("security", "config_changed", "events_purged")
# Ages in days, on either side of both floors (an hour inside or past each one).
AGES = {"1d": timedelta(days=1),
        "89d": timedelta(days=EVENT_RETENTION_FLOOR_DAYS) - timedelta(hours=1),
        "91d": timedelta(days=EVENT_RETENTION_FLOOR_DAYS) + timedelta(hours=1),
        "364d": timedelta(days=SECURITY_EVENT_RETENTION_FLOOR_DAYS) - timedelta(hours=1),
        "366d": timedelta(days=SECURITY_EVENT_RETENTION_FLOOR_DAYS) + timedelta(hours=1)}


@pytest.fixture
def events_of_every_kind_and_age(db) -> dict[tuple[str, str], SystemEvent]:
    """One event per (kind, age), all built from NOW."""
    return {(kind, age): bulk_events(1, start=NOW - delta, message=f"{kind} {age}", **fields)[0]
            for kind, fields in KINDS.items() for age, delta in AGES.items()}


def surviving(events: dict[tuple[str, str], SystemEvent]) -> set[tuple[str, str]]:
    left = set(SystemEvent.objects.values_list("pk", flat=True))
    return {key for key, event in events.items() if event.pk in left}


# Below either floor, the floors decide: ordinary events go past 90 days, security events past 365.
FLOORS_ONLY = ({("ordinary", age) for age in ("1d", "89d")}
               | {(kind, age) for kind in SECURITY_KINDS for age in ("1d", "89d", "91d", "364d")})


@pytest.mark.parametrize("retention_days", [0, -30, 1, EVENT_RETENTION_FLOOR_DAYS - 1])
def test_no_retention_removes_an_event_younger_than_its_floor(events_of_every_kind_and_age, retention_days):
    removed = events_purge(now=NOW, retention_days=retention_days).removed
    assert surviving(events_of_every_kind_and_age) == FLOORS_ONLY
    assert removed == len(KINDS) * len(AGES) - len(FLOORS_ONLY)
    record = SystemEvent.objects.filter(event_type=EventType.EVENTS_PURGED).order_by("-seq").first()  # the newest
    assert record.metadata["retention_days"] == EVENT_RETENTION_FLOOR_DAYS  # what was applied, not what was asked


def test_an_ordinary_event_past_90_days_goes_at_retention_90(events_of_every_kind_and_age):
    events_purge(now=NOW, retention_days=90)
    left = surviving(events_of_every_kind_and_age)
    assert ("ordinary", "91d") not in left and ("ordinary", "89d") in left
    assert left == FLOORS_ONLY


def test_a_retention_above_the_floors_applies_to_every_kind(events_of_every_kind_and_age):
    events_purge(now=NOW, retention_days=400)
    assert surviving(events_of_every_kind_and_age) == set(events_of_every_kind_and_age)


def test_the_purge_record_survives_the_next_purge(db):
    events_purge(now=NOW, retention_days=0)
    record = SystemEvent.objects.get(event_type=EventType.EVENTS_PURGED)
    # Even a year (less an hour) later and asked to keep nothing, the next purge keeps the first one's record.
    events_purge(now=record.created_at + AGES["364d"], retention_days=0)
    assert SystemEvent.objects.filter(pk=record.pk).exists()
    assert SystemEvent.objects.filter(event_type=EventType.EVENTS_PURGED).count() == 2


def test_the_daily_task_applies_the_floor_to_a_setting_saved_below_it(events_of_every_kind_and_age, monkeypatch):
    """A row holding 0 (saved before the floor existed) purges no more than the floors allow."""
    ServerSettings.objects.update_or_create(pk=1, defaults={"event_retention_days": 0})
    ServerSettings.forget()
    monkeypatch.setattr(tasks.timezone, "now", lambda: NOW)
    tasks.purge_expired_events()
    assert surviving(events_of_every_kind_and_age) == FLOORS_ONLY


@pytest.mark.parametrize("days", [0, 1, EVENT_RETENTION_FLOOR_DAYS - 1])
def test_the_setting_refuses_less_than_the_floor(db, days):
    with pytest.raises(ValidationError, match="Events are kept at least 90 days"):
        ServerSettings(event_retention_days=days).full_clean()
    with pytest.raises(InvalidRequest, match="event_retention_days: Events are kept at least 90 days"):
        server_settings_update(changes={"event_retention_days": days}, actor="mallory")
    ServerSettings.forget()
    assert ServerSettings.current().event_retention_days == 365
    assert not SystemEvent.objects.filter(event_type=EventType.CONFIG_CHANGED).exists()


def test_a_retention_change_is_recorded_and_its_record_outlives_it(db):
    assert server_settings_update(changes={"event_retention_days": EVENT_RETENTION_FLOOR_DAYS},
                                  actor="alice") == ["event_retention_days"]
    change = SystemEvent.objects.get(event_type=EventType.CONFIG_CHANGED)
    assert (change.actor, change.metadata) == ("alice", {"event_retention_days": EVENT_RETENTION_FLOOR_DAYS})
    events_purge(now=change.created_at + AGES["364d"], retention_days=EVENT_RETENTION_FLOOR_DAYS)
    assert SystemEvent.objects.filter(pk=change.pk).exists()
