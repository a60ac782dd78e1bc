"""Asking agents to verify their scans: the per-agent ``verify_scans`` setting puts ``verify: true`` in the
signed params of every package scan the server creates for it (scheduled or "scan now")."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_client.protocol import command_signing_bytes_from_wire
from agents_app.models import BulkOperation, Command
from agents_app.services.agents import agent_settings_update
from agents_app.services.bulk import bulk_operation_run, bulk_operation_start
from agents_app.services.scheduling import schedule_due_scans
from events_app.models import SystemEvent
from tokens_app.models import SigningKey


def scan_params(agent_id) -> dict[str, dict]:
    return {command.dedupe_key: command.params for command in Command.objects.filter(agent_id=agent_id)}


def test_an_agent_asked_to_verify_gets_verify_in_its_signed_package_scans(fleet):
    asked, other = fleet[0], fleet[1]
    assert agent_settings_update(agent=asked.model, changes={"verify_scans": True}, actor="admin") is True
    assert SystemEvent.objects.filter(agent_id=asked.id, event_type="config_changed",
                                      metadata__verify_scans=True).exists()

    schedule_due_scans()

    assert scan_params(asked.id) == {
        "scan_updates:apt": {"package_type": "apt", "verify": True},
        "scan_docker:docker": {"package_type": "docker", "verify": True},
        "scan_storage": {}, "scan_system": {},
    }
    assert scan_params(other.id)["scan_updates:apt"] == {"package_type": "apt"}
    # What the agent checks, as the check-in hands the scan over (signed at delivery): the signature covers
    # the verify flag.
    wire = next(command for command in asked.post("checkin", {}).json()["commands"]
                if command["params"].get("package_type") == "apt")
    assert wire["params"] == {"package_type": "apt", "verify": True}
    key = SigningKey.objects.get(key_id=wire["key_id"])
    Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key)).verify(
        base64.b64decode(wire["signature"]), command_signing_bytes_from_wire(wire))


def test_scan_now_asks_for_verification_too(fleet, admin_user):
    asked = fleet[0]
    agent_settings_update(agent=asked.model, changes={"verify_scans": True}, actor="admin")
    operation = bulk_operation_start(kind=BulkOperation.Kind.SCAN, agent_ids=[asked.id], user=admin_user)
    bulk_operation_run(str(operation.pk))
    assert scan_params(asked.id)["scan_updates:apt"] == {"package_type": "apt", "verify": True}
