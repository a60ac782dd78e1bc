"""Subsystems across the fleet (admin/subsystems.py): schedules changed in bulk."""

from __future__ import annotations

from agents_app.models import Agent, AgentSubsystem
from events_app.models import SystemEvent


def test_subsystems_across_the_fleet_change_in_bulk(admin_client, fleet):
    url = "/admin/agents_app/agentsubsystem/"
    apt = AgentSubsystem.objects.filter(name="apt")
    before = dict(Agent.objects.values_list("hostname", "config_version"))
    response = admin_client.post(url, {"action": "daily", "_selected_action": list(apt.values_list("pk", flat=True))})
    assert response.status_code == 302
    assert set(apt.values_list("interval_minutes", flat=True)) == {1440}
    after = dict(Agent.objects.values_list("hostname", "config_version"))
    assert after["web-01"] == before["web-01"] + 1 and after["db-01"] == before["db-01"]
    assert SystemEvent.objects.filter(event_type="config_changed", actor="admin",
                                      metadata__subsystems__apt__interval_minutes=1440).count() == 2
    assert admin_client.get(url, {"name__exact": "apt"}).context["cl"].result_count == 2
