"""Auditor history page: access, filters in the query string, keyset pagination at constant cost, detail."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.filters import EventFilterForm
from events_app.models import SystemEvent
from events_app.querysets import EventFilter, decode_cursor
from events_app.services import record_event
from tests.server.test_audit_helpers import NOW, bulk_events, make_user

HISTORY = "/audit/events/"


@pytest.fixture
def auditor(db):
    return make_user("audrey", auditor=True)


@pytest.fixture
def auditor_client(auditor) -> Client:
    client = Client()
    client.force_login(auditor)
    return client


def ids(response) -> list[str]:
    return re.findall(r'data-id="([0-9a-f-]{36})"', response.content.decode())


# --- access ---------------------------------------------------------------------------------------


def test_anonymous_is_sent_to_the_login_page(db, client):
    response = client.get(HISTORY)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


@pytest.mark.parametrize("kind", ["plain staff", "auditor group but not staff", "not staff"])
def test_users_without_the_auditor_role_are_refused(db, client, kind):
    user = {
        "plain staff": lambda: make_user("staff"),
        "auditor group but not staff": lambda: make_user("nostaff", staff=False, auditor=True),
        "not staff": lambda: make_user("user", staff=False),
    }[kind]()
    client.force_login(user)
    event = record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO,
                         component=Component.SERVER, message="up")
    for url in (HISTORY, f"{HISTORY}{event.id}/", f"{HISTORY}export.csv"):
        assert client.get(url).status_code == 403, url


def test_auditor_and_admin_may_read(db, auditor_client):
    record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO, component=Component.SERVER,
                 message="server up")
    response = auditor_client.get(HISTORY)
    assert response.status_code == 200
    assert "server up" in response.content.decode()
    admin = Client()
    admin.force_login(make_user("root", superuser=True))
    assert admin.get(HISTORY).status_code == 200


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


def test_filter_spec_round_trip():
    form = EventFilterForm({"event_type": "auth_failure", "meta": "a=1, b = x", "q": "  bob "})
    assert form.is_valid(), form.errors
    assert form.spec() == EventFilter(event_type="auth_failure", metadata=(("a", "1"), ("b", "x")), text="bob")


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
    """Session, user, permissions (user + group), one page query: five on any page; the first
    page, which goes live, also reads the newest seq (six)."""
    bulk_events(2050)
    client = Client()
    client.force_login(auditor)
    deep = SystemEvent.objects.newest_first()[2000]
    from events_app.querysets import encode_cursor

    cursor = encode_cursor(deep.created_at, deep.id)
    with django_assert_num_queries(6):
        first = client.get(HISTORY)
    with django_assert_num_queries(5):
        page = client.get(f"{HISTORY}?cursor={cursor}")
    assert len(ids(first)) == 50
    assert ids(page) == [str(e.id) for e in SystemEvent.objects.newest_first()[2001:2051]]
    assert decode_cursor(cursor) == (deep.created_at, deep.id)


def test_page_query_does_not_grow_with_filters_either(db, auditor, django_assert_num_queries):
    bulk_events(200, metadata={"k": "v"})
    client = Client()
    client.force_login(auditor)
    with django_assert_num_queries(6):
        client.get(f"{HISTORY}?event_type=agent_checkin&meta=k%3Dv&q=check&severity=info")


# --- detail ---------------------------------------------------------------------------------------------


def test_detail_pretty_prints_metadata_and_links_what_it_concerns(db, agent, auditor_client):
    from agents_app.models import Command

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


def test_record_event_numbers_rows_in_insertion_order(db):
    first = record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO,
                         component=Component.SERVER, message="one")
    second = record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO,
                          component=Component.SERVER, message="two")
    assert first.seq is not None and second.seq == first.seq + 1
    assert [e.message for e in SystemEvent.objects.after_seq(first.seq - 1)] == ["one", "two"]


def test_admin_event_list_links_into_the_history(db, agent, auditor_client):
    event = record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS,
                         component=Component.CONFIG, message="changed", agent=agent.model)
    body = auditor_client.get(reverse("admin:events_app_systemevent_changelist")).content.decode()
    assert f'href="/audit/events/{event.id}/"' in body
    assert f'href="/audit/events/?agent={agent.id}"' in body
