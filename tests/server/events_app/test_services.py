"""The event write paths (events_app/services.py): record_event in the caller's transaction and in insertion order,
the retention purge (in batches, recorded once), audit API tokens stored hashed.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from events_app.choices import Component, EventSubtype, EventType
from events_app.models import AuditApiToken, SystemEvent
from events_app.services import EventOutsideTransaction, PurgePace, events_purge, record_event
from tests.server.events_app.helpers import NOW, bulk_events, make_event


def test_purge_deletes_only_expired_rows_in_batches_and_records_one_event(aged_events):
    expired, kept = aged_events
    outcome = events_purge(now=NOW, retention_days=365, pace=PurgePace(batch_size=2), sleep=lambda _: None)
    assert (outcome.removed, outcome.batches, outcome.complete) == (5, 3, True)
    remaining = set(SystemEvent.objects.exclude(event_type=EventType.EVENTS_PURGED).values_list("pk", flat=True))
    assert remaining == {e.pk for e in kept}
    record = SystemEvent.objects.get(event_type=EventType.EVENTS_PURGED)
    timings = {key: record.metadata.pop(key) for key in ("seconds", "rested_seconds")}
    assert record.metadata == {
        "removed": 5, "batches": 3, "complete": True, "retention_days": 365,
        "cutoff": (NOW - timedelta(days=365)).isoformat(),
        "oldest_removed": (NOW - timedelta(days=366 + 40)).isoformat(),
        "newest_removed": (NOW - timedelta(days=366)).isoformat(),
    }
    assert all(value >= 0 for value in timings.values())
    assert (record.actor, record.event_subtype) == ("system", EventSubtype.SUCCESS)


def test_a_second_run_removes_nothing_more(aged_events):
    events_purge(now=NOW, retention_days=365)
    assert events_purge(now=NOW, retention_days=365).removed == 0
    assert SystemEvent.objects.filter(event_type=EventType.EVENTS_PURGED).count() == 2


def test_batches_are_bounded_queries(aged_events, django_assert_num_queries):
    # 3 batches of (select the next ids from where the last ended, delete them): the short third ends it;
    # then the record. No count, no separate read of the oldest row.
    with django_assert_num_queries(3 * 2 + 1):
        events_purge(now=NOW, retention_days=365, pace=PurgePace(batch_size=2), sleep=lambda _: None)


def test_each_batch_reads_on_from_where_the_previous_one_ended(aged_events):
    with CaptureQueriesContext(connection) as queries:
        events_purge(now=NOW, retention_days=365, pace=PurgePace(batch_size=2), sleep=lambda _: None)
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(reads) == 3
    assert '"created_at" >=' not in reads[0] and all('"created_at" >=' in sql for sql in reads[1:])


def test_the_purge_rests_between_batches_in_proportion_to_their_time(aged_events):
    rests = []
    events_purge(now=NOW, retention_days=365, pace=PurgePace(batch_size=2, rest_ratio=3.0, min_rest=0.5),
                 sleep=rests.append)
    assert len(rests) == 2 and all(rest >= 0.5 for rest in rests)  # none after the last (short) batch
    record = SystemEvent.objects.get(event_type=EventType.EVENTS_PURGED)
    assert record.metadata["rested_seconds"] == pytest.approx(sum(rests), abs=0.01)


def test_a_purge_out_of_time_stops_between_batches_and_says_so(aged_events):
    outcome = events_purge(now=NOW, retention_days=365, pace=PurgePace(batch_size=2, time_budget=0),
                           sleep=lambda _: None)
    assert (outcome.removed, outcome.batches, outcome.complete) == (2, 1, False)
    record = SystemEvent.objects.get(event_type=EventType.EVENTS_PURGED)
    assert record.event_subtype == EventSubtype.WARNING and record.metadata["complete"] is False
    assert "the rest follows" in record.message
    # The next run goes on from the oldest row left.
    assert events_purge(now=NOW, retention_days=365, sleep=lambda _: None).removed == 3


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


def test_a_batch_deletes_a_time_range_with_its_ties_and_keeps_recent_security_events(db):
    """Each batch is one DELETE of a created_at range: events sharing the batch's last instant go with it;
    a security event inside the range but younger than its own floor stays."""
    old = NOW - timedelta(days=400)
    bulk_events(3, start=old, step=timedelta(0))  # three at one instant
    bulk_events(2, start=old - timedelta(days=1), step=timedelta(hours=1))
    guarded = bulk_events(1, start=NOW - timedelta(days=200), component="security", event_type="auth_failure")
    bulk_events(1, start=NOW - timedelta(days=199), message="ordinary, past 90 days")
    outcome = events_purge(now=NOW, retention_days=90, pace=PurgePace(batch_size=3), sleep=lambda _: None)
    assert outcome.removed == 6 and outcome.complete
    left = SystemEvent.objects.exclude(event_type=EventType.EVENTS_PURGED)
    assert list(left.values_list("pk", flat=True)) == [guarded[0].pk]
