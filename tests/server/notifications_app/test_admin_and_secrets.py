"""The admin pages of notifications, and secrets: encrypted at rest, masked on pages, in no log, event or page."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
import requests
from django.db import transaction
from django.urls import reverse

from events_app.models import SystemEvent
from events_app.services import security_violation
from notifications_app import vault
from notifications_app.choices import DeliveryKind, DestinationKind, Trigger
from notifications_app.models import Delivery, DeliveryAttempt, Destination, Rule
from notifications_app.services import delivery_attempt, events_dispatch
from tests.server.notifications_app.conftest import make_destination, make_rule
from tests.server.notifications_app.receivers import HttpReceiver
from tests.server.processes import free_port

pytestmark = pytest.mark.django_db

ADD = "admin:notifications_app_destination_add"
PASSWORD = "Ntfy-pa55word-XYZ"
TOPIC = "topic-k9s8d7f6"
SIGNING_SECRET = "whsec-super-secret-signing-key-123"
URL_TOKEN = "urltoken-q1w2e3r4"


def form(**fields) -> dict:
    return {"name": "phone", "kind": DestinationKind.APPRISE, "url": "", "signing_secret": "", "enabled": "on",
            **fields}


def test_a_url_apprise_does_not_understand_is_refused_with_a_clear_message(admin_client):
    response = admin_client.post(reverse(ADD), form(url="bogus://nothing/here"))
    assert response.status_code == 200
    assert "Apprise does not understand this URL (scheme &#x27;bogus&#x27;)" in response.content.decode()
    response = admin_client.post(reverse(ADD), form(url="tgram://"))
    assert "Apprise does not understand this URL" in response.content.decode()
    response = admin_client.post(reverse(ADD), form(kind=DestinationKind.WEBHOOK, url="ftp://example.com/x",
                                                     signing_secret=SIGNING_SECRET))
    assert "A webhook URL starts with http:// or https://" in response.content.decode()
    response = admin_client.post(reverse(ADD), form(kind=DestinationKind.WEBHOOK, url="https://example.com/x"))
    assert "A webhook needs a signing secret." in response.content.decode()
    response = admin_client.post(reverse(ADD), form(kind=DestinationKind.WEBHOOK, url="https://example.com/x",
                                                     signing_secret="short"))
    assert "Use at least 16 characters." in response.content.decode()
    assert not Destination.objects.exists()


def test_the_url_is_stored_encrypted_shown_masked_and_kept_when_left_blank(admin_client):
    url = f"ntfy://alice:{PASSWORD}@ntfy.example.com/{TOPIC}"
    response = admin_client.post(reverse(ADD), form(url=url))
    assert response.status_code == 302, response.content.decode()[:2000]
    destination = Destination.objects.get()
    assert PASSWORD not in destination.url_encrypted and vault.decrypt(destination.url_encrypted) == url
    assert destination.url_masked == "ntfy://…@ntfy.example.com/…"
    change = reverse("admin:notifications_app_destination_change", args=[destination.pk])
    page = admin_client.get(change).content.decode()
    assert "ntfy://…@ntfy.example.com/…" in page and PASSWORD not in page and TOPIC not in page
    # Saving with the field blank keeps the stored URL.
    response = admin_client.post(change, form(name="phone (renamed)"))
    assert response.status_code == 302
    destination.refresh_from_db()
    assert destination.name == "phone (renamed)" and vault.decrypt(destination.url_encrypted) == url
    # Changing the kind needs the URL again.
    response = admin_client.post(change, form(kind=DestinationKind.WEBHOOK, signing_secret=SIGNING_SECRET))
    assert "Enter the URL again for the new kind." in response.content.decode()


def test_the_key_file_is_private_and_made_once(settings, tmp_path):
    settings.REDFLAG_NOTIFICATIONS_KEY_FILE = str(tmp_path / "notifications.key")
    token = vault.encrypt("gotify://host/secret-token")
    key = (tmp_path / "notifications.key").read_bytes()
    assert stat.S_IMODE(os.stat(tmp_path / "notifications.key").st_mode) == 0o600
    assert vault.decrypt(token) == "gotify://host/secret-token"
    vault.encrypt("again")
    assert (tmp_path / "notifications.key").read_bytes() == key


@pytest.mark.parametrize(("url", "mask"), [
    ("ntfys://tk_0123456789abcdef@ntfy.sh/alerts", "ntfys://…@ntfy.sh/…"),
    ("tgram://123456789:AAHsecretBotToken/987654", "tgram://…/…"),
    ("discord://112233/webhook-token-abc", "discord://…/…"),
    ("mailtos://user:pw@example.com:587?to=ops@example.com", "mailtos://…@example.com:587/…"),
    ("https://hooks.example.com/services/T0/B0/XXXX?token=abc", "https://hooks.example.com/…"),
])
def test_masks_show_no_credentials_path_or_query(url, mask):
    assert vault.mask_url(url) == mask


class _Records(logging.Handler):
    """What the server's log handlers receive (attached where the console handler is: the root logger)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''} {record.args!r}")


