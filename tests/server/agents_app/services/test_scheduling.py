"""Scheduling (services/scheduling.py): which scans are due, each created once, under backpressure.

PostgreSQL plans and creates them in one statement, SQLite in Python: every test here runs on both.
How the unsigned scans are signed at delivery is in test_commands.py.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents_app.choices import CommandSource
from agents_app.models import AgentSubsystem, Command
from agents_app.services.agents import agent_revoke
from agents_app.services.commands import command_create
from agents_app.services.scheduling import schedule_due_scans
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.agents_app.services.conftest import CAPABILITIES


def test_sweep_creates_each_due_scan_once_and_advances_next_run(fleet):
    now = timezone.now()
    assert schedule_due_scans(now=now) == 12
    assert Command.objects.filter(source=CommandSource.SCHEDULER).count() == 12
    apt = AgentSubsystem.objects.filter(name="apt").first()
    assert apt.next_run_at == now + timedelta(minutes=360)
    assert schedule_due_scans(now=now) == 0
    # Due again later, but the earlier scan is still open: never a duplicate.
    assert schedule_due_scans(now=now + timedelta(hours=7)) == 0
    assert Command.objects.filter(command_type="scan_updates", params__package_type="apt").count() == 3


def test_backpressure_at_max_pending_commands(fleet):
    row = ServerSettings.current()
    row.max_pending_commands = 2
    row.save()
    agent = fleet[0].model
    command_create(agent=agent, command_type="reboot", source="api")
    schedule_due_scans()
    assert Command.objects.open().filter(agent=agent).count() == 2  # the reboot plus one scan
    assert AgentSubsystem.objects.filter(agent=agent, next_run_at__isnull=True).count() == 3  # not skipped


@contextmanager
def commands_refused_by_the_database():
    """A trigger that makes every INSERT into the command table fail, as a full disk would."""
    table = Command._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("CREATE FUNCTION test_refuse_commands() RETURNS trigger LANGUAGE plpgsql "
                           "AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$")
            cursor.execute(f"CREATE TRIGGER test_refuse_commands BEFORE INSERT ON {table} "
                           f"FOR EACH ROW EXECUTE FUNCTION test_refuse_commands()")
        else:
            cursor.execute(f"CREATE TRIGGER test_refuse_commands BEFORE INSERT ON {table} "
                           f"BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"DROP TRIGGER test_refuse_commands ON {table}")
            cursor.execute("DROP FUNCTION test_refuse_commands()")
        else:
            cursor.execute("DROP TRIGGER test_refuse_commands")


def test_a_failed_creation_does_not_skip_the_run(fleet):
    with commands_refused_by_the_database(), pytest.raises(DatabaseError):
        schedule_due_scans()
    assert not Command.objects.exists()
    assert AgentSubsystem.objects.filter(next_run_at__isnull=True).count() == 12
    assert not SystemEvent.objects.filter(event_type="command_created").exists()
    assert schedule_due_scans() == 12


def test_revoked_agents_are_skipped_and_their_runs_stay_due(fleet):
    agent_revoke(agent=fleet[0].model, actor="alice")
    assert schedule_due_scans() == 8
    assert not Command.objects.filter(agent_id=fleet[0].id).exists()
    assert AgentSubsystem.objects.filter(agent_id=fleet[0].id, next_run_at__isnull=True).count() == 4


def test_the_limit_takes_the_oldest_due_first(fleet):
    now = timezone.now()
    AgentSubsystem.objects.update(next_run_at=now - timedelta(minutes=5))
    oldest = AgentSubsystem.objects.filter(agent_id=fleet[1].id, name="storage")
    oldest.update(next_run_at=now - timedelta(days=1))
    AgentSubsystem.objects.filter(agent_id=fleet[2].id, name="apt").update(next_run_at=None)  # never run: first
    assert schedule_due_scans(now=now, limit=2) == 2
    assert set(Command.objects.values_list("agent_id", "dedupe_key")) == {
        (fleet[1].model.pk, "scan_storage"), (fleet[2].model.pk, "scan_updates:apt")}


def test_one_summary_event_and_the_check_in_path_names_its_agent(fleet):
    assert schedule_due_scans() == 12
    event = SystemEvent.objects.get(event_type="command_created")
    assert event.component == "scheduler" and event.agent_id is None
    assert event.metadata == {"commands": 12, "agents": 3, "source": "scheduler"}
    AgentSubsystem.objects.filter(agent_id=fleet[0].id, name="storage").update(next_run_at=None)
    Command.objects.filter(agent_id=fleet[0].id, dedupe_key="scan_storage").update(status="succeeded")
    assert schedule_due_scans(agent_ids=[fleet[0].id]) == 1
    latest = SystemEvent.objects.filter(event_type="command_created").order_by("-created_at", "-seq").first()
    assert str(latest.agent_id) == fleet[0].id and latest.metadata["commands"] == 1


def test_scheduled_scans_are_stored_unsigned_for_delivery_to_sign(fleet):
    schedule_due_scans()
    assert set(Command.objects.values_list("nonce", "key_id", "signature")) == {("", "", "")}
    assert set(Command.objects.values_list("status", "source")) == {("pending", "scheduler")}


def test_nothing_due_is_one_statement(fleet):
    schedule_due_scans()
    with CaptureQueriesContext(connection) as queries:
        assert schedule_due_scans() == 0
    # Inside the test's transaction the sweep's own transaction is a savepoint; outside it is BEGIN/COMMIT.
    statements = [query["sql"] for query in queries.captured_queries
                  if not query["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert len(statements) == 1, statements


def test_disabled_and_manual_subsystems_are_not_scheduled(fleet):
    AgentSubsystem.objects.filter(name="apt").update(enabled=False)
    AgentSubsystem.objects.filter(name="docker").update(auto_run=False)
    assert schedule_due_scans() == 6


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_sweeps_create_each_due_command_exactly_once(enroll):
    for index in range(6):
        enroll(hostname=f"c-{index}", capabilities=CAPABILITIES)
    barrier = threading.Barrier(2)
    results, errors = [], []

    def sweep():
        barrier.wait()
        try:
            results.append(schedule_due_scans())
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sum(results) == 24
    assert Command.objects.count() == 24
    assert Command.objects.values("agent_id", "dedupe_key").distinct().count() == 24


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has one writer at a time: no interleaving")
def test_the_partial_unique_index_has_the_last_word(enroll):
    """Another worker creates the same kind of command after the sweep read the open commands but before
    its INSERT: the sweep does not double it, and that subsystem's run is not advanced."""
    agent = enroll(hostname="raced", capabilities=CAPABILITIES)
    other_inserted, sweeper_known = threading.Event(), threading.Event()
    errors, results, sweeper, waited = [], [], [], []

    def other_worker():
        try:
            sweeper_known.wait(60)
            with transaction.atomic():
                command_create(agent=agent.model, command_type="scan_updates", params={"package_type": "apt"},
                               source="api")
                other_inserted.set()
                # Commit only once the sweep waits on this row's index entry (pg_locks is read live; the
                # statistics views would hold one snapshot for this whole transaction).
                with connection.cursor() as cursor:
                    for _ in range(6000):
                        cursor.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", sweeper)
                        if cursor.fetchone()[0]:
                            waited.append(True)
                            break
                        cursor.execute("SELECT pg_sleep(0.01)")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    def sweep():
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                sweeper.append(cursor.fetchone()[0])
            sweeper_known.set()
            other_inserted.wait(60)
            results.append(schedule_due_scans())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep), threading.Thread(target=other_worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    connections.close_all()
    assert not errors and waited and results == [3]
    apt = Command.objects.get(agent_id=agent.id, dedupe_key="scan_updates:apt")
    assert apt.source == "api"
    assert AgentSubsystem.objects.get(agent_id=agent.id, name="apt").next_run_at is None
    assert AgentSubsystem.objects.filter(agent_id=agent.id, next_run_at__isnull=False).count() == 3
