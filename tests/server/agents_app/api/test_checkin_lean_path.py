"""The check-in's lean path (CheckinAuthentication + checkin_claim) with the production counters: the
rate-limit windows in the database cache table, counted in the same statement as the check-in.

The rest of the suite runs with the counters in process memory (tests/settings.py); the answers
(401/403/409/429) are the same on both paths and tested in test_authentication.py and
test_throttling.py.
"""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection

from agents_app.models import Agent
from agents_app.services.agents import agent_revoke
from redflag.models import RequestNonce, ServerSettings

DATABASE_CACHE = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "redflag_cache"}}
# PostgreSQL: one statement. SQLite: savepoint, nonce, counter, UPDATE … RETURNING, release.
CHECKIN_QUERIES = {"postgresql": 1, "sqlite": 5}


@pytest.fixture
def database_counters(settings, db):
    settings.CACHES = DATABASE_CACHE
    call_command("createcachetable", verbosity=0)
    settings.REDFLAG_RATE_LIMIT_ENABLED = True


def counter_rows() -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        # The check-in's bucket only (the enrolment that made the agent counts in its own, "registration").
        cursor.execute("SELECT cache_key, value FROM redflag_cache WHERE cache_key LIKE 'redflag-rate:checkin:%%'")
        return sorted(cursor.fetchall())


def test_the_common_checkin_is_one_statement_with_its_counter(database_counters, agent, django_assert_num_queries):
    agent.post("checkin", {})  # warm the per-process settings cache
    with django_assert_num_queries(CHECKIN_QUERIES[connection.vendor]):
        response = agent.post("checkin", {"agent_version": "0.3.0", "metrics": {"cpu_percent": 12.5}})
    assert response.status_code == 200
    body = response.json()
    assert body["commands"] == [] and body["config_version"] == agent.model.config_version
    model = agent.model
    assert model.agent_version == "0.3.0" and model.metrics == {"cpu_percent": 12.5}
    assert counter_rows() == [(f"redflag-rate:checkin:{agent.id}", "2")]


def test_over_the_rate_is_429_and_records_nothing(database_counters, agent, enroll):
    row = ServerSettings.current()
    row.rate_checkin = "2/min"
    row.save()
    other = enroll()
    responses = [agent.post("checkin", {"agent_version": f"0.2.{index}"}) for index in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 429]
    assert responses[2].json()["error"]["code"] == "rate_limited" and int(responses[2]["Retry-After"]) >= 1
    assert agent.model.agent_version == "0.2.1"
    assert other.post("checkin", {}).status_code == 200
    assert dict(counter_rows())[f"redflag-rate:checkin:{agent.id}"] == "3"


def test_a_refused_checkin_takes_neither_nonce_nor_count(database_counters, agent):
    agent_revoke(agent=agent.model, actor="alice")
    before = Agent.objects.filter(pk=agent.id).values().get()
    response = agent.post("checkin", {"agent_version": "9.9.9"})
    assert response.status_code == 401  # the revocation bumped the credential generation: at once
    assert RequestNonce.objects.filter(agent_id=agent.id).count() == 0
    assert counter_rows() == []
    assert Agent.objects.filter(pk=agent.id).values().get() == before


def test_a_replayed_nonce_is_409_on_the_lean_path(database_counters, agent):
    nonce = "n" * 32
    assert agent.post("checkin", {}, HTTP_X_REQUEST_NONCE=nonce).status_code == 200
    seen = agent.model.last_seen_at
    response = agent.post("checkin", {"agent_version": "7.0.0"}, HTTP_X_REQUEST_NONCE=nonce)
    assert response.status_code == 409
    model = agent.model
    assert model.last_seen_at == seen and model.agent_version != "7.0.0"


def test_another_agents_path_records_nothing_for_the_token_holder(database_counters, agent, enroll):
    other = enroll()
    before = Agent.objects.filter(pk=agent.id).values().get()
    response = agent.client.post(f"/api/v1/agents/{other.id}/checkin", {"agent_version": "6.6.6"},
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 403
    assert Agent.objects.filter(pk=agent.id).values().get() == before
