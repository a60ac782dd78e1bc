"""Capabilities (services/capabilities.py): the agent's subsystems follow what it says it can scan.

Through the real check-in endpoint: what an agent reports at start-up enables and disables its
subsystems, once per change, with one config_changed event; a disabled subsystem gets no scheduled
scan and its undelivered scan is cancelled, so it can never become a failed command.
"""

from __future__ import annotations

from agents_app.models import Agent, AgentSubsystem, Command
from agents_app.services.capabilities import agent_capabilities_report
from agents_app.services.scheduling import schedule_due_scans
from events_app.models import SystemEvent
from tests.server.conftest import register

DEBIAN_WITH_DNF = ["apt", "dnf", "storage", "system"]
DEBIAN = ["apt", "storage", "system"]


def capability_events(agent_id) -> list[SystemEvent]:
    return list(SystemEvent.objects.filter(agent_id=agent_id, event_type="config_changed",
                                           message__startswith="Capabilities").order_by("seq"))


def enabled(agent_id) -> dict[str, bool]:
    return dict(AgentSubsystem.objects.filter(agent_id=agent_id).values_list("name", "enabled"))


def test_checkin_without_credentials_is_refused_before_capabilities_are_read(agent, client):
    response = client.post(f"/api/v1/agents/{agent.id}/checkin", {"capabilities": DEBIAN},
                           content_type="application/json")
    assert response.status_code == 401
    assert capability_events(agent.id) == []


def test_registration_records_what_the_agent_offers(enroll):
    agent = enroll(capabilities=DEBIAN_WITH_DNF)
    assert agent.model.capabilities == DEBIAN_WITH_DNF
    assert enabled(agent.id) == {"apt": True, "dnf": True, "storage": True, "system": True}


def test_an_unknown_capability_is_a_400_naming_the_field(enroll):
    agent = enroll(capabilities=DEBIAN)
    response = agent.post("checkin", {"capabilities": ["apt", "emerge"]})
    assert response.status_code == 400
    assert "capabilities" in response.content.decode()
    assert agent.model.capabilities == DEBIAN


def test_a_capability_that_stopped_working_disables_its_subsystem_and_cancels_its_pending_scan(enroll):
    agent = enroll(capabilities=DEBIAN_WITH_DNF)
    # The scheduler already queued a dnf scan (due at once after registration) before the agent restarted.
    assert schedule_due_scans(agent_ids=[agent.id]) == 4
    version = agent.model.config_version

    response = agent.post("checkin", {"capabilities": DEBIAN})

    assert response.status_code == 200
    delivered = {(command["type"], command["params"].get("package_type")) for command in response.json()["commands"]}
    assert ("scan_updates", "dnf") not in delivered and ("scan_updates", "apt") in delivered
    assert Command.objects.get(agent_id=agent.id, dedupe_key="scan_updates:dnf").status == "cancelled"
    assert enabled(agent.id) == {"apt": True, "dnf": False, "storage": True, "system": True}
    model = agent.model
    assert model.capabilities == DEBIAN and model.config_version == version + 1
    (event,) = capability_events(agent.id)
    assert event.message == "Capabilities of web-01 changed: no longer offers dnf"
    assert event.metadata == {"added": [], "removed": ["dnf"], "capabilities": DEBIAN, "cancelled_commands": 1}
    assert response.json()["config_version"] == version + 1

    # Disabled: however long the agent runs, no dnf scan is scheduled again.
    AgentSubsystem.objects.filter(agent_id=agent.id).update(next_run_at=None)
    schedule_due_scans(agent_ids=[agent.id])
    assert not Command.objects.filter(agent_id=agent.id, dedupe_key="scan_updates:dnf", status="pending").exists()


def test_the_same_set_again_changes_nothing_and_writes_nothing(enroll, django_assert_num_queries):
    agent = enroll(capabilities=DEBIAN)
    model = agent.model
    with django_assert_num_queries(0):
        assert agent_capabilities_report(agent=model, capabilities=list(reversed(DEBIAN))) is False
    assert agent.post("checkin", {"capabilities": DEBIAN}).status_code == 200
    assert capability_events(agent.id) == [] and agent.model.config_version == model.config_version


def test_a_capability_that_appears_gets_a_subsystem_due_at_once(enroll):
    agent = enroll(capabilities=DEBIAN)
    response = agent.post("checkin", {"capabilities": ["apt", "docker", "storage", "system"]})
    assert enabled(agent.id)["docker"] is True
    assert "scan_docker" in [command["type"] for command in response.json()["commands"]]
    (event,) = capability_events(agent.id)
    assert event.message == "Capabilities of web-01 changed: now offers docker"


def test_a_capability_back_again_enables_its_subsystem_again(enroll):
    agent = enroll(capabilities=DEBIAN_WITH_DNF)
    agent.post("checkin", {"capabilities": DEBIAN})
    agent.post("checkin", {"capabilities": DEBIAN_WITH_DNF})
    assert enabled(agent.id)["dnf"] is True
    assert [(event.metadata["added"], event.metadata["removed"]) for event in capability_events(agent.id)] == [
        ([], ["dnf"]), (["dnf"], [])]


def test_an_agent_that_never_reported_is_compared_with_its_subsystems(enroll):
    """Enrolled before agents reported capabilities: its subsystems stand for what it offered."""
    agent = enroll(capabilities=DEBIAN_WITH_DNF)
    Agent.objects.filter(pk=agent.id).update(capabilities=None)
    agent.post("checkin", {"capabilities": DEBIAN})
    assert enabled(agent.id)["dnf"] is False
    (event,) = capability_events(agent.id)
    assert event.metadata["removed"] == ["dnf"]


def test_re_enrolment_follows_what_the_machine_offers_now(enroll, client, registration_secret):
    agent = enroll(capabilities=DEBIAN_WITH_DNF)
    response = register(client, registration_secret, agent.machine_id, capabilities=DEBIAN,
                        refresh_token=agent.refresh_token)
    assert response.status_code == 201, response.content
    assert enabled(agent.id)["dnf"] is False and agent.model.capabilities == DEBIAN
