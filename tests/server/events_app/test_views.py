"""The history pages (events_app/views.py): filters in the query string, keyset pagination at constant cost,
detail, and the CSV and JSON Lines exports of the current filter, streamed in keyset batches and audited.

Who may read them is tested in test_access.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import timedelta

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from agents_app.models import Command
from events_app import querysets, views
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.models import SystemEvent
from events_app.querysets import decode_cursor, encode_cursor
from events_app.services import record_event
from tests.server.events_app.helpers import NOW, bulk_events

HISTORY = "/audit/events/"


def body(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


def ids(response) -> list[str]:
    return re.findall(r'data-id="([0-9a-f-]{36})"', response.content.decode())


# --- filters ------------------------------------------------------------------------------------------


@pytest.fixture
def mixed_events(db, agent):
    """Events of several kinds; one with metadata {"client_ip": "10.0.0.5", "attempt": 3}."""
    record_event(event_type=EventType.AUTH_FAILURE, subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                 component=Component.SECURITY, message="Failed log-in for 'bob'",
                 metadata={"client_ip": "10.0.0.5", "attempt": 3}, actor="bob")
    record_event(event_type=EventType.AUTH_FAILURE, subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                 component=Component.SECURITY, message="Failed log-in for 'eve'",
                 metadata={"client_ip": "10.0.0.9"}, actor="eve")
    record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                 message="poll interval changed", agent=agent.model, metadata={"field": "poll_interval"})


@pytest.mark.parametrize("query, expected_messages", [
    ("event_type=auth_failure", {"Failed log-in for 'bob'", "Failed log-in for 'eve'"}),
    ("severity=warning&subtype=failed&component=security", {"Failed log-in for 'bob'", "Failed log-in for 'eve'"}),
    ("q=BOB", {"Failed log-in for 'bob'"}),
    ("meta=client_ip%3D10.0.0.5", {"Failed log-in for 'bob'"}),
    ("meta=attempt%3D3", {"Failed log-in for 'bob'"}),  # a number in metadata, written as text
    ("meta=client_ip%3D10.0.0.5,attempt%3D4", set()),
    ("event_type=config_changed&component=config", {"poll interval changed"}),
    ("meta=client_ip%3D10.0.0.5,attempt%3D3", {"Failed log-in for 'bob'"}),
    ("meta=contains%3D1", set()),  # a key named like a lookup is just a key
    ("meta=a__b%3D1", set()),
    ("meta=field%3Dpoll_interval,client_ip%3D10.0.0.5", set()),
])
def test_filters(mixed_events, auditor_client, query, expected_messages):
    response = auditor_client.get(f"{HISTORY}?{query}")
    assert response.status_code == 200
    shown = {SystemEvent.objects.get(pk=pk).message for pk in ids(response)}
    assert shown == expected_messages


def test_filter_by_agent_and_time_range(mixed_events, agent, auditor_client):
    response = auditor_client.get(f"{HISTORY}?agent={agent.id}")
    assert {SystemEvent.objects.get(pk=pk).message for pk in ids(response)} >= {"poll interval changed"}
    assert all(SystemEvent.objects.get(pk=pk).agent_id is not None for pk in ids(response))
    old = bulk_events(3, start=NOW - timedelta(days=400), message="ancient")
    response = auditor_client.get(f"{HISTORY}?until=2025-03-01T00:00:00Z")
    assert set(ids(response)) == {str(e.id) for e in old}
    response = auditor_client.get(f"{HISTORY}?since=2025-03-01T00:00:00Z&q=ancient")
    assert ids(response) == []


@pytest.mark.parametrize("query", ["agent=nope", "event_type=bogus", "meta=novalue", "cursor=%%%",
                                   "since=2026-01-02&until=2026-01-01"])
def test_bad_filters_are_a_400_naming_the_field(db, auditor_client, query):
    response = auditor_client.get(f"{HISTORY}?{query}")
    assert response.status_code == 400
    assert "errors" in response.content.decode()


# --- keyset pagination ----------------------------------------------------------------------------


def test_pages_walk_every_row_once_newest_first_with_ties(db, auditor_client):
    # 120 rows, pairs sharing a timestamp: the id breaks ties, nothing is skipped or repeated.
    events = bulk_events(60, step=timedelta(seconds=2)) + bulk_events(60, step=timedelta(seconds=2))
    seen, url = [], f"{HISTORY}?event_type=agent_checkin"  # not the auditor's own log-in event
    while url:
        response = auditor_client.get(url)
        seen += ids(response)
        match = re.search(r'id="next-page" href="([^"]+)"', response.content.decode())
        url = HISTORY + match.group(1).replace("&amp;", "&") if match else None
    assert len(seen) == len(set(seen)) == 120
    expected = sorted(events, key=lambda e: (e.created_at, e.id), reverse=True)
    assert seen == [str(e.id) for e in expected]


def test_deep_page_costs_what_the_first_page_costs(db, auditor, django_assert_num_queries):
    """Session, user, permissions (user + group), role grants (accounts_app), one page query: six on any
    page; the first page, which goes live, also reads the newest seq (seven)."""
    bulk_events(2050)
    client = Client()
    client.force_login(auditor)
    deep = SystemEvent.objects.newest_first()[2000]

    cursor = encode_cursor(deep.created_at, deep.id)
    with django_assert_num_queries(7):
        first = client.get(HISTORY)
    with django_assert_num_queries(6):
        page = client.get(f"{HISTORY}?cursor={cursor}")
    assert len(ids(first)) == 50
    assert ids(page) == [str(e.id) for e in SystemEvent.objects.newest_first()[2001:2051]]
    assert decode_cursor(cursor) == (deep.created_at, deep.id)


def test_page_query_does_not_grow_with_filters_either(db, auditor, django_assert_num_queries):
    bulk_events(200, metadata={"k": "v"})
    client = Client()
    client.force_login(auditor)
    # 7 with no text filter; a text filter adds the edge of its scan window (one more, on any page).
    with django_assert_num_queries(7):
        client.get(f"{HISTORY}?event_type=agent_checkin&meta=k%3Dv&severity=info")
    with django_assert_num_queries(8):
        client.get(f"{HISTORY}?event_type=agent_checkin&meta=k%3Dv&q=check&severity=info")


# --- detail ---------------------------------------------------------------------------------------------


def test_detail_pretty_prints_metadata_and_links_what_it_concerns(db, agent, auditor_client):
    command = Command.objects.filter(agent_id=agent.id).first()
    command_id = str(command.id) if command else "00000000-0000-0000-0000-000000000001"
    event = record_event(event_type=EventType.COMMAND_CREATED, subtype=EventSubtype.INITIATED,
                         component=Component.SERVER, message="scan queued", agent=agent.model,
                         metadata={"command_id": command_id, "nested": {"b": 2, "a": [1, 2]}})
    response = auditor_client.get(f"{HISTORY}{event.id}/")
    body = response.content.decode()
    assert response.status_code == 200
    assert '&quot;nested&quot;: {\n    &quot;a&quot;: [\n      1,' in body
    assert reverse("admin:agents_app_agent_change", args=[agent.id]) in body
    assert reverse("admin:agents_app_command_change", args=[command_id]) in body
    assert auditor_client.get(f"{HISTORY}00000000-0000-0000-0000-000000000000/").status_code == 404


def test_history_rows_link_to_detail(db, auditor_client):
    event = record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO,
                         component=Component.SERVER, message="up")
    assert f'href="/audit/events/{event.id}/"' in auditor_client.get(HISTORY).content.decode()


def test_csv_export_of_the_filter(auditor_client):
    bulk_events(30, event_type="agent_scan", message="scan done", metadata={"package_type": "apt"})
    bulk_events(5, event_type="agent_reboot", message="=HYPERLINK(\"http://evil\")")
    response = auditor_client.get("/audit/events/export.csv?event_type=agent_scan&meta=package_type%3Dapt")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="redflag-events-')
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert len(rows) == 30 and {r["event_type"] for r in rows} == {"agent_scan"}
    assert json.loads(rows[0]["metadata"]) == {"package_type": "apt"}
    created = [r["created_at"] for r in rows]
    assert created == sorted(created, reverse=True)


def test_jsonl_export_and_the_export_is_recorded(auditor_client):
    bulk_events(12, event_type="auth_failure", severity="warning")
    response = auditor_client.get("/audit/events/export.jsonl?event_type=auth_failure&severity=warning")
    lines = [json.loads(line) for line in body(response).splitlines()]
    assert response["Content-Type"] == "application/x-ndjson"
    assert len(lines) == 12 and lines[0]["severity"] == "warning"
    record = SystemEvent.objects.get(event_type=EventType.AUDIT_EXPORT)
    assert record.actor == "audrey"
    assert record.metadata == {"format": "jsonl", "via": "history page",
                               "filters": {"event_type": "auth_failure", "severity": "warning"}}


def test_export_streams_in_keyset_batches(auditor_client, monkeypatch, django_assert_num_queries):
    """Queries grow with the number of batches, never with rows held in memory at once."""
    bulk_events(95, event_type="agent_scan")
    monkeypatch.setattr(views, "EXPORT_BATCH", 20)
    # Access checks and the export record happen in the view; streaming is 95 rows / 20 = 5 pages.
    response = auditor_client.get("/audit/events/export.jsonl?event_type=agent_scan")
    with django_assert_num_queries(5):
        lines = body(response).splitlines()
    assert len(lines) == 95 and len({json.loads(x)["id"] for x in lines}) == 95


def test_bad_filter_or_format(auditor_client):
    assert auditor_client.get("/audit/events/export.csv?severity=loud").status_code == 400
    assert auditor_client.get("/audit/events/export.xml").status_code == 400
    assert not SystemEvent.objects.filter(event_type=EventType.AUDIT_EXPORT).exists()


# --- the text filter's scan window ------------------------------------------------------------------------


def test_a_text_search_reads_a_bounded_window_a_page_and_finds_every_match(auditor_client, monkeypatch,
                                                                          django_assert_num_queries):
    """Message text has no index: each page reads at most TEXT_SCAN_WINDOW events of the rest of the filter,
    says how far back it searched, and the next page goes on from there; following the pages finds every match."""
    monkeypatch.setattr(querysets, "TEXT_SCAN_WINDOW", 10)
    needles = bulk_events(3, start=NOW - timedelta(seconds=5), step=timedelta(seconds=11), message="needle here")
    bulk_events(40, message="hay")
    url, pages, seen = f"{HISTORY}?event_type=agent_checkin&q=NEEDLE", 0, []
    with django_assert_num_queries(8):  # session, user, 2 permissions, role grants, live seq, the edge, the page
        first = auditor_client.get(url)
    while url:
        response = first if pages == 0 else auditor_client.get(url)
        pages += 1
        seen += ids(response)
        body = response.content.decode()
        match = re.search(r'id="next-page" href="([^"]+)"', body)
        if match:
            assert 'id="searched-back-to"' in body  # a short page with a next one says why
        url = HISTORY + match.group(1).replace("&amp;", "&") if match else None
    assert seen == [str(e.id) for e in needles]
    assert pages == 5  # 43 events, 10 a page, the last page reads the 3 left


def test_the_api_says_how_far_back_a_text_page_searched(auditor_token, monkeypatch):
    _, secret = auditor_token
    monkeypatch.setattr(querysets, "TEXT_SCAN_WINDOW", 10)
    bulk_events(20, message="hay")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    body = client.get("/api/v1/audit/events", {"q": "needle", "event_type": "agent_checkin"}).json()
    assert body["results"] == [] and body["next_cursor"] and body["searched_back_to"]
    body = client.get("/api/v1/audit/events", {"event_type": "agent_checkin"}).json()
    assert body["searched_back_to"] is None and len(body["results"]) == 20
