"""Rate limits (redflag/api/throttling.py): per agent, per address, per admin log-in, and off by a setting."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from rest_framework.throttling import SimpleRateThrottle

from redflag.models import ServerSettings
from tests.server.conftest import REGISTER_URL, register

URL = REGISTER_URL


def test_checkin_is_rate_limited_per_agent(agent, enroll):
    row = ServerSettings.current()
    row.rate_checkin = "2/min"
    row.save()
    other = enroll()
    assert [agent.post("checkin", {}).status_code for _ in range(3)] == [200, 200, 429]
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


def test_admin_login_is_rate_limited(client, db):
    row = ServerSettings.current()
    row.rate_admin = "3/min"
    row.save()
    codes = [client.post("/admin/login/", {"username": "x", "password": "y"}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]


@pytest.mark.parametrize("endpoint", ["register", "checkin"])
def test_a_throttle_whose_cache_read_fails_answers_503(client, agent, endpoint, settings, monkeypatch):
    """The rate-limit counters live in the database cache in production: an outage there is a 503 too."""
    reads = []

    def unreachable(*args, **kwargs):
        reads.append(args)
        raise OperationalError("connection refused")

    settings.REDFLAG_RATE_LIMIT_ENABLED = True
    monkeypatch.setattr(SimpleRateThrottle.cache, "get", unreachable)
    if endpoint == "register":
        response = client.post("/api/v1/agents/register", {"registration_token": "x" * 40, "machine_id": "0" * 64},
                               content_type="application/json")
    else:
        response = agent.post("checkin", {"agent_version": "0.1.0"})
    assert reads, "the throttle never read its counter"
    assert response.status_code == 503, response.content
    assert response["Retry-After"].isdigit()
    assert response.json()["error"]["code"] == "unavailable"
