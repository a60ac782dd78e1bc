"""Registration tokens: one validity rule, atomic redemption, admin and command-line creation."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone as dt_timezone
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from hypothesis import given, settings as hypothesis_settings, strategies as st
from hypothesis.extra.django import TestCase as HypothesisTestCase

from events_app.models import SystemEvent
from tests.server.conftest import host_facts, machine_hash
from tokens_app.choices import TokenStatus
from tokens_app.hashing import hash_secret
from tokens_app.models import RegistrationToken
from tokens_app.services import token_create, token_revoke

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=dt_timezone.utc)


class TestStatusRuleAgreement(HypothesisTestCase):
    """The property and the queryset come from one rule: prove it for every combination."""

    @hypothesis_settings(max_examples=200, deadline=None)
    @given(
        revoked=st.booleans(),
        expires_offset=st.integers(min_value=-3, max_value=3),
        max_seats=st.integers(min_value=1, max_value=3),
        seats_used=st.integers(min_value=0, max_value=4),
    )
    def test_property_annotation_and_active_agree(self, revoked, expires_offset, max_seats, seats_used):
        token = RegistrationToken.objects.create(
            label="t", token_hash=hash_secret(f"{revoked}{expires_offset}{max_seats}{seats_used}"),
            prefix="p", max_seats=max_seats, seats_used=seats_used,
            expires_at=NOW + timedelta(seconds=expires_offset),
            revoked_at=NOW - timedelta(hours=1) if revoked else None,
        )
        from tokens_app.querysets import token_status

        python_status = token_status(token, NOW)
        sql_status = RegistrationToken.objects.with_status(NOW).get(pk=token.pk).computed_status
        in_active = RegistrationToken.objects.active(NOW).filter(pk=token.pk).exists()
        assert python_status == sql_status
        assert in_active == (python_status == TokenStatus.ACTIVE)
        # Precedence: revoked beats expired beats exhausted.
        if revoked:
            assert python_status == TokenStatus.REVOKED
        elif expires_offset <= 0:
            assert python_status == TokenStatus.EXPIRED
        elif seats_used >= max_seats:
            assert python_status == TokenStatus.EXHAUSTED
        else:
            assert python_status == TokenStatus.ACTIVE
        token.delete()


def test_token_create_stores_only_a_hash_and_records_event(db):
    token, secret = token_create(label="lab", max_seats=3, expires_in=timedelta(hours=2))
    assert len(secret) >= 43 + len("rf_reg_")  # 256 bits, url-safe base64
    assert token.token_hash == hash_secret(secret)
    assert secret not in {token.prefix, token.token_hash, token.label}
    assert secret.startswith(token.prefix)
    event = SystemEvent.objects.get(event_type="token_created")
    assert secret not in str(event.metadata) and secret not in event.message


def test_token_lifetime_is_capped_by_server_settings(db):
    from redflag.models import ServerSettings

    settings_row = ServerSettings.current()
    settings_row.registration_token_max_hours = 48
    settings_row.save()
    with pytest.raises(ValueError, match="at most 48 hours"):
        token_create(label="too long", max_seats=1, expires_in=timedelta(hours=49))


def test_revoke_is_recorded_once(db):
    token, _ = token_create(label="lab", max_seats=1, expires_in=timedelta(hours=1))
    assert token_revoke(token=token, actor="alice") is True
    assert token_revoke(token=token, actor="alice") is False
    assert SystemEvent.objects.filter(event_type="token_revoked").count() == 1
    token.refresh_from_db()
    assert token.status == TokenStatus.REVOKED


def test_management_command_prints_only_the_token(db):
    out = StringIO()
    call_command("create_registration_token", "--label", "rack 2", "--seats", "4", "--expires-in", "24h", stdout=out)
    secret = out.getvalue().strip()
    assert "\n" not in secret and secret.startswith("rf_reg_")
    token = RegistrationToken.objects.get(token_hash=hash_secret(secret))
    assert (token.label, token.max_seats) == ("rack 2", 4)
    assert timedelta(hours=23, minutes=59) < token.expires_at - token.created_at <= timedelta(hours=24)


@pytest.mark.parametrize("argv, message", [
    (["--expires-in", "tomorrow"], "--expires-in"),
    (["--seats", "0"], "--seats"),
    (["--expires-in", "9999d"], "at most"),
])
def test_management_command_rejects_bad_input(db, argv, message):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("create_registration_token", "--label", "x", *argv, stdout=StringIO())


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_registrations_on_five_seats_make_five_agents(client):
    """The seat claim is one conditional UPDATE: no over-issue under concurrency."""
    from agents_app.models import Agent
    from django.test import Client

    _, secret = token_create(label="five", max_seats=5, expires_in=timedelta(hours=1))
    barrier = threading.Barrier(20)
    statuses: list[int] = []

    def register(index: int) -> None:
        barrier.wait()
        try:
            response = Client().post(
                "/api/v1/agents/register",
                {"registration_token": secret, "machine_id": machine_hash(f"m{index}"),
                 **host_facts(hostname=f"host-{index}")},
                content_type="application/json",
            )
            statuses.append(response.status_code)
        finally:
            connection.close()

    from redflag.models import ServerSettings

    settings_row = ServerSettings.current()
    settings_row.rate_registration = "1000/min"
    settings_row.save()
    threads = [threading.Thread(target=register, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 5 + [401] * 15
    assert Agent.objects.count() == 5
    token = RegistrationToken.objects.get()
    assert token.seats_used == 5
    assert token.status == TokenStatus.EXHAUSTED
    assert SystemEvent.objects.filter(event_type="agent_registration", event_subtype="failed",
                                      metadata__reason="exhausted").count() == 15
