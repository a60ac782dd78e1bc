"""The strict JSON parser (redflag/api/parsers.py): malformed, invalid or hostile JSON is a 400 naming the problem."""

from __future__ import annotations

import json

import pytest

from agents_app.models import Agent


def agent_row(agent) -> dict:
    """What a check-in would change (last seen, version, metrics): equal before and after a refused one."""
    return Agent.objects.filter(pk=agent.id).values().get()


def test_malformed_json_is_400(agent):
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", "{not json",
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400 and response.json()["error"]["code"] == "parse_error"


def test_invalid_utf8_is_400(agent):
    before = agent_row(agent)
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", b'{"agent_version": "\xff\xfe"}',
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    assert response.json()["error"] == {"code": "parse_error", "message": "The body is not valid UTF-8."}
    assert agent_row(agent) == before


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deep_nesting_is_400(agent, depth):
    body = '{"events": [{"metadata": ' + "[" * depth + "]" * depth + "}]}"
    response = agent.client.post(f"/api/v1/agents/{agent.id}/events", body,
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    assert "nests deeper" in response.json()["error"]["message"]


def test_nan_is_400(agent):
    before = agent_row(agent)
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", '{"metrics": {"cpu_percent": NaN}}',
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "parse_error" and "NaN is not valid JSON" in error["message"]
    assert agent_row(agent) == before


def test_wrong_top_level_type_is_400(agent):
    before = agent_row(agent)
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", json.dumps([1, 2]),
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and "Expected a dictionary" in " ".join(error["fields"]["body"])
    assert agent_row(agent) == before


def test_nul_characters_are_400_not_a_database_error(agent):
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", '{"agent_version": "0.1\\u0000"}',
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["message"]


def test_lone_surrogate_escapes_are_400(agent):
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", '{"agent_version": "\\udad1x"}',
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]["message"]
