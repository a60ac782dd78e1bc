"""The event admin (events_app/admin.py): a read-only list and detail, linked to the history; audit API tokens."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from events_app.admin import CappedCountPaginator, SystemEventAdmin
from events_app.choices import Component, EventSubtype, EventType
from events_app.models import AuditApiToken, SystemEvent
from events_app.services import record_event
from tests.server.events_app.helpers import NOW, bulk_events, make_event, make_user

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


def test_admin_event_list_counts_at_most_its_cap_and_says_more(admin_client, monkeypatch):
    """An exact count of millions of rows is seconds a page: the list counts up to the cap and says "more than"."""
    monkeypatch.setattr(CappedCountPaginator, "COUNT_CAP", 3)
    bulk_events(5)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/events_app/systemevent/")
    assert response.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1 and "LIMIT 4" in counts[0]  # the cap + 1, never the whole table
    body = response.content.decode()
    assert 'id="capped-count"' in body and "More than 3 system events" in body and 'href="/audit/events/"' in body
    assert response.context["cl"].result_count == 4  # "more than 3": no larger figure was read
    below_cap = admin_client.get("/admin/events_app/systemevent/", {"event_type__exact": "agent_checkin",
                                                                     "q": "no such event"})
    assert below_cap.context["cl"].result_count == 0 and 'id="capped-count"' not in below_cap.content.decode()


def test_admin_event_list_reads_no_whole_table_aggregate(admin_client):
    """No date drill-down (a DISTINCT over every row), no facet counts even when asked for."""
    bulk_events(3)
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get("/admin/events_app/systemevent/", {"_facets": "1"})
    assert response.status_code == 200
    sql = " ".join(q["sql"].upper() for q in queries.captured_queries)
    assert "DISTINCT" not in sql and "DATE_TRUNC" not in sql and "DJANGO_DATETIME_TRUNC" not in sql


def test_admin_search_covers_the_newest_events_of_its_window(admin_client, monkeypatch):
    """"Contains" has no index: the search reads the newest search_window events, and says so."""
    monkeypatch.setattr(SystemEventAdmin, "search_window", 3)
    old = bulk_events(1, start=NOW - timedelta(days=1), message="needle, but old")
    bulk_events(5, message="hay")
    response = admin_client.get("/admin/events_app/systemevent/", {"q": "needle"})
    assert response.status_code == 200 and response.context["cl"].result_count == 0
    body = response.content.decode()
    assert 'id="search-window"' in body and "newest 3 events" in body and "/audit/events/?q=needle" in body
    monkeypatch.setattr(SystemEventAdmin, "search_window", 10)
    response = admin_client.get("/admin/events_app/systemevent/", {"q": "needle"})
    assert [e.pk for e in response.context["cl"].result_list] == [old[0].pk]


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