def test_secrets_appear_in_no_log_record_no_event_and_no_page(admin_client):
    records = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)
    secrets = (PASSWORD, TOPIC, SIGNING_SECRET, URL_TOKEN)
    try:
        # The capture works: a request of anything but a notification is logged as usual.
        with HttpReceiver() as other:
            requests.post(f"http://127.0.0.1:{other.port}/not-a-notification", timeout=5)
        with HttpReceiver(secret=SIGNING_SECRET.encode()) as hook, HttpReceiver(statuses=(500,)) as ntfy:
            admin_client.post(reverse(ADD), form(name="ntfy", url=f"ntfy://alice:{PASSWORD}@127.0.0.1:{ntfy.port}/{TOPIC}"))
            admin_client.post(reverse(ADD), form(name="hook", kind=DestinationKind.WEBHOOK,
                                                 url=f"http://127.0.0.1:{hook.port}/in?token={URL_TOKEN}",
                                                 signing_secret=SIGNING_SECRET))
            dead = free_port()  # nothing listens here: a connection error naming the URL
            admin_client.post(reverse(ADD), form(name="dead", kind=DestinationKind.WEBHOOK,
                                                 url=f"http://127.0.0.1:{dead}/x?token={URL_TOKEN}",
                                                 signing_secret=SIGNING_SECRET))
            assert Destination.objects.count() == 3
            make_rule("everything", Destination.objects.all(), trigger=Trigger.SECURITY_VIOLATION)
            with transaction.atomic():
                security_violation("replayed token", agent=None, metadata={})
            events_dispatch()
            for delivery in Delivery.objects.all():
                delivery_attempt(delivery_id=delivery.pk)
        assert hook.requests and hook.requests[0].verified and ntfy.requests
        errors = list(DeliveryAttempt.objects.exclude(error="").values_list("error", flat=True))
        assert len(errors) == 2 and any("Connection" in error for error in errors)
        pages = [admin_client.get(reverse(f"admin:notifications_app_{name}_changelist")).content.decode()
                 for name in ("destination", "rule", "delivery", "deliveryattempt")]
        pages += [admin_client.get(reverse("admin:notifications_app_destination_change", args=[pk])).content.decode()
                  for pk in Destination.objects.values_list("pk", flat=True)]
        pages += [admin_client.get(reverse("admin:notifications_app_delivery_change", args=[pk])).content.decode()
                  for pk in Delivery.objects.values_list("pk", flat=True)]
    finally:
        root.removeHandler(records)
        root.setLevel(old_level)
    events = [json.dumps([event.message, event.metadata]) for event in SystemEvent.objects.all()]
    assert len(events) >= 4 and "urllib3.connectionpool" in " ".join(records.lines)
    for secret in secrets:
        for where, texts in (("log", records.lines), ("event", events), ("page", pages), ("error", errors)):
            leaked = [text for text in texts if secret in text]
            assert not leaked, f"{secret} in {where}: {leaked[0][:300]}"


def test_rules_are_made_in_the_admin_and_a_test_message_is_queued_from_the_list(admin_client):
    destination = make_destination("phone", f"ntfy://ntfy.example.com/{TOPIC}")
    add = reverse("admin:notifications_app_rule_add")
    rule = {"name": "offline web", "enabled": "on", "trigger": Trigger.AGENT_OFFLINE, "min_severity": "info",
            "cadence": "immediate", "destinations": [destination.pk]}
    response = admin_client.post(add, rule)
    assert "Say after how many minutes offline" in response.content.decode()
    response = admin_client.post(add, {**rule, "offline_minutes": "15", "event_types": ["agent_install"]})
    assert response.status_code == 302
    saved = Rule.objects.get()
    assert saved.offline_minutes == 15 and saved.event_types == [] and list(saved.destinations.all()) == [destination]
    assert SystemEvent.objects.filter(metadata__rule_id=saved.pk, event_type="config_changed").exists()

    response = admin_client.post(reverse("admin:notifications_app_destination_changelist"),
                                 {"action": "send_test", "_selected_action": [destination.pk]})
    assert response.status_code == 302
    assert Delivery.objects.get().kind == DeliveryKind.TEST
