"""Approve → dry-run → (confirm) → install, bulk operations and presence transitions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.bulk import bulk_operation_run, bulk_operation_start
from agents_app.choices import CommandStatus, CommandType, UpdateStatus
from agents_app.models import BulkOperation, Command, PackageUpdate, UpdateLog
from agents_app.presence import presence_sweep
from agents_app.updates import (
    updates_approve,
    updates_confirm_dependencies,
    updates_ignore,
    updates_install,
    updates_unignore,
)
from events_app.models import SystemEvent
from redflag.models import ServerSettings


@pytest.fixture(autouse=True)
def _no_automatic_heartbeat(db):
    row = ServerSettings.current()
    row.heartbeat_before_operations = False
    row.save()


def add_updates(agent, *names, package_type="apt", **fields):
    return [PackageUpdate.objects.create(agent=agent.model, package_type=package_type, name=name,
                                         current_version="1", available_version="2", **fields) for name in names]


def deliver(agent) -> dict[str, dict]:
    return {command["type"]: command for command in agent.post("checkin", {}).json()["commands"]}


def finish(agent, command, status="succeeded", **result):
    response = agent.post(f"commands/{command['id']}/result", {"status": status, **result})
    assert response.status_code == 200, response.content
    return response.json()


def test_approve_ignore_unignore_record_events(agent):
    add_updates(agent, "curl", "vim")
    assert updates_approve(updates=PackageUpdate.objects.filter(name="curl"), actor="alice") == 1
    assert updates_ignore(updates=PackageUpdate.objects.filter(name="vim"), actor="alice") == 1
    assert updates_approve(updates=PackageUpdate.objects.filter(name="vim"), actor="alice") == 0  # ignored stays
    assert updates_unignore(updates=PackageUpdate.objects.filter(name="vim"), actor="alice") == 1
    assert dict(PackageUpdate.objects.values_list("name", "status")) == {"curl": "approved", "vim": "pending"}
    events = SystemEvent.objects.filter(event_type="config_changed", actor="alice")
    assert events.count() == 3 and all(event.agent_id for event in events)


def test_install_without_new_dependencies_confirms_itself(agent):
    add_updates(agent, "curl", "libcurl4")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    dry_run = deliver(agent)[CommandType.DRY_RUN_UPDATE]
    assert dry_run["params"] == {"package_type": "apt", "packages": ["curl", "libcurl4"]}
    finish(agent, dry_run, dependencies=["curl", "libcurl4"], exit_code=0, duration_seconds=1.5,
           output="Inst curl [1] (2 Debian:12/stable)")
    install = deliver(agent)[CommandType.INSTALL_UPDATES]
    assert set(PackageUpdate.objects.values_list("status", flat=True)) == {UpdateStatus.INSTALLING}
    finish(agent, install, exit_code=0, duration_seconds=12.0, output="Setting up curl (2) ...")
    assert set(PackageUpdate.objects.values_list("status", flat=True)) == {UpdateStatus.INSTALLED}
    logs = list(UpdateLog.objects.order_by("created_at").values_list("action", "succeeded", "exit_code"))
    assert logs == [("dry_run", True, 0), ("install", True, 0)]
    assert UpdateLog.objects.get(action="install").output_tail == "Setting up curl (2) ..."


def test_install_with_new_dependencies_waits_for_an_admin(agent):
    add_updates(agent, "nginx")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    finish(agent, deliver(agent)[CommandType.DRY_RUN_UPDATE], dependencies=["nginx", "libnginx-mod-http"])
    update = PackageUpdate.objects.get()
    assert update.status == UpdateStatus.PENDING_DEPENDENCIES and update.dependencies == ["libnginx-mod-http"]
    assert deliver(agent) == {}  # nothing installs by itself
    updates_confirm_dependencies(updates=PackageUpdate.objects.all(), actor="alice")
    confirm = deliver(agent)[CommandType.CONFIRM_DEPENDENCIES]
    assert confirm["params"]["dependencies"] == ["libnginx-mod-http"]
    finish(agent, confirm, status="failed", exit_code=100, output="E: Unable to fetch")
    update.refresh_from_db()
    assert update.status == UpdateStatus.FAILED
    assert UpdateLog.objects.get(action="install").succeeded is False


def test_failed_dry_run_fails_the_updates(agent):
    add_updates(agent, "curl")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    finish(agent, deliver(agent)[CommandType.DRY_RUN_UPDATE], status="failed", exit_code=100)
    assert PackageUpdate.objects.get().status == UpdateStatus.FAILED
    assert not Command.objects.filter(command_type=CommandType.INSTALL_UPDATES).exists()


def test_install_groups_by_package_type(agent):
    add_updates(agent, "curl")
    add_updates(agent, "nginx:1.27", package_type="docker")
    dry_runs = updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    assert sorted(command.params["package_type"] for command in dry_runs) == ["apt", "docker"]


def test_bulk_operation_records_progress_and_an_event_per_agent(enroll, django_capture_on_commit_callbacks):
    from unittest import mock

    agents = [enroll(hostname=f"bulk-{index}", capabilities=["apt", "storage"]) for index in range(3)]
    for agent in agents:
        add_updates(agent, "openssl", is_security=True)
        add_updates(agent, "vim")
    with mock.patch("django_q.tasks.async_task") as enqueue, django_capture_on_commit_callbacks(execute=True):
        operation = bulk_operation_start(kind=BulkOperation.Kind.APPROVE, agent_ids=[a.id for a in agents],
                                         params={"security_only": True})
    enqueue.assert_called_once_with("agents_app.tasks.bulk_operation_run", str(operation.pk),
                                    task_name=f"bulk-{operation.pk}")
    bulk_operation_run(str(operation.pk))
    operation.refresh_from_db()
    assert (operation.requested, operation.done, operation.failed, operation.status) == (3, 3, 0, "finished")
    assert PackageUpdate.objects.filter(status="approved").count() == 3
    assert PackageUpdate.objects.filter(name="vim", status="pending").count() == 3
    per_agent = SystemEvent.objects.filter(event_type="config_changed", metadata__source="web_ui_bulk")
    assert sorted(per_agent.values_list("hostname", flat=True)) == ["bulk-0", "bulk-1", "bulk-2"]
    assert SystemEvent.objects.filter(event_type="bulk_operation").count() == 2  # requested, finished


def test_bulk_scan_is_idempotent_and_counts_missing_agents_as_failed(enroll):
    agents = [enroll(hostname=f"scan-{index}", capabilities=["apt", "storage"]) for index in range(2)]
    operation = BulkOperation.objects.create(kind="scan", requested=3,
                                             params={"agent_ids": [a.id for a in agents] + [
                                                 "00000000-0000-0000-0000-000000000000"]})
    bulk_operation_run(str(operation.pk))
    BulkOperation.objects.filter(pk=operation.pk).update(status="running")  # a retried task
    bulk_operation_run(str(operation.pk))
    operation.refresh_from_db()
    assert (operation.done, operation.failed) == (2, 1)
    assert Command.objects.filter(source="web_ui_bulk").count() == 4  # no duplicates from the retry
    assert set(Command.objects.values_list("bulk_operation_id", flat=True)) == {operation.pk}


def test_one_failing_agent_does_not_stop_the_fleet(enroll):
    from unittest import mock

    agents = [enroll(hostname=f"f-{index}") for index in range(3)]
    operation = BulkOperation.objects.create(kind="reboot", requested=3, params={"agent_ids": [a.id for a in agents]})
    real = __import__("agents_app.bulk", fromlist=["command_create"]).command_create

    def flaky(*, agent, **kwargs):
        if agent.hostname == "f-1":
            raise RuntimeError("signing key unreadable")
        return real(agent=agent, **kwargs)

    with mock.patch("agents_app.bulk.command_create", side_effect=flaky):
        bulk_operation_run(str(operation.pk))
    operation.refresh_from_db()
    assert (operation.done, operation.failed) == (2, 1)
    assert operation.errors == [{"agent": "f-1", "error": "signing key unreadable"}]


def test_presence_transitions_are_recorded_once(agent):
    assert presence_sweep() == 1  # first sighting: recorded silently
    assert not SystemEvent.objects.filter(message__contains="went offline").exists()
    later = timezone.now() + timedelta(hours=1)
    assert presence_sweep(now=later) == 1
    assert presence_sweep(now=later) == 0
    assert SystemEvent.objects.filter(message__contains="went offline").count() == 1
    agent.post("checkin", {})
    assert presence_sweep() == 1
    assert SystemEvent.objects.filter(message__contains="came back online").count() == 1


def test_reboot_command_does_not_clear_the_flag(agent):
    from agents_app.commands import command_create

    model = agent.model
    model.reboot_required = True
    model.save()
    command = command_create(agent=model, command_type="reboot", source="web_ui")
    agent.post("checkin", {})
    finish(agent, {"id": str(command.pk)})
    assert agent.model.reboot_required is True
    assert Command.objects.get(pk=command.pk).status == CommandStatus.SUCCEEDED
