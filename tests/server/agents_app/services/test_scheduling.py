"""Scheduling, subsystems and config sync."""

from __future__ import annotations

import threading
from datetime import timedelta
from unittest import mock

import pytest
from django.db import DatabaseError, connection
from django.utils import timezone

from agents_app.choices import CommandSource, CommandStatus
from agents_app.commands import command_create
from agents_app.models import AgentSubsystem, Command
from agents_app.scheduling import schedule_due_scans
from redflag.models import ServerSettings

CAPABILITIES = ["apt", "docker", "storage", "system"]


@pytest.fixture
def fleet(enroll):
    return [enroll(hostname=f"host-{index}", capabilities=CAPABILITIES) for index in range(3)]


def test_registration_creates_the_reported_subsystems(enroll):
    agent = enroll(capabilities=["apt", "storage"])
    subsystems = {s.name: s for s in AgentSubsystem.objects.filter(agent_id=agent.id)}
    assert set(subsystems) == {"apt", "storage"}
    assert subsystems["apt"].interval_minutes == 360 and subsystems["storage"].interval_minutes == 60
    assert all(s.next_run_at is None for s in subsystems.values())  # due at once


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


def test_checkin_creates_the_asking_agents_due_scans_at_once(fleet):
    agent = fleet[0]
    commands = agent.post("checkin", {}).json()["commands"]
    assert sorted(c["type"] for c in commands) == ["scan_docker", "scan_storage", "scan_system", "scan_updates"]
    assert Command.objects.exclude(agent_id=agent.id).count() == 0


def test_scan_result_updates_the_subsystem(fleet):
    agent = fleet[0]
    commands = {c["type"]: c for c in agent.post("checkin", {}).json()["commands"]}
    agent.post(f"commands/{commands['scan_updates']['id']}/result", {"status": "failed", "output": "E: apt broke"})
    apt = AgentSubsystem.objects.get(agent_id=agent.id, name="apt")
    assert apt.last_status == "failed" and "apt broke" in apt.last_error and apt.last_run_at


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


def test_subsystem_change_bumps_config_version_and_config_has_an_etag(enroll):
    agent = enroll(capabilities=["apt"])
    response = agent.client.get(f"/api/v1/agents/{agent.id}/config", **agent.headers())
    assert response.status_code == 200
    body, etag = response.json(), response["ETag"]
    assert body["subsystems"] == [{"name": "apt", "enabled": True, "auto_run": True, "interval_minutes": 360}]
    unchanged = agent.client.get(f"/api/v1/agents/{agent.id}/config", HTTP_IF_NONE_MATCH=etag, **agent.headers())
    assert unchanged.status_code == 304
    subsystem = AgentSubsystem.objects.get(agent_id=agent.id)
    subsystem.last_status = "succeeded"
    subsystem.save()  # not a config field: no bump
    assert agent.model.config_version == body["config_version"]
    subsystem.interval_minutes = 60
    subsystem.save()
    assert agent.model.config_version == body["config_version"] + 1
    assert agent.post("checkin", {}).json()["config_version"] == body["config_version"] + 1
    changed = agent.client.get(f"/api/v1/agents/{agent.id}/config", HTTP_IF_NONE_MATCH=etag, **agent.headers())
    assert changed.status_code == 200 and changed.json()["subsystems"][0]["interval_minutes"] == 60


def test_config_requires_credentials(client, agent):
    assert client.get(f"/api/v1/agents/{agent.id}/config").status_code == 401


def test_heartbeat_follows_what_the_agent_acknowledged(agent):
    from agents_app.heartbeat import heartbeat_enable

    heartbeat_enable(agent=agent.model, minutes=30, source=CommandSource.WEB_UI, actor="alice")
    reply = agent.post("checkin", {"heartbeat_active": False}).json()
    assert reply["heartbeat"]["active"] is False  # not acknowledged yet, and not cleared either
    command = reply["commands"][0]
    agent.post(f"commands/{command['id']}/result", {"status": "succeeded"})
    reply = agent.post("checkin", {"heartbeat_active": True}).json()
    assert reply["heartbeat"]["active"] is True and reply["poll_interval_seconds"] == 5
    until = agent.model.heartbeat_until
    assert timedelta(minutes=29) < until - timezone.now() <= timedelta(minutes=30)


def test_stale_heartbeat_the_agent_no_longer_reports_is_cleared_and_recorded(agent):
    from events_app.models import SystemEvent

    model = agent.model
    model.heartbeat_until = timezone.now() + timedelta(minutes=10)
    model.save()
    reply = agent.post("checkin", {"heartbeat_active": False}).json()
    assert reply["heartbeat"] == {"active": False, "until": None} and reply["poll_interval_seconds"] == 300
    assert agent.model.heartbeat_until is None
    assert SystemEvent.objects.filter(message__contains="no longer reports heartbeat").count() == 1


def test_heartbeat_turns_on_before_an_install(agent):
    from agents_app.models import PackageUpdate
    from agents_app.updates import updates_install

    PackageUpdate.objects.create(agent=agent.model, package_type="apt", name="curl", current_version="1",
                                 available_version="2")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    types = list(Command.objects.order_by("created_at").values_list("command_type", flat=True))
    assert types == ["enable_heartbeat", "dry_run_update"]
    assert Command.objects.filter(status=CommandStatus.PENDING).count() == 2


def test_bulk_subsystem_configuration_bumps_each_agent_once_and_records_it(fleet):
    from agents_app.subsystems import subsystems_configure
    from events_app.models import SystemEvent

    before = {agent.id: agent.model.config_version for agent in fleet}
    updates = AgentSubsystem.objects.filter(name__in=["apt", "docker"])
    assert subsystems_configure(subsystems=updates, changes={"interval_minutes": 720}, actor="alice") == 6
    assert set(AgentSubsystem.objects.filter(name="apt").values_list("interval_minutes", flat=True)) == {720}
    assert {agent.id: agent.model.config_version for agent in fleet} == {k: v + 1 for k, v in before.items()}
    assert SystemEvent.objects.filter(event_type="config_changed", actor="alice").count() == 3
    # Nothing to change: no bump, no event.
    assert subsystems_configure(subsystems=updates, changes={"interval_minutes": 720}, actor="alice") == 0
    assert {agent.id: agent.model.config_version for agent in fleet} == {k: v + 1 for k, v in before.items()}
    with pytest.raises(ValueError, match="not a subsystem setting: next_run_at"):
        subsystems_configure(subsystems=updates, changes={"next_run_at": None}, actor="alice")
