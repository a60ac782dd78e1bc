"""Routing events to deliveries: rule matching, the stored cursor (holes, races), the post-save wake-up,
and check-ins costing nothing while no rule wants them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ

from agents_app.models import Agent, AgentGroup
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.models import SystemEvent
from events_app.services import record_event, security_violation
from notifications_app.choices import Cadence, DeliveryKind, Trigger
from notifications_app.hooks import DISPATCH_TASK, wanted
from notifications_app.models import Delivery, DigestEntry, DispatchCursor, Rule
from notifications_app.services import HOLE_GRACE, events_dispatch, offline_alerts_check
from tests.server.conftest import machine_hash
from tests.server.notifications_app.conftest import make_destination, make_rule

pytestmark = pytest.mark.django_db


def make_agent(hostname: str, **fields) -> Agent:
    return Agent.objects.create(hostname=hostname, os_family="linux", machine_id_hash=machine_hash(hostname), **fields)


def event(message: str, *, event_type=EventType.AGENT_INSTALL, subtype=EventSubtype.FAILED, severity=Severity.WARNING,
          agent=None, metadata=None) -> SystemEvent:
    with transaction.atomic():
        return record_event(event_type=event_type, subtype=subtype, component=Component.AGENT, severity=severity,
                            message=message, agent=agent, metadata=metadata)


def checkin(agent=None) -> SystemEvent:
    return event("checked in", event_type=EventType.AGENT_CHECKIN, subtype=EventSubtype.INFO, severity=Severity.INFO,
                 agent=agent)


def routed() -> set[tuple[str, str]]:
    return {(destination, payload["event"]["message"]) for destination, payload
            in Delivery.objects.values_list("destination_name", "payload")}


def cursor() -> DispatchCursor:
    return DispatchCursor.objects.get(pk=1)


def test_rules_pick_events_by_type_severity_group_and_trigger():
    web, db = make_agent("web-01"), make_agent("db-01")
    group = AgentGroup.objects.create(name="web", rule_hostname_pattern="web-*")
    ops, security, off = (make_destination(name, f"ntfys://ntfy.example.com/{name}") for name in ("ops", "sec", "off"))
    make_rule("web installs", [ops], event_types=[EventType.AGENT_INSTALL], min_severity=Severity.WARNING,
              group=group)
    make_rule("violations", [security], trigger=Trigger.SECURITY_VIOLATION)
    make_rule("disabled", [off], enabled=False)
    make_rule("rollouts", [ops], trigger=Trigger.ROLLOUT_HALTED)

    event("web install failed", agent=web)
    event("web install noted", agent=web, severity=Severity.INFO)  # below the minimum
    event("db install failed", agent=db)  # not in the group
    with transaction.atomic():
        security_violation("a command with a bad signature", agent=db, metadata={})
    event("rollout stage 2 halted", event_type=EventType.ROLLOUT, subtype=EventSubtype.WARNING)
    event("rollout finished", event_type=EventType.ROLLOUT, subtype=EventSubtype.SUCCESS)
    event("destination x failing", event_type=EventType.NOTIFICATION, severity=Severity.ERROR)  # never routed

    assert events_dispatch() == 3
    assert routed() == {("ops", "web install failed"), ("sec", "a command with a bad signature"),
                        ("ops", "rollout stage 2 halted")}
    assert events_dispatch() == 0  # the cursor moved: nothing twice


def test_checkins_cost_nothing_while_no_rule_wants_them(django_assert_num_queries, django_capture_on_commit_callbacks):
    destination = make_destination("sec", "ntfys://ntfy.example.com/sec")
    make_rule("violations", [destination], trigger=Trigger.SECURITY_VIOLATION)
    wanted.refresh()
    agent = make_agent("web-01")
    # Recording a check-in: its INSERT and nothing else (atomic's savepoint aside), no task queued after commit.
    with django_capture_on_commit_callbacks() as callbacks, CaptureQueriesContext(connection) as queries:
        checkin(agent)
    statements = [query["sql"] for query in queries.captured_queries
                  if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert len(statements) == 1 and statements[0].startswith("INSERT")
    assert callbacks == []

    # The dispatcher reads the same number of queries for 10 or 200 check-ins: only seq/type/time.
    for _ in range(10):
        checkin(agent)
    # The cursor, the narrow read, the rules and their destinations, the conditional UPDATE (in a
    # savepoint here): no event row read in full.
    with django_assert_num_queries(7):
        events_dispatch()
    for _ in range(200):
        checkin(agent)
    with django_assert_num_queries(7):
        events_dispatch()
    assert cursor().position == SystemEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    assert not Delivery.objects.exists()


def test_a_wanted_event_wakes_the_dispatcher_once_per_transaction(django_capture_on_commit_callbacks):
    destination = make_destination("sec", "ntfys://ntfy.example.com/sec")
    make_rule("violations", [destination], trigger=Trigger.SECURITY_VIOLATION)
    wanted.refresh()  # as a process that has read the rules (after commit of an earlier event)
    with django_capture_on_commit_callbacks(execute=True):
        with transaction.atomic():
            security_violation("first", agent=None, metadata={})
            security_violation("second", agent=None, metadata={})
    assert [task.func() for task in OrmQ.objects.all()] == [DISPATCH_TASK]
    with django_capture_on_commit_callbacks(execute=True):
        checkin()
    assert OrmQ.objects.count() == 1  # a check-in wakes nobody


def test_a_seq_missing_while_its_transaction_is_open_is_waited_for_and_later_events_go_at_once():
    destination = make_destination("ops", "ntfys://ntfy.example.com/ops")
    make_rule("installs", [destination], trigger=Trigger.INSTALL_FAILED)
    event("first")
    events_dispatch()
    top = cursor().position
    # PostgreSQL hands out seq at INSERT: top+2 can commit while top+1's transaction is still open.
    late = SystemEvent(event_type=EventType.AGENT_INSTALL, event_subtype=EventSubtype.FAILED,
                       severity=Severity.WARNING, component=Component.AGENT, message="committed late", actor="system")
    SystemEvent(event_type=EventType.AGENT_INSTALL, event_subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                component=Component.AGENT, message="committed early", actor="system", seq=top + 2).save()
    assert events_dispatch() == 1  # the early one is not held back
    assert (cursor().position, cursor().done_above) == (top, [top + 2])
    late.seq = top + 1
    late.save()
    assert events_dispatch() == 1
    assert (cursor().position, cursor().done_above) == (top + 2, [])
    assert {payload["event"]["message"] for payload in Delivery.objects.values_list("payload", flat=True)} == {
        "first", "committed early", "committed late"}


def test_events_after_a_young_hole_are_not_held_back_beyond_one_batch():
    destination = make_destination("ops", "ntfys://ntfy.example.com/ops")
    make_rule("installs", [destination], trigger=Trigger.INSTALL_FAILED)
    event("first")
    events_dispatch()
    top = cursor().position
    for number in range(5):  # top+1 is missing (its transaction still open)
        SystemEvent(event_type=EventType.AGENT_INSTALL, event_subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                    component=Component.AGENT, message=f"after {number}", actor="system", seq=top + 2 + number).save()
    assert events_dispatch(batch=2) == 5
    assert cursor().position == top and cursor().done_above == list(range(top + 2, top + 7))
    assert events_dispatch(batch=2) == 0


def test_a_hole_older_than_the_grace_is_a_rolled_back_insert_and_is_passed():
    event("first")
    events_dispatch()
    top = cursor().position
    SystemEvent(event_type=EventType.AGENT_INSTALL, event_subtype=EventSubtype.FAILED, component=Component.AGENT,
                message="after a rollback", actor="system", seq=top + 2).save()
    events_dispatch()
    assert cursor().position == top
    events_dispatch(now=timezone.now() + HOLE_GRACE + timedelta(seconds=1))
    assert (cursor().position, cursor().done_above) == (top + 2, [])


def test_two_dispatchers_never_both_commit_a_batch():
    """The other dispatcher commits the batch between our read and our write: we back off, sending nothing."""
    destination = make_destination("ops", "ntfys://ntfy.example.com/ops")
    make_rule("installs", [destination], trigger=Trigger.INSTALL_FAILED)
    event("install failed")
    table = DispatchCursor._meta.db_table

    def other_dispatcher_wins(execute, sql, params, many, context):
        if sql.startswith(f'UPDATE "{table}"'):
            # Straight on the DB-API connection, past Django's wrappers: the other process's commit.
            context["connection"].connection.cursor().execute(f'UPDATE "{table}" SET version = version + 1')
        return execute(sql, params, many, context)

    with connection.execute_wrapper(other_dispatcher_wins):
        assert events_dispatch() == 0
    assert not Delivery.objects.exists()


def test_digest_rules_keep_lines_instead_of_sending():
    destination = make_destination("ops", "ntfys://ntfy.example.com/ops")
    make_rule("daily", [destination], trigger=Trigger.INSTALL_FAILED, cadence=Cadence.DAILY)
    event("install failed")
    assert events_dispatch() == 0
    entry = DigestEntry.objects.get()
    assert entry.due_at == (entry.created_at.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1))


def test_an_agent_offline_for_n_minutes_is_told_once_per_spell():
    now = timezone.now()
    silent = make_agent("web-01", last_seen_at=now - timedelta(minutes=20))
    make_agent("web-02", last_seen_at=now - timedelta(minutes=5))
    make_agent("db-01", last_seen_at=now - timedelta(minutes=60))
    group = AgentGroup.objects.create(name="web", rule_hostname_pattern="web-*")
    destination = make_destination("ops", "ntfys://ntfy.example.com/ops")
    make_rule("web offline", [destination], trigger=Trigger.AGENT_OFFLINE, offline_minutes=15, group=group)

    assert offline_alerts_check(now=now) == 1
    delivery = Delivery.objects.get()
    assert delivery.kind == DeliveryKind.OFFLINE and "web-01 has been offline for 20 minutes" in delivery.subject
    assert offline_alerts_check(now=now + timedelta(minutes=5)) == 0  # the same spell
    # It checks in, then falls silent again: a new spell, told again.
    Agent.objects.filter(pk=silent.pk).update(last_seen_at=now + timedelta(minutes=6))
    assert offline_alerts_check(now=now + timedelta(minutes=10)) == 0
    assert offline_alerts_check(now=now + timedelta(minutes=30)) == 2  # web-01 again, and now web-02
    told = Rule.objects.get().offline_alerts.values_list("agent__hostname", flat=True)
    assert sorted(told) == ["web-01", "web-01", "web-02"]  # db-01 is not in the group
