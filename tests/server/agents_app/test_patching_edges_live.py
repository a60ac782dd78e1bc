"""The real agent (a subprocess) against a live server: tags from its config file put it in a group, and
that group's announced reboot reaches ``shutdown`` with its delay and message.

``shutdown`` is a recording script placed first on the agent's PATH: it writes its arguments to a file and
exits 0, so nothing reboots.
"""

from __future__ import annotations

import json
import os

import pytest

from agents_app.admin.groups import ANNOUNCED_REBOOT
from agents_app.models import Agent, AgentGroup, BulkOperation, Command
from agents_app.services.bulk import bulk_operation_run
from agents_app.services.commands import command_create
from agents_app.services.groups import groups_bulk_operation_start
from tests.server.end_to_end.test_agent import enroll_for_commands, run_agent

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fake_shutdown(tmp_path, monkeypatch):
    directory = tmp_path / "bin"
    directory.mkdir()
    log = tmp_path / "shutdown.args"
    script = directory / "shutdown"
    script.write_text(f'#!/bin/sh\nfor argument in "$@"; do printf "%s\\n" "$argument"; done > "{log}"\n'
                      'echo "Shutdown scheduled"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return log


def test_config_tags_group_the_agent_and_its_groups_announced_reboot_reaches_shutdown(live_server, tmp_path,
                                                                                       fake_shutdown, monkeypatch):
    agent, config_path = enroll_for_commands(live_server.url, tmp_path, "edges")
    config = json.loads(config_path.read_text())
    config["tags"] = ["production", "eu-west"]
    config_path.write_text(json.dumps(config))
    group = AgentGroup.objects.create(name="production", rule_tag="production")
    assert not group.agents().exists()

    command_create(agent=agent, command_type="scan_system", source="api")
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    assert Agent.objects.get(pk=agent.pk).reported_tags == ["production", "eu-west"]
    assert list(group.agents()) == [agent]
    assert json.loads(config_path.read_text())["tags"] == ["production", "eu-west"]  # the agent keeps them

    monkeypatch.setattr("agents_app.services.bulk.async_task", lambda *args, **kwargs: None)
    operation = groups_bulk_operation_start(kind=BulkOperation.Kind.REBOOT, groups=[group], params=ANNOUNCED_REBOOT)
    bulk_operation_run(str(operation.pk))
    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr

    reboot = Command.objects.get(agent=agent, command_type="reboot")
    assert reboot.status == "succeeded", reboot.output
    assert reboot.result["details"] == {"delay_minutes": 10}
    assert fake_shutdown.read_text().splitlines() == ["-r", "+10", ANNOUNCED_REBOOT["message"]]
