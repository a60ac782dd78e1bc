"""Agents (services/agents.py): registration through POST /api/v1/agents/register (refusals, re-registration),
rebinding to a reinstalled machine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from agents_app.models import Agent, RefreshToken
from agents_app.services.agents import agent_allow_rebind
from events_app.models import SystemEvent
from tests.server.conftest import REGISTER_URL, host_facts, machine_hash, register, security_headers
from tokens_app.models import RegistrationToken, SigningKey
from tokens_app.services import token_create, token_revoke

URL = REGISTER_URL


def test_register_returns_credentials_keys_and_config(client, registration_secret):
    response = register(client, registration_secret, hostname="db-01")
    assert response.status_code == 201
    body = response.json()
    agent = Agent.objects.get(pk=body["agent_id"])
    assert agent.hostname == "db-01" and agent.os_family == "linux"
    assert body["access_token"].startswith("rf_acc_")
    assert body["refresh_token"].startswith("rf_ref_")
    assert body["reregistered"] is False
    assert body["config"] == {"config_version": 1, "poll_interval_seconds": 300}
    primary = SigningKey.objects.get(is_primary=True)
    assert body["signing_keys"][0]["key_id"] == primary.key_id
    # The refresh token is stored hashed; 90-day lifetime.
    stored = RefreshToken.objects.get(agent=agent)
    assert stored.token_hash != body["refresh_token"]
    assert timedelta(days=89) < stored.expires_at - timezone.now() <= timedelta(days=90)
    event = SystemEvent.objects.get(event_type="agent_registration", event_subtype="success")
    assert event.agent == agent and event.hostname == "db-01"
    assert body["refresh_token"] not in str(event.metadata) and registration_secret not in str(event.metadata)


def _expired_token():
    token, secret = token_create(label="old", max_seats=5, expires_in=timedelta(hours=1))
    RegistrationToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    return secret


def _revoked_token():
    token, secret = token_create(label="revoked", max_seats=5, expires_in=timedelta(hours=1))
    token_revoke(token=token, actor="alice")
    return secret


def _exhausted_token():
    token, secret = token_create(label="full", max_seats=1, expires_in=timedelta(hours=1))
    RegistrationToken.objects.filter(pk=token.pk).update(seats_used=1)
    return secret


@pytest.mark.parametrize("make_secret, reason", [
    (lambda: "rf_reg_" + "x" * 43, "unknown"),
    (_expired_token, "expired"),
    (_revoked_token, "revoked"),
    (_exhausted_token, "exhausted"),
])
def test_every_refusal_has_the_same_body_and_its_real_reason_in_the_event(client, db, make_secret, reason):
    secret = make_secret()
    response = register(client, secret, hostname="intruder")
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "registration_refused",
                                         "message": "The registration token is not valid."}}
    assert not Agent.objects.exists()
    event = SystemEvent.objects.get(event_type="agent_registration", event_subtype="failed")
    assert event.metadata["reason"] == reason
    assert event.hostname == "intruder"
    assert secret not in str(event.metadata) and secret not in event.message


def test_refused_registration_does_not_consume_a_seat(client, db):
    token, secret = token_create(label="one", max_seats=1, expires_in=timedelta(hours=1))
    RegistrationToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    register(client, secret)
    token.refresh_from_db()
    assert token.seats_used == 0


def test_same_machine_registering_again_takes_over_its_agent(client, registration_secret):
    machine_id = machine_hash("reinstalled")
    first = register(client, registration_secret, machine_id, hostname="old-name").json()
    second_response = register(client, registration_secret, machine_id, hostname="new-name")
    assert second_response.status_code == 201
    second = second_response.json()
    assert second["agent_id"] == first["agent_id"] and second["reregistered"] is True
    assert Agent.objects.count() == 1
    assert Agent.objects.get().hostname == "new-name"
    # The old credentials are dead: access token refused, refresh token revoked.
    old_refresh = RefreshToken.objects.exclude(revoked_at__isnull=True)
    assert old_refresh.count() == 1

    response = client.post(
        f"/api/v1/agents/{first['agent_id']}/checkin", {}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {first['access_token']}", **security_headers(machine_id),
    )
    assert response.status_code == 401
    warning = SystemEvent.objects.get(event_type="agent_registration", event_subtype="warning")
    assert warning.severity == "warning" and warning.metadata["previous_hostname"] == "old-name"


@pytest.mark.parametrize("change, field", [
    ({"machine_id": "not-a-hash"}, "machine_id"),
    ({"hostname": ""}, "hostname"),
    ({"os_family": "amiga"}, "os_family"),
    ({"agent_version": None}, "agent_version"),
    ({"registration_token": None}, "registration_token"),
])
def test_bad_input_is_a_400_naming_the_field(client, registration_secret, change, field):
    body = {"registration_token": registration_secret, "machine_id": machine_hash(), **host_facts()}
    body.update(change)
    response = client.post(URL, body, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and field in error["fields"] and field in error["message"]
    assert not Agent.objects.exists()
    assert RegistrationToken.objects.get().seats_used == 0


def test_missing_body_fields_are_named(client, db):
    response = client.post(URL, {}, content_type="application/json")
    assert response.status_code == 400
    assert {"registration_token", "machine_id", "hostname", "os_family", "agent_version"} <= set(
        response.json()["error"]["fields"]
    )


def test_rebind_lets_a_reinstalled_machine_through_once(agent):
    new_machine = machine_hash("reinstalled")
    assert agent.post("checkin", {}, HTTP_X_MACHINE_ID=new_machine).status_code == 403
    agent_allow_rebind(agent=agent.model, actor="alice")
    assert agent.post("checkin", {}, HTTP_X_MACHINE_ID=new_machine).status_code == 200
    assert agent.model.machine_id_hash == new_machine and agent.model.rebind_allowed_until is None
    # The old machine id is now the stranger.
    assert agent.post("checkin", {}).status_code == 403
    assert SystemEvent.objects.filter(event_type="config_changed", message__contains="new machine id").exists()
