"""Commands: signed envelopes, delivery at check-in, idempotent results, cancel, retry, timeouts."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.utils import timezone

from agent_client.protocol import command_signing_bytes_from_wire
from agents_app.choices import CommandStatus, UpdateStatus
from agents_app.commands import (
    DELIVERY_BATCH,
    SENT_TIMEOUT,
    CommandAlreadyOpen,
    command_create,
    command_retry,
    commands_cancel,
    commands_time_out,
)
from agents_app.models import Command, PackageUpdate
from events_app.models import SystemEvent
from tokens_app.models import SigningKey


def verify(wire: dict) -> None:
    key = SigningKey.objects.get(key_id=wire["key_id"])
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key))
    public.verify(base64.b64decode(wire["signature"]), command_signing_bytes_from_wire(wire))


def queue(agent, command_type="reboot", **params):
    return command_create(agent=agent.model, command_type=command_type, params=params, source="api")


def test_delivered_commands_carry_a_valid_signature_over_the_canonical_form(agent):
    queue(agent, "scan_updates", package_type="apt")
    wire = agent.post("checkin", {}).json()["commands"][0]
    assert wire["agent_id"] == agent.id and wire["type"] == "scan_updates"
    verify(wire)
    for field, forged in (("params", {"package_type": "dnf"}), ("agent_id", "0" * 8 + wire["agent_id"][8:]),
                          ("expires_at", wire["expires_at"] + 3600), ("type", "reboot"), ("nonce", "x" * 22)):
        with pytest.raises(InvalidSignature):
            verify({**wire, field: forged})


def test_checkin_delivers_the_ten_oldest_and_marks_them_sent(agent):
    model = agent.model
    kinds = [("scan_updates", {"package_type": t}) for t in ("apt", "dnf", "docker", "winget", "windows_update")]
    kinds += [("scan_storage", {}), ("scan_system", {}), ("reboot", {}), ("enable_heartbeat", {}),
              ("disable_heartbeat", {}), ("scan_docker", {}), ("update_agent", {})]
    created = [command_create(agent=model, command_type=kind, params=params, source="api") for kind, params in kinds]
    first = agent.post("checkin", {}).json()["commands"]
    assert [c["id"] for c in first] == [str(c.pk) for c in created[:DELIVERY_BATCH]]
    assert Command.objects.filter(status=CommandStatus.SENT).count() == DELIVERY_BATCH
    second = agent.post("checkin", {}).json()["commands"]
    assert [c["id"] for c in second] == [str(c.pk) for c in created[DELIVERY_BATCH:]]
    assert agent.post("checkin", {}).json()["commands"] == []


def test_an_open_command_of_the_same_kind_is_never_doubled(agent):
    queue(agent, "scan_updates", package_type="apt")
    with pytest.raises(CommandAlreadyOpen):
        queue(agent, "scan_updates", package_type="apt")
    queue(agent, "scan_updates", package_type="dnf")  # another kind is fine
    assert Command.objects.count() == 2


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


def test_cancel_and_retry(agent):
    pending = queue(agent, "reboot")
    assert commands_cancel(commands=[pending], actor="alice") == 1
    assert commands_cancel(commands=[pending], actor="alice") == 0
    assert Command.objects.get(pk=pending.pk).status == CommandStatus.CANCELLED
    retried = command_retry(command=Command.objects.get(pk=pending.pk), actor="alice")
    assert retried.retry_of_id == pending.pk and retried.status == CommandStatus.PENDING
    assert retried.command_type == "reboot" and retried.signature != pending.signature
    # Sent commands cannot be cancelled any more.
    agent.post("checkin", {})
    assert commands_cancel(commands=[retried], actor="alice") == 0


def test_silent_commands_time_out_and_fail_their_package_operation(agent):
    model = agent.model
    command = command_create(agent=model, command_type="dry_run_update", source="api",
                             params={"package_type": "apt", "packages": ["curl"]})
    update = PackageUpdate.objects.create(agent=model, package_type="apt", name="curl", current_version="1",
                                          available_version="2", status=UpdateStatus.APPROVED,
                                          operation_command=command)
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
    model = agent.model
    command = command_create(agent=model, command_type="dry_run_update", source="api",
                             params={"package_type": "apt", "packages": ["curl"]})
    update = PackageUpdate.objects.create(agent=model, package_type="apt", name="curl", current_version="1",
                                          available_version="2", status=UpdateStatus.APPROVED,
                                          operation_command=command)
    commands_cancel(commands=[command], actor="alice")
    update.refresh_from_db()
    assert update.status == UpdateStatus.APPROVED
    assert SystemEvent.objects.get(event_type="command_completed").metadata["status"] == "cancelled"
