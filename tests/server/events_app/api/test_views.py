"""GET /api/v1/audit/events (events_app/api/): per-user bearer tokens (revocable), filters, cursor pages, the schema."""

from __future__ import annotations

import pytest

from events_app.choices import EventType
from events_app.models import AuditApiToken, SystemEvent
from events_app.querysets import encode_cursor
from events_app.services import audit_token_issue, audit_token_revoke
from tests.server.events_app.helpers import NOW, bulk_events, make_user

URL = "/api/v1/audit/events"


def get(client, secret=None, query=""):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if secret else {}
    return client.get(f"{URL}{query}", **headers)


# --- credentials first ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer rfa_wrong", "Bearer", "Token abc", "Bearer not-ours"])
def test_missing_or_bad_token_is_401(auditor_token, client, header):
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get(URL, **kwargs)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert set(response.json()["error"]) >= {"code", "message"}


def test_revoked_token_is_401(auditor_token, client):
    token, secret = auditor_token
    assert get(client, secret).status_code == 200
    assert audit_token_revoke(token=token, revoked_by="root") is True
    assert audit_token_revoke(token=token, revoked_by="root") is False
    response = get(client, secret)
    assert response.status_code == 401
    assert response.json()["error"] == {"code": "authentication_failed", "message": "Invalid token."}
    assert SystemEvent.objects.filter(event_type=EventType.TOKEN_REVOKED, metadata__kind="audit_api").count() == 1


def test_user_who_is_not_an_auditor_is_403(db, client):
    _, secret = audit_token_issue(user=make_user("plain"), label="x", issued_by="root")
    bulk_events(1, message="not for plain users")
    response = get(client, secret)
    assert response.status_code == 403
    assert response.json()["error"] == {"code": "permission_denied",
                                        "message": "This token's user may not read the event history."}
    assert "not for plain users" not in response.content.decode()


def test_inactive_user_is_401(auditor_token, client):
    token, secret = auditor_token
    token.user.is_active = False
    token.user.save()
    response = get(client, secret)
    assert response.status_code == 401
    # The same answer as a wrong token (no hint which), and the refused token is not marked used.
    assert response.json()["error"] == {"code": "authentication_failed", "message": "Invalid token."}
    assert AuditApiToken.objects.get(pk=token.pk).last_used_at is None


# --- reading ------------------------------------------------------------------------------------------


def test_filters_and_cursor_pages(auditor_token, client):
    _, secret = auditor_token
    bulk_events(25, event_type="agent_scan", metadata={"package_type": "apt"})
    bulk_events(5, event_type="agent_reboot")
    seen, cursor = [], ""
    while True:
        body = get(client, secret, f"?event_type=agent_scan&meta=package_type%3Dapt&limit=10{cursor}").json()
        seen += body["results"]
        if not body["next_cursor"]:
            break
        cursor = f"&cursor={body['next_cursor']}"
    assert len(seen) == 25 and len({row["id"] for row in seen}) == 25
    assert {row["event_type"] for row in seen} == {"agent_scan"}
    assert [row["created_at"] for row in seen] == sorted((row["created_at"] for row in seen), reverse=True)


@pytest.mark.parametrize("query", ["?limit=0", "?limit=501", "?limit=x", "?severity=loud", "?cursor=zzz",
                                   "?agent=1", "?since=yesterday"])
def test_bad_parameters_are_400_naming_the_field(auditor_token, client, query):
    response = get(client, auditor_token[1], query)
    assert response.status_code == 400
    name = query[1:].split("=")[0]
    assert name in response.json()["error"]["fields"]


def test_query_count_is_constant_with_depth(auditor_token, client, django_assert_num_queries):
    _, secret = auditor_token
    bulk_events(1200, start=NOW)
    get(client, secret)  # last_used_at written once a minute: keep it out of the counts
    deep = SystemEvent.objects.newest_first()[1000]

    # token + user, the user's permissions (user, groups), one page query
    with django_assert_num_queries(4):
        first = get(client, secret, "?limit=50").json()
    with django_assert_num_queries(4):
        page = get(client, secret, f"?limit=50&cursor={encode_cursor(deep.created_at, deep.id)}").json()
    assert len(first["results"]) == len(page["results"]) == 50


def test_last_used_is_recorded(auditor_token, client):
    token, secret = auditor_token
    get(client, secret)
    assert AuditApiToken.objects.get(pk=token.pk).last_used_at is not None


def test_listed_in_the_openapi_schema(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"][URL]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"agent", "event_type", "cursor", "limit", "meta"}
    assert set(operation["responses"]) >= {"200", "400", "401", "403"}
    assert operation["security"] == [{"AuditToken": []}]
