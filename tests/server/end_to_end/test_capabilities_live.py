"""A capability change reaching the server: the real agent (a subprocess) against a live server.

The reported bug: an agent on Debian offered DNF because /usr/bin/dnf exists, and every DNF scan
failed. Here the server holds such an agent (DNF offered at enrolment, a DNF scan queued); the
agent starts, probes the real dnf of this machine (installed, no enabled repository), and its
first check-in makes the server disable DNF: the queued scan is cancelled, never delivered, so no
command fails, and one event says what changed.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from agent_client.scanners.dnf import DnfScanner
from agents_app.models import Agent, Command
from agents_app.services.scheduling import schedule_due_scans
from agents_app.services.subsystems import subsystems_ensure
from events_app.models import SystemEvent
from tests.agent.conftest import require_tools
from tests.server.end_to_end.test_agent import run_agent
from tokens_app.services import token_create


@pytest.mark.django_db(transaction=True)
def test_dnf_that_does_not_work_here_is_withdrawn_at_the_agents_start(live_server, tmp_path):
    require_tools("dnf")
    _, secret = token_create(label="capabilities", max_seats=1, expires_in=timedelta(hours=1))
    config_path = tmp_path / "agent" / "config.json"
    if DnfScanner().is_available():
        pytest.skip("this machine's dnf has an enabled repository: DNF really works here")
    # Only what the test needs scanned: system facts and DNF (the real apt scan is tested elsewhere).
    registered = run_agent(config_path, "register", "--server", live_server.url, "--capabilities", "system,dnf",
                           token=secret)
    assert registered.returncode == 0, registered.stderr
    agent = Agent.objects.get(pk=json.loads(config_path.read_text())["agent_id"])
    assert agent.capabilities == ["system"]  # the agent never offers a dnf that cannot scan

    # The server as an older agent left it: DNF offered at enrolment, its scan queued.
    subsystems_ensure(agent=agent, capabilities=["dnf"])
    Agent.objects.filter(pk=agent.pk).update(capabilities=["dnf", "system"])
    schedule_due_scans(agent_ids=[agent.pk])
    queued = Command.objects.get(agent=agent, dedupe_key="scan_updates:dnf")

    ran = run_agent(config_path, "run", "--once")
    assert ran.returncode == 0, ran.stderr

    agent.refresh_from_db()
    assert agent.capabilities == ["system"]
    assert dict(agent.subsystems.values_list("name", "enabled")) == {"dnf": False, "system": True}
    queued.refresh_from_db()
    assert queued.status == "cancelled" and queued.sent_at is None
    assert not Command.objects.filter(agent=agent, status="failed").exists()
    (event,) = SystemEvent.objects.filter(agent=agent, event_type="config_changed",
                                          message__startswith="Capabilities")
    assert event.metadata["removed"] == ["dnf"] and event.actor == f"agent:{agent.hostname}"
    # The system scan still ran: the agent is otherwise untouched.
    assert Command.objects.get(agent=agent, command_type="scan_system").status == "succeeded"
