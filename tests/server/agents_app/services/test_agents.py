"""Agents (services/agents.py): registration through POST /api/v1/agents/register (refusals, re-registration),
rebinding to a reinstalled machine."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from agents_app.choices import CommandSource, CommandStatus, CommandType, UpdateStatus
from agents_app.models import Agent, AgentSubsystem, Command, PackageUpdate, RefreshToken
from agents_app.services import agents as agents_services
from agents_app.services.agents import agent_allow_rebind, agent_revoke
from agents_app.services.commands import command_create
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


def test_a_seat_taken_by_another_registration_first_refuses_this_one(client, db, monkeypatch):
    """The race, made deterministic: another registration takes the token's last seat just before this one's
    conditional UPDATE (SQLite: after this one read the token and wrote its agent; PostgreSQL: just before the
    one statement that takes the seat and writes the agent). This one backs off: the same 401, nothing of it
    stays, the event says why."""
    token, secret = token_create(label="last seat", max_seats=1, expires_in=timedelta(hours=1))
    enrol, seat_sql = agents_services._enrol, agents_services.token_redeem_sql

    def the_other_takes_the_seat():
        RegistrationToken.objects.filter(pk=token.pk).update(seats_used=1)

    def enrol_then_lose_the_seat(*args, **kwargs):
        registration = enrol(*args, **kwargs)
        the_other_takes_the_seat()
        return registration

    def lose_the_seat_then_take_it(**kwargs):
        the_other_takes_the_seat()
        return seat_sql(**kwargs)

    monkeypatch.setattr(agents_services, "_enrol", enrol_then_lose_the_seat)
    monkeypatch.setattr(agents_services, "token_redeem_sql", lose_the_seat_then_take_it)
    response = register(client, secret, hostname="late", capabilities=["apt", "system"])
    assert response.status_code == 401
    assert response.json() == {"error": {"code": "registration_refused",
                                         "message": "The registration token is not valid."}}
    assert not Agent.objects.exists() and not RefreshToken.objects.exists() and not AgentSubsystem.objects.exists()
    assert not SystemEvent.objects.filter(event_type="agent_registration", event_subtype="success").exists()
    refusal = SystemEvent.objects.get(event_type="agent_registration", event_subtype="failed")
    assert refusal.metadata["reason"] == "exhausted" and refusal.metadata["token_id"] == token.pk


def test_a_new_enrolment_is_a_fixed_number_of_statements(client, registration_secret, django_assert_num_queries):
    """The registration hot path, in one transaction (here a savepoint: 2 statements), then one read of the
    signing keys. PostgreSQL: one statement takes the seat and writes the agent, its subsystems and its
    refresh token, then the event. SQLite: token read, machine lock, agent, event, every subsystem in one
    INSERT, refresh token, the seat last. The per-IP rate count is one more statement when the counters
    live in the database (the test settings keep them in memory)."""
    register(client, registration_secret)  # the signing key is published on first use
    with django_assert_num_queries(5 if connection.vendor == "postgresql" else 10):
        response = register(client, registration_secret, capabilities=["apt", "docker", "storage", "system"])
    assert response.status_code == 201
    agent = Agent.objects.get(pk=response.json()["agent_id"])
    assert sorted(agent.subsystems.values_list("name", "interval_minutes")) == [
        ("apt", 360), ("docker", 360), ("storage", 60), ("system", 60)]
    assert RegistrationToken.objects.get().seats_used == 2


def checkin_status(client, body: dict, machine_id: str) -> int:
    return client.post(
        f"/api/v1/agents/{body['agent_id']}/checkin", {}, content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {body['access_token']}", **security_headers(machine_id),
    ).status_code


def test_a_known_machine_cannot_be_taken_over_with_a_registration_token(client, registration_secret):
    """The machine id is no secret: knowing it and holding any token must not hand over the agent."""
    machine_id = machine_hash("victim")
    victim = register(client, registration_secret, machine_id, hostname="db-01").json()
    token, impostor_secret = token_create(label="someone else's", max_seats=5, expires_in=timedelta(hours=1))
    refused = register(client, impostor_secret, machine_id, hostname="evil")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "already_enrolled"
    assert "refresh token" in refused.json()["error"]["message"]
    # Nothing changed: same agent and name, its credentials still work, no seat taken, no new credentials.
    agent = Agent.objects.get()
    assert (str(agent.pk), agent.hostname, agent.revoked_at) == (victim["agent_id"], "db-01", None)
    assert checkin_status(client, victim, machine_id) == 200
    token.refresh_from_db()
    assert token.seats_used == 0 and RefreshToken.objects.count() == 1
    violation = SystemEvent.objects.get(event_type="security_violation")
    assert violation.agent_id == agent.pk and violation.metadata["reason"] == "reenrolment_not_proven"
    assert violation.metadata["token_id"] == token.pk and violation.metadata["token_label"] == "someone else's"
    assert violation.metadata["why"] == "no refresh token" and impostor_secret not in str(violation.metadata)
    # A refresh token that is not the agent's current one proves nothing either.
    stale = register(client, impostor_secret, machine_id, refresh_token="rf_ref_" + "x" * 43)
    assert stale.status_code == 409
    violations = SystemEvent.objects.filter(event_type="security_violation")
    assert violations.filter(metadata__why="no valid refresh token").count() == 1


def test_reenrolment_with_the_current_refresh_token_cancels_open_commands_and_takes_no_seat(client, db):
    token, secret = token_create(label="one seat", max_seats=1, expires_in=timedelta(hours=1))
    machine_id = machine_hash("reinstalled")
    first = register(client, secret, machine_id, hostname="old-name").json()
    agent = Agent.objects.get()
    pending = command_create(agent=agent, command_type=CommandType.REBOOT, source=CommandSource.WEB_UI)
    sent = command_create(agent=agent, command_type=CommandType.SCAN_STORAGE, source=CommandSource.SCHEDULER)
    Command.objects.filter(pk=sent.pk).update(status=CommandStatus.SENT, sent_at=timezone.now())
    approved = PackageUpdate.objects.create(agent=agent, package_type="apt", name="curl", status=UpdateStatus.APPROVED)

    again = register(client, secret, machine_id, hostname="new-name", refresh_token=first["refresh_token"])
    assert again.status_code == 201, again.content
    second = again.json()
    assert second["agent_id"] == first["agent_id"] and second["reregistered"] is True
    assert Agent.objects.get().hostname == "new-name"
    token.refresh_from_db()
    assert token.seats_used == 1  # the same machine again: no second seat (the token had only one)
    # The old credentials are dead, the new ones work.
    assert checkin_status(client, first, machine_id) == 401
    assert checkin_status(client, second, machine_id) == 200
    assert RefreshToken.objects.filter(revoked_at__isnull=True).count() == 1
    # Nothing planned before reaches the machine; approvals stay.
    assert set(Command.objects.filter(pk__in=[pending.pk, sent.pk]).values_list("status", flat=True)) == {"cancelled"}
    assert PackageUpdate.objects.get(pk=approved.pk).status == UpdateStatus.APPROVED
    assert SystemEvent.objects.filter(event_type="command_completed", message__contains="re-enrolled").count() == 2
    event = SystemEvent.objects.get(event_type="agent_registration", event_subtype="warning")
    assert event.metadata["way"] == "refresh_token" and event.metadata["cancelled_commands"] == 2
    assert event.metadata["previous_hostname"] == "old-name" and event.metadata["restored"] is False
    # The refresh token it used is spent: a second re-enrolment with it is refused.
    assert register(client, secret, machine_id, refresh_token=first["refresh_token"]).status_code == 409


def test_an_admin_window_allows_one_reenrolment_without_the_refresh_token(client, registration_secret):
    machine_id = machine_hash("lost its config")
    first = register(client, registration_secret, machine_id).json()
    agent = Agent.objects.get()
    agent_allow_rebind(agent=agent, actor="alice")
    allowed = register(client, registration_secret, machine_id)
    assert allowed.status_code == 201 and allowed.json()["agent_id"] == first["agent_id"]
    assert Agent.objects.get().rebind_allowed_until is None
    event = SystemEvent.objects.get(event_type="agent_registration", event_subtype="warning")
    assert event.metadata["way"] == "admin_window"
    assert register(client, registration_secret, machine_id).status_code == 409  # one use


def test_a_revoked_agent_stays_revoked_until_an_admin_reopens_it(client, registration_secret):
    machine_id = machine_hash("revoked")
    first = register(client, registration_secret, machine_id).json()
    agent = Agent.objects.get()
    agent_revoke(agent=agent, actor="alice")
    for refresh_token in (None, first["refresh_token"]):
        body = {"refresh_token": refresh_token} if refresh_token else {}
        refused = register(client, registration_secret, machine_id, **body)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "already_enrolled"
    assert Agent.objects.get().revoked_at is not None
    violations = SystemEvent.objects.filter(event_type="security_violation")
    assert violations.filter(metadata__why="the agent is revoked").count() == 2
    agent_allow_rebind(agent=Agent.objects.get(), actor="alice")
    assert "restores it" in SystemEvent.objects.filter(event_type="config_changed").latest("seq").message
    restored = register(client, registration_secret, machine_id)
    assert restored.status_code == 201
    assert Agent.objects.get().revoked_at is None
    event = SystemEvent.objects.get(event_type="agent_registration", event_subtype="warning")
    assert event.metadata["restored"] is True and event.metadata["way"] == "admin_window"
    assert checkin_status(client, restored.json(), machine_id) == 200


def test_reenrolment_still_needs_a_token_that_is_neither_revoked_nor_expired(client, db):
    token, secret = token_create(label="t", max_seats=1, expires_in=timedelta(hours=1))
    machine_id = machine_hash("m")
    first = register(client, secret, machine_id).json()
    token_revoke(token=token, actor="alice")
    refused = register(client, secret, machine_id, refresh_token=first["refresh_token"])
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "registration_refused"
    failed = SystemEvent.objects.get(event_type="agent_registration", event_subtype="failed")
    assert failed.metadata["reason"] == "revoked"
    assert checkin_status(client, first, machine_id) == 200  # the agent itself is untouched


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
    assert agent.model.machine_id_hash == agent.machine_id  # refused without a window: not bound
    agent_allow_rebind(agent=agent.model, actor="alice")
    assert agent.post("checkin", {}, HTTP_X_MACHINE_ID=new_machine).status_code == 200
    assert agent.model.machine_id_hash == new_machine and agent.model.rebind_allowed_until is None
    # The old machine id is now the stranger.
    stranger = agent.post("checkin", {})
    assert stranger.status_code == 403 and stranger.json()["error"]["code"] == "machine_mismatch"
    refusal = SystemEvent.objects.get(event_type="security_violation", metadata__bound_machine_id=new_machine[:12])
    assert refusal.metadata["presented_machine_id"] == agent.machine_id[:12]
    assert SystemEvent.objects.filter(event_type="config_changed", message__contains="new machine id").exists()
