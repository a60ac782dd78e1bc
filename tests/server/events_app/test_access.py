"""The auditor role (events_app/access.py and the Auditors group): read event history and agents, nothing else.

The history pages refuse everyone else. The first test walks the whole URL conf (django.urls.get_resolver),
so a page or endpoint added later is covered without anyone remembering to list it: each named route is
reversed with real objects for its parameters and POSTed to as an auditor (CSRF checks off, so the answer
is the permission decision, not the CSRF one).
"""

from __future__ import annotations

import uuid

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.contrib.sessions.models import Session
from django.test import Client, RequestFactory
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse

from agents_app.models import Agent, Command
from events_app.choices import Component, EventSubtype, EventType
from events_app.models import SystemEvent
from events_app.services import record_event
from redflag.models import ServerSettings
from tests.server.events_app.helpers import PASSWORD, make_user
from tokens_app.models import RegistrationToken

HISTORY = "/audit/events/"

# Routes that are not mutations of RedFlag's data, or belong to the user themself.
SELF_SERVICE = {"admin:login", "admin:logout", "admin:password_change", "admin:password_change_done"}
# The sign-in and the person's own account pages (allauth through accounts_app/signin): their own second
# factors, password and session, tested in tests/server/accounts_app/signin/.
SIGN_IN_MODULES = ("allauth.", "accounts_app.signin.")
# Read-only admin pages (a POST there runs nothing; changelist actions are checked separately).
READ_ONLY_ADMIN_SUFFIXES = ("_changelist", "_history")
READ_ONLY_ADMIN = {"admin:index", "admin:app_list", "admin:jsi18n", "admin:autocomplete", "admin:view_on_site",
                   "home"}  # "/" only redirects to the admin
# Enrollment endpoints are authenticated by a secret in the body (registration or refresh token), not
# by a user; an auditor's session gives no access: without the secret they answer 400/401.
ENROLLMENT = {"agent-register", "agent-renew"}
REFUSED = {401, 403, 405}


def walk(patterns, prefix_ns: str = ""):
    """(full name, pattern) for every named route."""
    for entry in patterns:
        if isinstance(entry, URLResolver):
            namespace = f"{prefix_ns}{entry.namespace}:" if entry.namespace else prefix_ns
            yield from walk(entry.url_patterns, namespace)
        elif isinstance(entry, URLPattern) and entry.name:
            yield f"{prefix_ns}{entry.name}", entry


def parameter_names(pattern: URLPattern) -> list[str]:
    return list(pattern.pattern.regex.groupindex)


@pytest.fixture
def world(db, agent, registration_secret):
    """At least one row of every model the admin can change, so object pages resolve to a real object."""
    ServerSettings.current()
    record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO, component=Component.SERVER,
                 message="up")
    return {"agent": agent, "auditor": make_user("audrey", auditor=True),
            "groups": Group.objects.count(), "users": User.objects.count()}


def object_id_for(name: str) -> str | None:
    """The pk of an existing row for admin:<app>_<model>_<view>, or None when there is none."""
    for model in admin.site._registry:
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}_"
        if name.startswith(prefix):
            row = model._default_manager.order_by("pk").first()
            return str(row.pk) if row else None
    return None


def concrete_url(name: str, pattern: URLPattern, world) -> str | None:
    kwargs = {}
    for param in parameter_names(pattern):
        if param == "agent_id":
            kwargs[param] = world["agent"].id
        elif param == "object_id":
            kwargs[param] = object_id_for(name)
            if kwargs[param] is None:
                return None
        elif param == "app_label":
            kwargs[param] = "agents_app"
        elif param == "export_format":
            kwargs[param] = "csv"
        elif param in ("content_type_id",):
            kwargs[param] = 1
        elif param == "url":
            kwargs[param] = "nowhere/"
        else:
            kwargs[param] = None  # found below: the first sample value the route accepts
    unknown = [param for param, value in kwargs.items() if value is None]
    for sample in (uuid.uuid4(), "1.0.0", "1", "linux", "x"):
        try:
            return reverse(name, kwargs={**kwargs, **{param: sample for param in unknown}})
        except NoReverseMatch:
            continue
    raise AssertionError(f"no sample value fits the parameters {unknown} of {name}; add one above")


def every_row() -> dict:
    """Every row of every model (sessions aside: a log-in writes one), to prove a refusal stored nothing."""
    return {model._meta.label: list(model._default_manager.order_by("pk").values())
            for model in apps.get_models() if model is not Session}


