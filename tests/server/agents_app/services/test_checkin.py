"""One check-in (services/checkin.py): the agent is alive, its due scans are created, its commands delivered.

The delivery itself is tested in test_commands.py, the heartbeat in test_heartbeat.py, the check-in endpoint's
query counts in tests/server/agents_app/api/test_views.py.
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from agents_app.models import Agent, Command


def test_checkin_updates_last_seen_and_metrics(agent):
    Agent.objects.filter(pk=agent.id).update(last_seen_at=None)
    response = agent.post("checkin", {"agent_version": "0.1.1", "metrics": {"cpu_percent": 12.5}})
    assert response.status_code == 200
    body = response.json()
    assert body["commands"] == [] and body["config_version"] == 1 and body["poll_interval_seconds"] == 300
    assert body["heartbeat"] == {"active": False, "until": None}
    model = agent.model
    assert model.agent_version == "0.1.1" and model.metrics == {"cpu_percent": 12.5}
    assert timezone.now() - model.last_seen_at < timedelta(seconds=5)
    assert model.is_online and Agent.objects.online().filter(pk=agent.id).exists()


def test_checkin_creates_the_asking_agents_due_scans_at_once(fleet):
    agent = fleet[0]
    commands = agent.post("checkin", {}).json()["commands"]
    assert sorted(c["type"] for c in commands) == ["scan_docker", "scan_storage", "scan_system", "scan_updates"]
    assert Command.objects.exclude(agent_id=agent.id).count() == 0
