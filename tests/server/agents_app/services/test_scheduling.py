"""Scheduling (services/scheduling.py): which scans are due, each created once, under backpressure."""

from __future__ import annotations

import threading
from datetime import timedelta
from unittest import mock

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from agents_app.choices import CommandSource
from agents_app.models import AgentSubsystem, Command
from agents_app.services.commands import command_create
from agents_app.services.scheduling import schedule_due_scans
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


def test_a_failed_creation_does_not_skip_the_run(fleet):
    with mock.patch.object(Command.objects, "bulk_create", side_effect=DatabaseError("disk full")):
        with pytest.raises(DatabaseError):
            schedule_due_scans()
    assert not Command.objects.exists()
    assert AgentSubsystem.objects.filter(next_run_at__isnull=True).count() == 12
    assert schedule_due_scans() == 12


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
