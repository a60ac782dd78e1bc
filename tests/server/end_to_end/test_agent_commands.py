"""The real agent runs the server's signed commands: live server, agent as a subprocess.

Commands created on the server reach the agent at check-in, are verified with
the keys it pinned at registration, run once, and their reports and results
land back on the server. A rotated signing key is accepted through its
endorsement; a key swapped in without rotation is refused and reported.
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents_app.models import Agent, Command, UpdateLog
from agents_app.services.commands import command_create
from events_app.models import SystemEvent
from tests.server.end_to_end.test_agent import enroll_for_commands, run_agent
from tokens_app import signing


@pytest.fixture
def enrolled(live_server, tmp_path, transactional_db):
    return enroll_for_commands(live_server.url, tmp_path, "commands")


def queue(agent, command_type, **params):
    return command_create(agent=agent, command_type=command_type, params=params, source="api")


def test_signed_commands_run_once_and_their_results_and_reports_arrive(enrolled):
    agent, config_path = enrolled
    system = queue(agent, "scan_system")
    heartbeat = queue(agent, "enable_heartbeat", duration_minutes=15)
    dry_run = queue(agent, "dry_run_update", package_type="winget", packages=["Mozilla.Firefox"])

    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr

    statuses = dict(Command.objects.values_list("pk", "status"))
    assert statuses == {system.pk: "succeeded", heartbeat.pk: "succeeded", dry_run.pk: "failed"}
    agent = Agent.objects.get(pk=agent.pk)
    assert agent.system_info["hostname"] and agent.system_info["disks"]
    assert agent.system_reported_at is not None
    assert agent.heartbeat_until is not None
    assert "winget.exe not found" in Command.objects.get(pk=dry_run.pk).output
    assert UpdateLog.objects.get().succeeded is False
    # The agent follows heartbeat mode now.
    assert json.loads(config_path.read_text())["heartbeat_until"]

    # Nothing runs twice: the server does not resend, and a second run finds nothing to do.
    again = run_agent(config_path, "run", "--once")
    assert again.returncode == 0, again.stderr
    assert dict(Command.objects.values_list("pk", "status")) == statuses


def test_rotated_key_is_followed_and_an_unendorsed_key_is_refused(enrolled, settings):
    agent, config_path = enrolled
    signing.signing_key_rotate(actor="test")
    after_rotation = queue(agent, "scan_storage")
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert Command.objects.get(pk=after_rotation.pk).status == "succeeded"
    pinned = [key["key_id"] for key in json.loads(config_path.read_text())["signing_keys"]]
    assert signing.primary_key().key_id in pinned and len(pinned) == 2

    # Someone replaces the key file without a rotation: nothing endorses the new key.
    signing._write_private_key(settings.REDFLAG_SIGNING_KEY_FILE, Ed25519PrivateKey.generate())
    signing._loaded.clear()
    forged = queue(agent, "reboot")
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert Command.objects.get(pk=forged.pk).status == "sent"  # delivered, never run, never answered
    refusal = SystemEvent.objects.get(agent=agent, event_type="security_violation")
    assert refusal.metadata["reason"] == "unknown_key" and refusal.metadata["command_id"] == str(forged.pk)
