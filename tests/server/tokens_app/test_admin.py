"""The registration token admin (tokens_app/admin.py): the secret shown once, the computed status, revoke."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from agents_app.models import Agent
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.conftest import host_facts, machine_hash
from tokens_app.hashing import hash_secret
from tokens_app.models import RegistrationToken
from tokens_app.services import token_create

CHANGELIST = "/admin/tokens_app/registrationtoken/"


def test_creating_a_token_shows_the_secret_and_one_liners_once(admin_client):
    row = ServerSettings.current()
    row.public_url = "https://redflag.example.net"
    row.save()
    response = admin_client.post(CHANGELIST + "add/", {"label": "rack 3", "max_seats": 5, "expires_in_hours": 48})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    secret = response.context["secret"]
    token = RegistrationToken.objects.get(token_hash=hash_secret(secret))
    assert (token.label, token.max_seats) == ("rack 3", 5)
    assert timedelta(hours=47, minutes=59) < token.expires_at - timezone.now() <= timedelta(hours=48)
    page = response.content.decode()
    assert secret in page
    assert (f"export REDFLAG_REGISTRATION_TOKEN=&#x27;{secret}&#x27;; curl -sfL https://redflag.example.net/install/"
            f"linux.sh | sudo --preserve-env=REDFLAG_REGISTRATION_TOKEN bash") in page
    assert f"-- {secret}" not in page and f"--token {secret}" not in page  # never an argument
    # Never again: not on the list, not on the change page, not in the event.
    assert secret not in admin_client.get(CHANGELIST).content.decode()
    assert secret not in admin_client.get(f"{CHANGELIST}{token.pk}/change/").content.decode()
    assert secret not in str(SystemEvent.objects.get(event_type="token_created").metadata)


def test_token_lifetime_over_the_cap_is_a_form_error(admin_client):
    response = admin_client.post(CHANGELIST + "add/", {"label": "x", "max_seats": 1, "expires_in_hours": 100000})
    assert response.status_code == 200 and "At most" in response.content.decode()
    assert not RegistrationToken.objects.exists()


def test_list_shows_computed_status_and_filters_by_it(admin_client):
    active, _ = token_create(label="fresh", max_seats=3, expires_in=timedelta(hours=1))
    expired, _ = token_create(label="stale", max_seats=3, expires_in=timedelta(hours=1))
    RegistrationToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    page = admin_client.get(CHANGELIST).content.decode()
    assert "Expired" in page and "Active" in page and "0 / 3" in page
    filtered = admin_client.get(CHANGELIST, {"status": "expired"})
    assert [token.label for token in filtered.context["cl"].result_list] == ["stale"]
    filtered = admin_client.get(CHANGELIST, {"status": "active"})
    assert [token.label for token in filtered.context["cl"].result_list] == ["fresh"]


def test_revoke_action(admin_client, registration_secret):
    token = RegistrationToken.objects.get()
    response = admin_client.post(CHANGELIST, {"action": "revoke_selected", "_selected_action": [token.pk]})
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.status == "revoked"
    event = SystemEvent.objects.get(event_type="token_revoked")
    assert event.actor == "admin"


def test_expired_token_shows_expired_and_is_refused(admin_client, client):
    token, secret = token_create(label="old", max_seats=1, expires_in=timedelta(hours=1))
    RegistrationToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert "Expired" in admin_client.get(f"{CHANGELIST}{token.pk}/change/").content.decode()
    response = client.post("/api/v1/agents/register",
                           {"registration_token": secret, "machine_id": machine_hash(), **host_facts()},
                           content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "registration_refused"
    assert not Agent.objects.exists()
    token.refresh_from_db()
    assert token.seats_used == 0


def test_renaming_a_token_is_audited_and_an_unchanged_save_records_nothing(admin_client, registration_secret):
    token = RegistrationToken.objects.get(token_hash=hash_secret(registration_secret))
    before = token.label
    url = f"{CHANGELIST}{token.pk}/change/"
    assert admin_client.post(url, {"label": "rack 9"}).status_code == 302
    token.refresh_from_db()
    assert token.label == "rack 9"
    event = SystemEvent.objects.get(event_type="config_changed", metadata__token_id=token.pk)
    assert event.actor == "admin" and event.metadata["previous_label"] == before
    assert event.metadata["label"] == "rack 9" and registration_secret not in str(event.metadata)
    assert admin_client.post(url, {"label": "rack 9"}).status_code == 302
    assert SystemEvent.objects.filter(event_type="config_changed", metadata__token_id=token.pk).count() == 1
    # Seats, expiry and the hash are not editable: posting them changes nothing.
    admin_client.post(url, {"label": "rack 9", "max_seats": 999, "token_hash": "0" * 64})
    token.refresh_from_db()
    assert token.max_seats != 999 and token.token_hash == hash_secret(registration_secret)
