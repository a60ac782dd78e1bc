"""The event write paths (events_app/services.py): record_event in the caller's transaction and in insertion order,
the retention purge (in batches, recorded once), audit API tokens stored hashed.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import transaction

from events_app.choices import Component, EventSubtype, EventType
from events_app.models import AuditApiToken, SystemEvent
from events_app.services import EventOutsideTransaction, events_purge, record_event
from tests.server.events_app.helpers import NOW, make_event


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


def test_event_rolls_back_with_the_change_it_records(db):
    with pytest.raises(RuntimeError), transaction.atomic():
        make_event()
        raise RuntimeError("the change failed")
    assert not SystemEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_event_outside_a_transaction_is_refused_unless_it_stands_alone():
    """An event that records a change must commit with it; one that records no change says so."""
    with pytest.raises(EventOutsideTransaction, match="config_changed event outside a transaction"):
        record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                     message="a change recorded after the fact")
    assert not SystemEvent.objects.exists()
    with transaction.atomic():
        record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                     message="in the change's transaction")
    record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO, component=Component.SERVER,
                 message="started", standalone=True)
    assert list(SystemEvent.objects.order_by("seq").values_list("message", flat=True)) == [
        "in the change's transaction", "started"]


def test_record_event_numbers_rows_in_insertion_order(db):
    first = record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO,
                         component=Component.SERVER, message="one")
    second = record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO,
                          component=Component.SERVER, message="two")
    assert first.seq is not None and second.seq == first.seq + 1
    assert [e.message for e in SystemEvent.objects.after_seq(first.seq - 1)] == ["one", "two"]


def test_only_the_hash_is_stored_and_issue_is_audited(auditor_token):
    token, secret = auditor_token
    stored = AuditApiToken.objects.get(pk=token.pk)
    assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(AuditApiToken.objects.values().get(pk=token.pk))
    event = SystemEvent.objects.get(event_type=EventType.TOKEN_CREATED)
    assert secret not in event.message + str(event.metadata)
    assert event.metadata["audit_token_id"] == str(token.pk)
