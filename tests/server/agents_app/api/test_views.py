"""The agent endpoints (api/views.py): the check-in's constant query count and its validation, the config's credentials.

Each endpoint's authentication is tested in test_authentication.py, what it does in the service tests
(tests/server/agents_app/services/), hostile bodies in test_hostile_input.py.
"""

from __future__ import annotations

import pytest
from django.db import connection

from agents_app.services.commands import command_create


def test_config_requires_credentials(client, agent):
    response = client.get(f"/api/v1/agents/{agent.id}/config")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "ETag" not in response  # nothing of the config is given away


# The common check-in (nothing due, nothing pending) is one statement on PostgreSQL: credentials,
# nonce, rate count, "alive" and "anything due or pending?" (checkin_claim). SQLite runs the nonce
# and the UPDATE … RETURNING apart, in a savepoint. (Counters are in process memory in tests.)
COMMON_CHECKIN_QUERIES = {"postgresql": 1, "sqlite": 4}


def test_checkin_query_count_does_not_grow_with_the_fleet(agent, enroll, django_assert_num_queries):
    agent.post("checkin", {})  # warm the per-process settings cache
    expected = COMMON_CHECKIN_QUERIES[connection.vendor]
    with django_assert_num_queries(expected):
        assert agent.post("checkin", {}).status_code == 200
    for index in range(12):
        enroll(hostname=f"other-{index}").post("checkin", {})
    with django_assert_num_queries(expected):
        assert agent.post("checkin", {}).status_code == 200


def test_checkin_query_count_does_not_grow_with_pending_commands(agent, django_assert_num_queries):
    agent.post("checkin", {})
    model = agent.model
    command_create(agent=model, command_type="reboot", source="api")
    # + the pending commands, one claim (in a transaction of its own, which logs no statement; when the claim
    # takes every row it read, nothing is read back; signing at delivery only reads the primary key when a
    # scheduled scan is among them)
    expected = COMMON_CHECKIN_QUERIES[connection.vendor] + 2
    with django_assert_num_queries(expected):
        assert len(agent.post("checkin", {}).json()["commands"]) == 1
    for package_type in ("apt", "dnf", "docker", "winget", "windows_update"):
        command_create(agent=model, command_type="scan_updates", params={"package_type": package_type}, source="api")
    command_create(agent=model, command_type="scan_storage", source="api")
    with django_assert_num_queries(expected):
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
