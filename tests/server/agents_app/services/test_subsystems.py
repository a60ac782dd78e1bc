"""Subsystems (services/subsystems.py): what an agent scans and how often, and the config it syncs."""

from __future__ import annotations

import pytest

from agents_app.models import AgentSubsystem
from agents_app.services.subsystems import subsystems_configure, subsystems_update
from events_app.models import SystemEvent
from redflag.errors import InvalidRequest


def test_registration_creates_the_reported_subsystems(enroll):
    agent = enroll(capabilities=["apt", "storage"])
    subsystems = {s.name: s for s in AgentSubsystem.objects.filter(agent_id=agent.id)}
    assert set(subsystems) == {"apt", "storage"}
    assert subsystems["apt"].interval_minutes == 360 and subsystems["storage"].interval_minutes == 60
    assert all(s.next_run_at is None for s in subsystems.values())  # due at once


def test_scan_result_updates_the_subsystem(fleet):
    agent = fleet[0]
    commands = {c["type"]: c for c in agent.post("checkin", {}).json()["commands"]}
    agent.post(f"commands/{commands['scan_updates']['id']}/result", {"status": "failed", "output": "E: apt broke"})
    apt = AgentSubsystem.objects.get(agent_id=agent.id, name="apt")
    assert apt.last_status == "failed" and "apt broke" in apt.last_error and apt.last_run_at


def test_subsystem_change_bumps_config_version_and_config_has_an_etag(enroll):
    agent = enroll(capabilities=["apt"])
    response = agent.client.get(f"/api/v1/agents/{agent.id}/config", **agent.headers())
    assert response.status_code == 200
    body, etag = response.json(), response["ETag"]
    assert body["subsystems"] == [{"name": "apt", "enabled": True, "auto_run": True, "interval_minutes": 360}]
    unchanged = agent.client.get(f"/api/v1/agents/{agent.id}/config", HTTP_IF_NONE_MATCH=etag, **agent.headers())
    assert unchanged.status_code == 304
    assert unchanged.content == b"" and unchanged["ETag"] == etag
    subsystem = AgentSubsystem.objects.get(agent_id=agent.id)
    assert subsystems_update(changes={subsystem.pk: {"interval_minutes": 360}}, actor="alice") == 0  # as it was
    assert agent.model.config_version == body["config_version"]
    assert subsystems_update(changes={subsystem.pk: {"interval_minutes": 60}}, actor="alice") == 1
    assert agent.model.config_version == body["config_version"] + 1
    assert agent.post("checkin", {}).json()["config_version"] == body["config_version"] + 1
    changed = agent.client.get(f"/api/v1/agents/{agent.id}/config", HTTP_IF_NONE_MATCH=etag, **agent.headers())
    assert changed.status_code == 200 and changed.json()["subsystems"][0]["interval_minutes"] == 60


def test_bulk_subsystem_configuration_bumps_each_agent_once_and_records_it(fleet):
    before = {agent.id: agent.model.config_version for agent in fleet}
    updates = AgentSubsystem.objects.filter(name__in=["apt", "docker"])
    assert subsystems_configure(subsystems=updates, changes={"interval_minutes": 720}, actor="alice") == 6
    assert set(AgentSubsystem.objects.filter(name="apt").values_list("interval_minutes", flat=True)) == {720}
    assert {agent.id: agent.model.config_version for agent in fleet} == {k: v + 1 for k, v in before.items()}
    assert SystemEvent.objects.filter(event_type="config_changed", actor="alice").count() == 3
    # Nothing to change: no bump, no event.
    assert subsystems_configure(subsystems=updates, changes={"interval_minutes": 720}, actor="alice") == 0
    assert {agent.id: agent.model.config_version for agent in fleet} == {k: v + 1 for k, v in before.items()}
    with pytest.raises(InvalidRequest, match="not a subsystem setting: next_run_at"):
        subsystems_configure(subsystems=updates, changes={"next_run_at": None}, actor="alice")
