"""Rate limits (redflag/api/throttling.py): per agent, per address, per admin log-in, and off by a setting."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from rest_framework.throttling import SimpleRateThrottle

from agents_app.models import Agent
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.conftest import REGISTER_URL, register

URL = REGISTER_URL


def test_checkin_is_rate_limited_per_agent(agent, enroll):
    row = ServerSettings.current()
    row.rate_checkin = "2/min"
    row.save()
    other = enroll()
    responses = [agent.post("checkin", {"agent_version": f"0.2.{index}"}) for index in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 429]
    assert responses[2].json()["error"]["code"] == "rate_limited" and int(responses[2]["Retry-After"]) >= 1
    assert agent.model.agent_version == "0.2.1"  # the refused check-in was not applied
    assert other.post("checkin", {}).status_code == 200


def test_registration_is_rate_limited_per_ip(client, registration_secret):
    row = ServerSettings.current()
    row.rate_registration = "2/hour"
    row.save()
    assert register(client, registration_secret).status_code == 201
    assert register(client, registration_secret).status_code == 201
    response = register(client, registration_secret)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(response["Retry-After"]) <= 3600


def test_rate_limits_can_be_switched_off(client, registration_secret, settings):
    settings.REDFLAG_RATE_LIMIT_ENABLED = False
    row = ServerSettings.current()
    row.rate_registration = "1/hour"
    row.save()
    assert [register(client, registration_secret).status_code for _ in range(3)] == [201, 201, 201]
    assert Agent.objects.count() == 3


def test_admin_login_is_rate_limited(client, db):
    row = ServerSettings.current()
    row.rate_admin = "3/min"
    row.save()
    responses = [client.post("/admin/login/", {"login": "x", "password": "y"}) for _ in range(4)]
    codes = [response.status_code for response in responses]
    assert codes == [200, 200, 200, 429]
    assert "Too many log-in attempts" in responses[3].content.decode() and int(responses[3]["Retry-After"]) >= 1
    # The refused attempt never reached authentication: three failed log-ins are on record, not four.
    assert SystemEvent.objects.filter(event_type="auth_failure", metadata__username="x").count() == 3


@pytest.mark.parametrize("endpoint", ["register", "checkin"])
def test_a_throttle_whose_cache_read_fails_answers_503(client, agent, endpoint, settings, monkeypatch):
    """The rate-limit counters live in the database cache in production: an outage there is a 503 too."""
    reads = []

    def unreachable(*args, **kwargs):
        reads.append(args)
        raise OperationalError("connection refused")

    settings.REDFLAG_RATE_LIMIT_ENABLED = True
    monkeypatch.setattr(SimpleRateThrottle.cache, "get", unreachable)
    monkeypatch.setattr(SimpleRateThrottle.cache, "add", unreachable)  # the per-agent window counters
    if endpoint == "register":
        response = client.post("/api/v1/agents/register", {"registration_token": "x" * 40, "machine_id": "0" * 64},
                               content_type="application/json")
    else:
        response = agent.post("checkin", {"agent_version": "0.1.0"})
    assert reads, "the throttle never read its counter"
    assert response.status_code == 503, response.content
    assert response["Retry-After"].isdigit()
    assert response.json()["error"]["code"] == "unavailable"


def test_a_429_says_when_to_retry_also_after_an_admin_lowers_the_rate(agent):
    """DRF has no wait to give when the history already holds more requests than a lowered rate allows."""
    row = ServerSettings.current()
    row.rate_checkin = "5/min"
    row.save()
    assert [agent.post("checkin", {}).status_code for _ in range(5)] == [200] * 5
    row.rate_checkin = "2/min"  # lowered below the five already counted
    row.save()
    ServerSettings.forget()
    refused = agent.post("checkin", {})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused["Retry-After"]) <= 60
