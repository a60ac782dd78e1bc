"""The upgrade path, for real: an agent running release 0.1.23 is updated to 0.1.23.5 from the server.

Both releases are built with build_agent_release's code path (signed manifests);
the agent runs as `python redflag-agent.pyz` (the service manager's restart is
the test starting the file again after exit code 75).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from agent_client.selfupdate import RESTART_EXIT_CODE
from agents_app.models import Agent, AgentSubsystem, BulkOperation, Command
from agents_app.services.agent_upgrade import UPDATE_REPORT_TIMEOUT, agent_update_start
from agents_app.services.bulk import bulk_operation_run
from agents_app.services.releases import ReleaseError, release_build
from agents_app.services.results import commands_time_out
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tokens_app.services import token_create


def run_pyz(pyz: Path, config: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDFLAG_REGISTRATION_TOKEN": token} if token else None
    return subprocess.run([sys.executable, str(pyz), "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def releases(transactional_db):
    row = ServerSettings.current()
    row.heartbeat_before_operations = False
    row.save()
    return {version: release_build(version=version, actor="test") for version in ("0.1.23", "0.1.23.5", "0.1.24")}


@pytest.fixture
def installed(live_server, releases, tmp_path):
    pyz = tmp_path / "bin" / "redflag-agent.pyz"
    pyz.parent.mkdir()
    shutil.copyfile(releases["0.1.23"].artifact.path, pyz)
    config = tmp_path / "agent" / "config.json"
    _, secret = token_create(label="update", max_seats=1, expires_in=timedelta(hours=1))
    registered = run_pyz(pyz, config, "register", "--server", live_server.url, "--capabilities", "system",
                         token=secret)
    assert registered.returncode == 0, registered.stderr
    agent = Agent.objects.get(pk=json.loads(config.read_text())["agent_id"])
    assert agent.agent_version == "0.1.23"
    AgentSubsystem.objects.filter(agent=agent).update(auto_run=False)
    return agent, pyz, config


def test_agent_updates_itself_and_comes_back_as_the_new_version(installed, releases):
    agent, pyz, config = installed
    original = pyz.read_bytes()
    command = agent_update_start(agent=agent, release=releases["0.1.23.5"], source="web_ui", actor="admin")

    first = run_pyz(pyz, config, "run", "--once")
    assert first.returncode == RESTART_EXIT_CODE, first.stderr
    assert pyz.read_bytes() == Path(releases["0.1.23.5"].artifact.path).read_bytes()
    assert pyz.with_name("redflag-agent.pyz.previous").read_bytes() == original
    assert Command.objects.get(pk=command.pk).status == "running"

    second = run_pyz(pyz, config, "run", "--once")  # the service manager starts the new file
    assert second.returncode == 0, second.stderr
    agent = Agent.objects.get(pk=agent.pk)
    assert agent.agent_version == "0.1.23.5"
    assert Command.objects.get(pk=command.pk).status == "succeeded"
    assert Agent.objects.count() == 1  # same agent id, working credentials, no re-registration
    updates = SystemEvent.objects.filter(event_type="agent_update").order_by("created_at")
    assert [event.event_subtype for event in updates] == ["initiated", "success"]
    for event in updates:
        assert {key: event.metadata[key] for key in ("old_version", "new_version", "platform", "source")} == {
            "old_version": "0.1.23", "new_version": "0.1.23.5", "platform": "any", "source": "web_ui"}


def test_a_tampered_artifact_is_refused_and_reported(installed, releases):
    agent, pyz, config = installed
    original = pyz.read_bytes()
    stored = Path(releases["0.1.24"].artifact.path)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit after the manifest was signed
    stored.write_bytes(bytes(data))
    command = agent_update_start(agent=agent, release=releases["0.1.24"], source="web_ui", actor="admin")

    ran = run_pyz(pyz, config, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert pyz.read_bytes() == original and not pyz.with_name("redflag-agent.pyz.previous").exists()
    assert Command.objects.get(pk=command.pk).status == "failed"
    violation = SystemEvent.objects.get(agent=agent, event_type="security_violation")
    assert violation.metadata["reason"] == "bad_artifact"
    assert SystemEvent.objects.filter(event_type="agent_update", event_subtype="failed").count() == 1


def test_the_server_refuses_an_unasked_downgrade(installed, releases):
    agent, _, _ = installed
    Agent.objects.filter(pk=agent.pk).update(agent_version="0.1.24")
    agent.refresh_from_db()
    with pytest.raises(ReleaseError, match="downgrade"):
        agent_update_start(agent=agent, release=releases["0.1.23.5"], source="web_ui", actor="admin")


def test_update_from_the_admin_one_agent_and_in_bulk(admin_client, installed, releases, enroll):
    agent, _, _ = installed
    url = "/admin/agents_app/agent/"
    response = admin_client.post(url, {"action": "update_agent", "_selected_action": [agent.pk]})
    command = Command.objects.get(command_type="update_agent")
    assert response.status_code == 302 and str(command.pk) in response["Location"]
    assert command.params["version"] == "0.1.24" and command.source == "web_ui"

    others = [enroll(hostname=f"bulk-{index}", agent_version="0.1.23") for index in range(2)]
    admin_client.post(url, {"action": "update_agent", "_selected_action": [other.id for other in others]})
    operation = BulkOperation.objects.get(kind="update_agent")
    bulk_operation_run(str(operation.pk))
    operation.refresh_from_db()
    assert (operation.done, operation.failed) == (2, 0)
    bulk_events = SystemEvent.objects.filter(event_type="agent_update", event_subtype="initiated",
                                             metadata__source="web_ui_bulk")
    assert sorted(bulk_events.values_list("hostname", flat=True)) == ["bulk-0", "bulk-1"]


def test_an_update_that_never_reports_back_fails_after_15_minutes(installed, releases):
    agent, _, _ = installed
    command = agent_update_start(agent=agent, release=releases["0.1.23.5"], source="web_ui", actor="admin")
    Command.objects.filter(pk=command.pk).update(status="sent", sent_at=timezone.now())
    assert commands_time_out(now=timezone.now() + UPDATE_REPORT_TIMEOUT - timedelta(minutes=1)) == 0
    assert commands_time_out(now=timezone.now() + UPDATE_REPORT_TIMEOUT + timedelta(minutes=1)) == 1
    failed = SystemEvent.objects.get(event_type="agent_update", event_subtype="failed")
    assert failed.metadata["new_version"] == "0.1.23.5" and "timed out" in failed.metadata["reason"]
