"""Registration tokens (tokens_app/services.py): created hashed and capped, revoked once, redeemed atomically;
the create_registration_token command.

The status rule is tested in test_querysets.py, the admin pages in test_admin.py.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client

from agents_app.models import Agent
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.conftest import host_facts, machine_hash
from tokens_app.choices import TokenStatus
from tokens_app.hashing import hash_secret
from tokens_app.models import RegistrationToken
from tokens_app.services import TokenLifetimeTooLong, token_create, token_revoke


def test_token_create_stores_only_a_hash_and_records_event(db):
    token, secret = token_create(label="lab", max_seats=3, expires_in=timedelta(hours=2))
    assert len(secret) >= 43 + len("rf_reg_")  # 256 bits, url-safe base64
    assert token.token_hash == hash_secret(secret)
    assert secret not in {token.prefix, token.token_hash, token.label}
    assert secret.startswith(token.prefix)
    event = SystemEvent.objects.get(event_type="token_created")
    assert secret not in str(event.metadata) and secret not in event.message


def test_token_lifetime_is_capped_by_server_settings(db):
    settings_row = ServerSettings.current()
    settings_row.registration_token_max_hours = 48
    settings_row.save()
    with pytest.raises(TokenLifetimeTooLong, match="at most 48 hours"):
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
    with pytest.raises(CommandError, match=message):
        call_command("create_registration_token", "--label", "x", *argv, stdout=StringIO())


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_registrations_on_five_seats_make_five_agents(client):
    """The seat claim is one conditional UPDATE: no over-issue under concurrency."""
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
