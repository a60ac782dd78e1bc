"""Commands (services/commands.py): signed envelopes, no doubles, delivery at check-in, retry.

Answers, time-outs and cancels are in test_results.py."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_client.protocol import command_signing_bytes_from_wire
from agents_app.choices import CommandStatus
from agents_app.models import Command
from agents_app.services.commands import (
    DELIVERY_BATCH,
    CommandAlreadyOpen,
    command_create,
    command_retry,
)
from agents_app.services.results import commands_cancel
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
