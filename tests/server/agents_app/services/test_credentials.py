"""Agent credentials (services/credentials.py): POST /api/v1/agents/renew (rotation, reuse detection, the one
tolerated retry) and the access token's expiry."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.utils import timezone

from agents_app.models import RefreshToken
from agents_app.services import credentials as services
from agents_app.services.credentials import REFRESH_RETRY_GRACE
from events_app.models import SystemEvent
from tests.server.conftest import machine_hash, security_headers

URL = "/api/v1/agents/renew"


def renew(client, refresh_token, machine_id, **headers):
    return client.post(
        URL, {"refresh_token": refresh_token}, content_type="application/json",
        **{**security_headers(machine_id), **headers},
    )


def test_renew_requires_machine_id_and_nonce_headers(client, agent):
    response = client.post(URL, {"refresh_token": agent.refresh_token}, content_type="application/json")
    assert response.status_code == 400
    assert "X-Machine-ID" in response.json()["error"]["fields"]


def test_unknown_refresh_token_is_401_and_recorded(client, agent):
    response = renew(client, "rf_ref_" + "y" * 43, agent.machine_id)
    assert response.status_code == 401
    assert SystemEvent.objects.filter(event_type="auth_failure", metadata__reason="unknown").exists()


def test_renew_rotates_the_refresh_token(client, agent):
    response = renew(client, agent.refresh_token, agent.machine_id)
    assert response.status_code == 200
    body = response.json()
    assert body["refresh_token"] != agent.refresh_token
    old, new = RefreshToken.objects.order_by("created_at")
    assert old.rotated_at is not None and old.replaced_by == new and old.family == new.family
    # The new access token works, the new refresh token renews again.
    agent.access_token = body["access_token"]
    assert agent.post("checkin", {}).status_code == 200
    assert renew(client, body["refresh_token"], agent.machine_id).status_code == 200
    assert SystemEvent.objects.filter(event_type="token_renewal", event_subtype="success").count() == 2


def test_reusing_a_rotated_token_revokes_the_family(client, agent):
    first = renew(client, agent.refresh_token, agent.machine_id).json()
    second = renew(client, first["refresh_token"], agent.machine_id).json()
    # The oldest token comes back after its successor was itself used: it was copied.
    response = renew(client, agent.refresh_token, agent.machine_id)
    assert response.status_code == 401
    assert not RefreshToken.objects.filter(revoked_at__isnull=True).exists()
    violation = SystemEvent.objects.get(event_type="security_violation")
    assert violation.metadata["reason"] == "refresh_token_reuse"
    # Everything the family issued is dead, access tokens included.
    assert renew(client, second["refresh_token"], agent.machine_id).status_code == 401
    agent.access_token = second["access_token"]
    assert agent.post("checkin", {}).status_code == 401


def test_previous_token_is_tolerated_once_when_the_response_was_lost(client, agent):
    lost = renew(client, agent.refresh_token, agent.machine_id).json()  # the agent never saw this
    retry = renew(client, agent.refresh_token, agent.machine_id)
    assert retry.status_code == 200
    retried = retry.json()
    # The unseen successor is revoked, the retry's token works.
    assert renew(client, lost["refresh_token"], agent.machine_id).status_code == 401
    warning = SystemEvent.objects.get(event_type="token_renewal", event_subtype="warning")
    assert warning.metadata["reason"] == "retry_after_lost_response"
    assert renew(client, retried["refresh_token"], agent.machine_id).status_code == 200


def test_previous_token_is_not_tolerated_twice(client, agent):
    renew(client, agent.refresh_token, agent.machine_id)
    assert renew(client, agent.refresh_token, agent.machine_id).status_code == 200
    assert renew(client, agent.refresh_token, agent.machine_id).status_code == 401
    assert SystemEvent.objects.filter(event_type="security_violation",
                                      metadata__reason="refresh_token_reuse").count() == 1


def test_previous_token_is_not_tolerated_after_the_grace_window(client, agent):
    renew(client, agent.refresh_token, agent.machine_id)
    later = timezone.now() + REFRESH_RETRY_GRACE + timedelta(seconds=1)
    with mock.patch("agents_app.services.credentials.timezone.now", return_value=later):
        assert renew(client, agent.refresh_token, agent.machine_id).status_code == 401
    assert SystemEvent.objects.filter(event_type="security_violation").exists()


def test_renew_from_another_machine_is_403_and_recorded(client, agent):
    response = renew(client, agent.refresh_token, machine_hash("thief"))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "machine_mismatch"
    assert SystemEvent.objects.get(event_type="security_violation").metadata["reason"] == "machine_mismatch"
    # Nothing rotated: the real agent can still renew.
    assert renew(client, agent.refresh_token, agent.machine_id).status_code == 200


def test_expired_refresh_token_is_refused(client, agent):
    RefreshToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = renew(client, agent.refresh_token, agent.machine_id)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    token = RefreshToken.objects.get()  # no successor issued, the expired one not rotated
    assert token.rotated_at is None and token.replaced_by is None
    event = SystemEvent.objects.get(event_type="auth_failure")
    assert str(event.agent_id) == agent.id and event.metadata["reason"] == "expired"


def test_expired_access_token_is_401_with_a_renew_hint(agent, settings):
    later = timezone.now().timestamp() + settings.REDFLAG_ACCESS_TOKEN_SECONDS + 5
    with mock.patch("django.core.signing.time.time", return_value=later), \
            mock.patch("agents_app.api.authentication.time.time", return_value=later):
        response = agent.post("checkin", {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_expired"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db(transaction=True)
def test_concurrent_renewals_of_one_token_issue_one_successor(agent):
    """Make the 'other worker' win between our read and our conditional UPDATE."""
    original = services.RefreshToken.objects.filter

    def filter_then_lose_race(*args, **kwargs):
        queryset = original(*args, **kwargs)
        if kwargs.get("rotated_at__isnull") is True and "pk" in kwargs:
            original(pk=kwargs["pk"]).update(rotated_at=timezone.now())  # the other worker
        return queryset

    with mock.patch.object(services.RefreshToken.objects, "filter", side_effect=filter_then_lose_race):
        response = renew(agent.client, agent.refresh_token, agent.machine_id)
    # Our request lost the claim: it must not mint a successor of its own.
    assert response.status_code == 401
    assert RefreshToken.objects.count() == 1
