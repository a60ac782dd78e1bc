"""SystemEvents: append-only rows, one write path, read-only admin, the Auditors group."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, transaction

from events_app.choices import Component, EventSubtype, EventType
from events_app.models import AppendOnlyError, SystemEvent
from events_app.services import record_event


def make_event(**overrides) -> SystemEvent:
    values = dict(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.SUCCESS, component=Component.SERVER,
                  message="started", metadata={"pid": 42, "nested": {"ok": True}})
    values.update(overrides)
    return record_event(**values)


def test_saving_an_existing_event_raises(db):
    event = make_event()
    event.message = "rewritten history"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    assert SystemEvent.objects.get().message == "started"


def test_event_rolls_back_with_the_change_it_records(db):
    with pytest.raises(RuntimeError), transaction.atomic():
        make_event()
        raise RuntimeError("the change failed")
    assert not SystemEvent.objects.exists()


def test_history_survives_agent_deletion(agent):
    from agents_app.models import Agent

    event = SystemEvent.objects.filter(agent_id=agent.id).first()
    Agent.objects.filter(pk=agent.id).delete()
    event = SystemEvent.objects.get(pk=event.pk)
    assert event.agent_id is None and event.hostname == "web-01"


@pytest.mark.postgres_only
def test_metadata_gin_index_exists_on_postgresql(db):
    if connection.vendor != "postgresql":
        pytest.skip("the GIN index exists on PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'event_metadata_gin'")
        (definition,) = cursor.fetchone()
    assert "gin" in definition.lower() and "metadata" in definition


@pytest.fixture
def auditor(db):
    user = User.objects.create_user("audrey", password="pw-audrey-123", is_staff=True)
    user.groups.add(Group.objects.get(name="Auditors"))
    return user


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


def test_auditor_reads_events_and_changes_nothing(client, auditor, agent):
    from tokens_app.models import RegistrationToken

    assert client.login(username="audrey", password="pw-audrey-123")
    assert client.get("/admin/events_app/systemevent/").status_code == 200
    assert client.get("/admin/agents_app/agent/").status_code == 200
    token = RegistrationToken.objects.get()
    forbidden = [
        ("get", "/admin/tokens_app/registrationtoken/"),
        ("get", "/admin/tokens_app/registrationtoken/add/"),
        ("post", f"/admin/tokens_app/registrationtoken/{token.pk}/change/"),
        ("get", "/admin/redflag/serversettings/1/change/"),
        ("get", "/admin/auth/user/"),
        ("post", f"/admin/agents_app/agent/{agent.id}/change/"),
        ("post", f"/admin/agents_app/agent/{agent.id}/delete/"),
    ]
    for method, url in forbidden:
        assert getattr(client, method)(url).status_code == 403, url
    response = client.post("/admin/agents_app/agent/", {"action": "revoke_credentials", "_selected_action": [agent.id]})
    assert agent.model.revoked_at is None, response.status_code


def test_admin_logins_are_recorded(client, auditor):
    client.login(username="audrey", password="wrong")
    client.post("/admin/login/", {"username": "audrey", "password": "wrong"})
    client.post("/admin/login/", {"username": "audrey", "password": "pw-audrey-123"})
    assert SystemEvent.objects.filter(event_type="auth_failure", metadata__username="audrey").count() == 2
    assert SystemEvent.objects.filter(event_type="user_login", actor="audrey").count() == 1
    assert not SystemEvent.objects.filter(message__contains="pw-audrey").exists()


def test_admin_login_is_rate_limited(client, db):
    from redflag.models import ServerSettings

    row = ServerSettings.current()
    row.rate_admin = "3/min"
    row.save()
    codes = [client.post("/admin/login/", {"username": "x", "password": "y"}).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
