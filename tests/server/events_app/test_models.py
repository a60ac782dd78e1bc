"""SystemEvent (events_app/models.py): append-only rows that outlive what they concern, indexed for metadata."""

from __future__ import annotations

import pytest
from django.db import connection

from agents_app.models import Agent
from events_app.models import AppendOnlyError, SystemEvent
from tests.server.events_app.helpers import make_event


def test_saving_an_existing_event_raises(db):
    event = make_event()
    event.message = "rewritten history"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    assert SystemEvent.objects.get().message == "started"


def test_history_survives_agent_deletion(agent):
    event = SystemEvent.objects.filter(agent_id=agent.id).first()
    Agent.objects.filter(pk=agent.id).delete()
    event = SystemEvent.objects.get(pk=event.pk)
    assert event.agent_id is None and event.hostname == "web-01"


@pytest.mark.postgres_only
def test_metadata_gin_index_exists_on_postgresql(db):
    if connection.vendor != "postgresql":
        pytest.skip("the GIN index exists on PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'event_metadata_gin'")
        (definition,) = cursor.fetchone()
    assert "gin" in definition.lower() and "metadata" in definition


def test_rows_cannot_be_deleted_one_by_one(aged_events):
    with pytest.raises(AppendOnlyError):
        aged_events[0][0].delete()