def test_every_mutating_route_refuses_an_auditor(world):
    client = Client()
    client.force_login(world["auditor"])
    before = every_row()
    checked, unreachable, failures = [], [], []
    for name, pattern in walk(get_resolver().url_patterns):
        if name in SELF_SERVICE or name in READ_ONLY_ADMIN or name.endswith(READ_ONLY_ADMIN_SUFFIXES):
            continue
        if pattern.callback.__module__.startswith(SIGN_IN_MODULES):
            continue
        url = concrete_url(name, pattern, world)
        if url is None:
            unreachable.append(name)
            continue
        response = (client.post(url, {}, content_type="application/json") if url.startswith("/api/")
                    else client.post(url, {}))
        checked.append(name)
        allowed = REFUSED | ({400} if name in ENROLLMENT else set())
        if response.status_code not in allowed:
            failures.append(f"{name} {url}: {response.status_code}")
    assert not failures, failures
    after = every_row()
    assert {label: rows for label, rows in after.items() if rows != before[label]} == {}  # nothing stored
    # The walk really covered the admin's add/change/delete pages and the agent API.
    assert "admin:agents_app_agent_change" in checked and "admin:auth_user_add" in checked
    assert "agent-checkin" in checked and "events:history" in checked
    # Object pages of models with no row here are covered by the permission check below.
    for name in unreachable:
        assert name.endswith(("_change", "_delete")), name


@pytest.mark.parametrize("model_admin", list(admin.site._registry.values()), ids=lambda ma: str(ma.model._meta))
def test_admin_grants_an_auditor_no_write_and_no_action(world, model_admin):
    request = RequestFactory().post("/admin/")
    request.user = world["auditor"]
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    readable = {"events_app.systemevent", "agents_app.agent"}
    assert model_admin.has_view_permission(request) == (str(model_admin.model._meta) in readable)
    if model_admin.has_view_permission(request):  # the changelist (and its actions) is reachable
        assert model_admin.get_actions(request) == {}, "an auditor must not be offered any changelist action"


def test_changelist_actions_posted_by_an_auditor_change_nothing(world):
    client = Client()
    client.force_login(world["auditor"])
    agent = Agent.objects.get(pk=world["agent"].id)
    before = (Command.objects.count(), agent.revoked_at, agent.heartbeat_until)
    for action in admin.site._registry[Agent].actions:
        response = client.post(reverse("admin:agents_app_agent_changelist"),
                               {"action": action, "_selected_action": [str(agent.pk)]})
        assert response.status_code in (200, 302, 403)
    agent.refresh_from_db()
    assert (Command.objects.count(), agent.revoked_at, agent.heartbeat_until) == before


def test_auditor_reads_agents_and_events_in_the_admin(world):
    client = Client()
    client.force_login(world["auditor"])
    assert client.get(reverse("admin:agents_app_agent_changelist")).status_code == 200
    assert client.get(reverse("admin:agents_app_agent_change", args=[world["agent"].id])).status_code == 200
    assert client.get(reverse("admin:events_app_systemevent_changelist")).status_code == 200
    assert client.get(reverse("admin:tokens_app_registrationtoken_changelist")).status_code == 403
    assert client.get(reverse("admin:auth_user_changelist")).status_code == 403


def test_auditor_reads_events_and_changes_nothing(client, auditor, agent):
    assert client.login(username="audrey", password=PASSWORD)
    assert client.get("/admin/events_app/systemevent/").status_code == 200
    assert client.get("/admin/agents_app/agent/").status_code == 200
    token = RegistrationToken.objects.get()
    before = every_row()
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
    assert every_row() == before  # the refused posts changed and deleted nothing
    response = client.post("/admin/agents_app/agent/", {"action": "revoke_credentials", "_selected_action": [agent.id]})
    assert agent.model.revoked_at is None, response.status_code


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
    assert not SystemEvent.objects.filter(event_type=EventType.AUDIT_EXPORT).exists()  # a refused export is no export


def test_auditor_and_admin_may_read(db, auditor_client):
    record_event(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.INFO, component=Component.SERVER,
                 message="server up")
    response = auditor_client.get(HISTORY)
    assert response.status_code == 200
    assert "server up" in response.content.decode()
    admin = Client()
    admin.force_login(make_user("root", superuser=True))
    response = admin.get(HISTORY)
    assert response.status_code == 200
    assert "server up" in response.content.decode()
