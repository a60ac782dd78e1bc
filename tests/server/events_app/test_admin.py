"""The event admin (events_app/admin.py): a read-only list and detail, linked to the history; audit API tokens."""

from __future__ import annotations

import hashlib

from django.test import Client
from django.urls import reverse

from events_app.choices import Component, EventSubtype, EventType
from events_app.models import AuditApiToken, SystemEvent
from events_app.services import record_event
from tests.server.events_app.helpers import make_event, make_user

URL = "/api/v1/audit/events"


def get(client, secret=None, query=""):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    return client.get(f"{URL}{query}", **headers)


def test_admin_event_list_filters_and_searches(admin_client):
    make_event(message="disk almost full on nas", hostname="nas-01", severity="warning")
    make_event(message="started")
    response = admin_client.get("/admin/events_app/systemevent/", {"q": "nas"})
    assert response.status_code == 200
    assert b"disk almost full" in response.content and response.context["cl"].result_count == 1
    response = admin_client.get("/admin/events_app/systemevent/", {"severity__exact": "warning"})
    assert response.context["cl"].result_count == 1


def test_admin_event_detail_shows_metadata_readably_and_cannot_change(admin_client):
    event = make_event()
    response = admin_client.get(f"/admin/events_app/systemevent/{event.pk}/change/")
    assert response.status_code == 200
    assert b"&quot;nested&quot;: {" in response.content  # pretty-printed JSON
    assert b'name="_save"' not in response.content
    response = admin_client.post(f"/admin/events_app/systemevent/{event.pk}/change/", {"message": "edited"})
    assert response.status_code == 403
    assert admin_client.post(f"/admin/events_app/systemevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert SystemEvent.objects.get(pk=event.pk).message == "started"


def test_admin_event_list_links_into_the_history(db, agent, auditor_client):
    event = record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS,
                         component=Component.CONFIG, message="changed", agent=agent.model)
    body = auditor_client.get(reverse("admin:events_app_systemevent_changelist")).content.decode()
    assert f'href="/audit/events/{event.id}/"' in body
    assert f'href="/audit/events/?agent={agent.id}"' in body


def test_admin_issues_a_token_shown_once_and_revokes_it(db):
    admin = Client()
    admin.force_login(make_user("root", superuser=True))
    auditor = make_user("siem2", auditor=True)
    response = admin.post("/admin/events_app/auditapitoken/add/", {"user": auditor.pk, "label": "splunk"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    secret = response.content.decode().split('id="audit-token-secret"')[1].split(">")[1].split("<")[0]
    token = AuditApiToken.objects.get(label="splunk")
    assert token.token_hash == hashlib.sha256(secret.encode()).hexdigest() and token.user == auditor
    assert secret not in admin.get(f"/admin/events_app/auditapitoken/{token.pk}/change/").content.decode()
    assert get(Client(), secret).status_code == 200
    response = admin.post("/admin/events_app/auditapitoken/",
                          {"action": "revoke_selected", "_selected_action": [str(token.pk)]}, follow=True)
    assert "Revoked 1 token(s)." in response.content.decode()
    assert AuditApiToken.objects.get(pk=token.pk).revoked_at is not None
    revoked = SystemEvent.objects.get(event_type=EventType.TOKEN_REVOKED)
    assert revoked.actor == "root" and revoked.metadata["audit_token_id"] == str(token.pk)
    assert get(Client(), secret).status_code == 401
