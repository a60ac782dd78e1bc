"""The agent endpoints (api/views.py): the check-in's constant query count and its validation, the config's credentials.

Each endpoint's authentication is tested in test_authentication.py, what it does in the service tests
(tests/server/agents_app/services/), hostile bodies in test_hostile_input.py.
"""

from __future__ import annotations

import pytest

from agents_app.services.commands import command_create


def test_config_requires_credentials(client, agent):
    response = client.get(f"/api/v1/agents/{agent.id}/config")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "ETag" not in response  # nothing of the config is given away


def test_checkin_query_count_does_not_grow_with_the_fleet(agent, enroll, django_assert_num_queries):
    """Auth (1), nonce (savepoint, insert, release), update (1), due scans (1), pending commands (1)."""
    agent.post("checkin", {})  # warm the per-process settings cache
    with django_assert_num_queries(7):
        assert agent.post("checkin", {}).status_code == 200
    for index in range(12):
        enroll(hostname=f"other-{index}").post("checkin", {})
    with django_assert_num_queries(7):
        assert agent.post("checkin", {}).status_code == 200


def test_checkin_query_count_does_not_grow_with_pending_commands(agent, django_assert_num_queries):
    agent.post("checkin", {})
    model = agent.model
    command_create(agent=model, command_type="reboot", source="api")
    with django_assert_num_queries(11):  # + savepoint, claim, read back, release
        assert len(agent.post("checkin", {}).json()["commands"]) == 1
    for package_type in ("apt", "dnf", "docker", "winget", "windows_update"):
        command_create(agent=model, command_type="scan_updates", params={"package_type": package_type}, source="api")
    command_create(agent=model, command_type="scan_storage", source="api")
    with django_assert_num_queries(11):
        assert len(agent.post("checkin", {}).json()["commands"]) == 6


@pytest.mark.parametrize("metrics, field", [
    ({"cpu_percent": 101}, "metrics.cpu_percent"),
    ({"cpu_percent": "lots"}, "metrics.cpu_percent"),
    ({"load_average": [1, 2, 3, 4]}, "metrics.load_average"),
])
def test_checkin_bad_metrics_are_named(agent, metrics, field):
    response = agent.post("checkin", {"metrics": metrics})
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
