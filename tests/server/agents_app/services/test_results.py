"""Command answers, time-outs and cancels: the one place where a command ends (services/results.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.choices import CommandStatus, UpdateStatus
from agents_app.models import Command, PackageUpdate
from agents_app.services.commands import command_create
from agents_app.services.results import SENT_TIMEOUT, commands_cancel, commands_time_out
from events_app.models import SystemEvent


def queue(agent, command_type="reboot", **params):
    return command_create(agent=agent.model, command_type=command_type, params=params, source="api")


def result(agent, command, status, **body):
    return agent.post(f"commands/{command.pk}/result", {"status": status, **body})


def test_results_are_idempotent(agent):
    command = queue(agent, "scan_storage")
    agent.post("checkin", {})
    assert result(agent, command, "running").json() == {"status": "running", "changed": True}
    first = result(agent, command, "succeeded", output="ok")
    assert first.status_code == 200 and first.json() == {"status": "succeeded", "changed": True}
    completed_at = Command.objects.get(pk=command.pk).completed_at
    # A retry of the same result, or a contradicting late one, changes nothing.
    assert result(agent, command, "succeeded", output="ok").json() == {"status": "succeeded", "changed": False}
    assert result(agent, command, "failed", output="late").json() == {"status": "succeeded", "changed": False}
    command.refresh_from_db()
    assert command.completed_at == completed_at and command.output == "ok"
    assert SystemEvent.objects.filter(event_type="command_completed").count() == 1


def test_result_for_another_agents_command_is_404(agent, enroll):
    other = enroll(hostname="other")
    command = queue(other)
    response = result(agent, command, "succeeded")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert Command.objects.get(pk=command.pk).status == CommandStatus.PENDING


@pytest.mark.parametrize("body, field", [({"status": "done"}, "status"), ({}, "status"),
                                         ({"status": "failed", "exit_code": "x"}, "exit_code"),
                                         ({"status": "failed", "exit_code": 2**31}, "exit_code")])
def test_bad_result_is_400_naming_the_field(agent, body, field):
    command = queue(agent)
    response = agent.post(f"commands/{command.pk}/result", body)
    assert response.status_code == 400 and field in response.json()["error"]["fields"]


def approved_dry_run(model):
    """A dry-run command and the approved update it works on."""
    command = command_create(agent=model, command_type="dry_run_update", source="api",
                             params={"package_type": "apt", "packages": ["curl"]})
    update = PackageUpdate.objects.create(agent=model, package_type="apt", name="curl", current_version="1",
                                          available_version="2", status=UpdateStatus.APPROVED,
                                          operation_command=command)
    return command, update


def test_silent_commands_time_out_and_fail_their_package_operation(agent):
    command, update = approved_dry_run(agent.model)
    agent.post("checkin", {})
    assert commands_time_out(now=timezone.now() + SENT_TIMEOUT - timedelta(minutes=1)) == 0
    assert commands_time_out(now=timezone.now() + SENT_TIMEOUT + timedelta(minutes=1)) == 1
    assert Command.objects.get(pk=command.pk).status == CommandStatus.TIMED_OUT
    update.refresh_from_db()
    assert update.status == UpdateStatus.FAILED
    assert commands_time_out(now=timezone.now() + SENT_TIMEOUT * 2) == 0  # counted once
    # A result arriving after the timeout changes nothing.
    assert result(agent, command, "succeeded").json()["changed"] is False


def test_undelivered_commands_expire(agent):
    command = queue(agent)
    Command.objects.filter(pk=command.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert agent.post("checkin", {}).json()["commands"] == []
    assert commands_time_out() == 1
    assert Command.objects.get(pk=command.pk).status == CommandStatus.TIMED_OUT


def test_cancelling_a_dry_run_keeps_its_updates_approved(agent):
    command, update = approved_dry_run(agent.model)
    commands_cancel(commands=[command], actor="alice")
    update.refresh_from_db()
    assert update.status == UpdateStatus.APPROVED
    assert SystemEvent.objects.get(event_type="command_completed").metadata["status"] == "cancelled"


@pytest.mark.usefixtures("no_automatic_heartbeat")
def test_reboot_command_does_not_clear_the_flag(agent):
    model = agent.model
    model.reboot_required = True
    model.save()
    command = command_create(agent=model, command_type="reboot", source="web_ui")
    agent.post("checkin", {})
    response = result(agent, command, "succeeded")
    assert response.status_code == 200, response.content
    assert agent.model.reboot_required is True
    assert Command.objects.get(pk=command.pk).status == CommandStatus.SUCCEEDED
