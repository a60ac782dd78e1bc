"""Agent authentication (api/authentication.py), on every agent endpoint: 401/403 before anything else.

The bearer access token, the machine id it is bound to, the agent in the path, the single-use nonce and the
timestamp window.
"""

from __future__ import annotations

import time
import uuid

import pytest
from django.core import signing

from agents_app.models import Agent
from agents_app.services.agents import agent_revoke
from events_app.models import SystemEvent
from redflag.models import RequestNonce
from tests.server.conftest import machine_hash, security_headers, valid_body

AGENT_ENDPOINTS = ["checkin", "events"]


def request_effects(agent) -> tuple:
    """What an accepted check-in or events request leaves: the agent's row, the event it sends, a spent nonce."""
    return (Agent.objects.filter(pk=agent.id).values().get(),
            SystemEvent.objects.filter(event_type="agent_startup").count(), RequestNonce.objects.count())




@pytest.mark.parametrize("endpoint", AGENT_ENDPOINTS)
class TestCredentialsFirst:
    def test_no_credentials_is_401(self, client, agent, endpoint):
        response = client.post(f"/api/v1/agents/{agent.id}/{endpoint}", valid_body(endpoint),
                               content_type="application/json", **security_headers(agent.machine_id))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"

    def test_garbage_token_is_401(self, agent, endpoint):
        before = request_effects(agent)
        response = agent.post(endpoint, valid_body(endpoint), HTTP_AUTHORIZATION="Bearer rf_acc_forged")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_credentials"
        assert request_effects(agent) == before  # not applied, and no nonce spent before authentication

    def test_token_signed_with_another_key_is_401(self, agent, endpoint, settings):
        forged = "rf_acc_" + signing.dumps({"a": agent.id, "g": 1}, key="x" * 50, salt="redflag.agent-access-token")
        before = request_effects(agent)
        response = agent.post(endpoint, valid_body(endpoint), HTTP_AUTHORIZATION=f"Bearer {forged}")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_credentials"
        assert request_effects(agent) == before

    def test_wrong_machine_is_403_and_recorded(self, agent, endpoint):
        response = agent.post(endpoint, valid_body(endpoint), HTTP_X_MACHINE_ID=machine_hash("other"))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "machine_mismatch"
        event = SystemEvent.objects.get(event_type="security_violation")
        assert event.agent_id == uuid.UUID(agent.id) and event.metadata["reason"] == "machine_mismatch"

    def test_another_agents_path_is_403(self, agent, enroll, endpoint):
        other = enroll(hostname="other")
        response = agent.client.post(f"/api/v1/agents/{other.id}/{endpoint}", valid_body(endpoint),
                                     content_type="application/json", **agent.headers())
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "wrong_agent"

    def test_revoked_agent_is_403(self, agent, endpoint):
        agent_revoke(agent=agent.model, actor="alice")
        before = request_effects(agent)
        # Its access token is dead too (generation bumped): 401 before the revocation check.
        response = agent.post(endpoint, valid_body(endpoint))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_credentials"
        assert request_effects(agent) == before
        event = SystemEvent.objects.get(event_type="auth_failure")
        assert event.agent_id == uuid.UUID(agent.id)
        assert event.metadata == {"reason": "revoked_access_token", "path": f"/api/v1/agents/{agent.id}/{endpoint}"}

    def test_replayed_nonce_is_409_and_recorded(self, agent, endpoint):
        headers = security_headers(agent.machine_id)
        nonce = headers["HTTP_X_REQUEST_NONCE"]
        first = agent.post(endpoint, valid_body(endpoint), HTTP_X_REQUEST_NONCE=nonce)
        assert first.status_code == 200
        replay = agent.post(endpoint, valid_body(endpoint), HTTP_X_REQUEST_NONCE=nonce)
        assert replay.status_code == 409
        assert replay.json()["error"]["code"] == "replayed_nonce"
        assert SystemEvent.objects.filter(event_type="security_violation", metadata__reason="replayed_nonce").exists()

    @pytest.mark.parametrize("skew", [-301, 301])
    def test_timestamp_outside_five_minutes_is_401(self, agent, endpoint, skew):
        response = agent.post(endpoint, valid_body(endpoint), HTTP_X_REQUEST_TIMESTAMP=str(int(time.time()) + skew))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "stale_request"

    @pytest.mark.parametrize("header", ["HTTP_X_REQUEST_NONCE", "HTTP_X_REQUEST_TIMESTAMP", "HTTP_X_MACHINE_ID"])
    def test_missing_security_header_is_400_naming_it(self, agent, endpoint, header):
        response = agent.post(endpoint, valid_body(endpoint), **{header: ""})
        assert response.status_code == 400
        name = header[5:].replace("_", "-").title().replace("Id", "ID")
        assert name in response.json()["error"]["fields"]
