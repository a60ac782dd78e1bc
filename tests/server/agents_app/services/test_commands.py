"""Commands (services/commands.py): signed envelopes (scheduled scans signed at delivery), no doubles,
delivery at check-in, retry.

Answers, time-outs and cancels are in test_results.py."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.utils import timezone

from agent_client.protocol import command_signing_bytes_from_wire
from agents_app.choices import CommandStatus
from agents_app.models import Command
from agents_app.services import commands as commands_module
from agents_app.services.commands import (
    DELIVERY_BATCH,
    CommandAlreadyOpen,
    command_create,
    command_retry,
    commands_deliver,
    wire_format,
)
from agents_app.services.results import commands_cancel
from agents_app.services.scheduling import schedule_due_scans
from events_app.models import SystemEvent
from tests.server.agents_app.services.conftest import CAPABILITIES
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


def test_scheduled_scans_are_signed_as_they_are_delivered_and_keep_that_signature(enroll):
    agent = enroll(hostname="scanned", capabilities=CAPABILITIES)
    assert schedule_due_scans() == 4
    assert set(Command.objects.values_list("signature", flat=True)) == {""}
    delivered = agent.post("checkin", {}).json()["commands"]
    assert len(delivered) == 4
    for wire in delivered:
        verify(wire)
    assert len({wire["nonce"] for wire in delivered}) == 4 and all(len(wire["nonce"]) >= 22 for wire in delivered)
    # What was handed over is on the row: the same bytes again, were it ever handed over again.
    stored = {str(command.pk): wire_format(command) for command in Command.objects.all()}
    assert all(stored[wire["id"]] == wire for wire in delivered)
    assert set(Command.objects.values_list("status", flat=True)) == {CommandStatus.SENT}


@pytest.mark.parametrize("command_type, params, source", [
    ("reboot", {}, "api"),                                         # signed at creation, signature wiped
    ("scan_updates", {"package_type": "apt"}, "api"),               # a scan, but not the scheduler's
    ("scan_updates", {"package_type": "apt", "extra": "-o x"}, "scheduler"),
    ("scan_storage", {"verify": True}, "scheduler"),                # verify is for package scans only
    ("install_updates", {"package_type": "apt", "packages": ["curl"]}, "scheduler"),
])
def test_an_unsigned_command_that_is_no_scheduled_scan_is_refused_never_signed(agent, command_type, params, source):
    """Only the scheduler's scans are stored unsigned: anything else unsigned was written behind RedFlag's back."""
    command = queue(agent, "reboot")
    Command.objects.filter(pk=command.pk).update(command_type=command_type, params=params, source=source,
                                                 nonce="", key_id="", signature="")
    assert agent.post("checkin", {}).json()["commands"] == []
    refused = Command.objects.get(pk=command.pk)
    assert refused.status == CommandStatus.FAILED and refused.signature == "" and refused.sent_at is None
    event = SystemEvent.objects.get(event_type="security_violation")
    assert event.severity == "critical" and str(command.pk) in event.metadata["commands"]


def test_a_concurrent_checkin_that_claims_first_wins_and_keeps_its_signature(enroll, monkeypatch):
    """The other check-in claims (and signs) the scans between this one's read and its claim: this one
    hands over nothing, and the signatures on the rows are the winner's."""
    agent = enroll(hostname="raced", capabilities=CAPABILITIES)
    schedule_due_scans()
    model, now = agent.model, timezone.now()
    real_primary_key, winner = commands_module.primary_key, []

    def other_checkin_first():
        monkeypatch.setattr(commands_module, "primary_key", real_primary_key)
        winner.extend(commands_deliver(agent=model, now=now - timedelta(seconds=1)))
        return real_primary_key()

    monkeypatch.setattr(commands_module, "primary_key", other_checkin_first)
    assert commands_deliver(agent=model, now=now) == []
    assert len(winner) == 4
    for command in winner:
        assert wire_format(Command.objects.get(pk=command.pk)) == wire_format(command)
        verify(wire_format(command))
