"""Roles as permissions (RoleBackend), scopes as filters (GrantAccessPolicy), and what they narrow beyond
the page walk: counts, pickers, the autocomplete, the people page, query counts."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts_app.models import RoleGrant
from accounts_app.roles import role_permissions
from advisories_app.risk import fleet_risk
from agents_app.admin.dashboard import fleet_summary
from agents_app.models import Agent, AgentGroup, PackageUpdate
from agents_app.services.groups import group_delete
from events_app.choices import EventType
from events_app.models import SystemEvent
from redflag.access import APPROVE_UPDATES, OPERATE_AGENTS, agents_q, group_ids, scope_queryset
from tests.server.accounts_app.helpers import make_agent, make_group, make_user
from tests.server.accounts_app.world import INSIDE_HOST, OUTSIDE_HOST, build_world
from tests.server.events_app.helpers import make_user as make_events_user

pytestmark = pytest.mark.django_db


def fresh(user):
    """The user as the next request loads it (nothing cached from an earlier answer)."""
    return get_user_model().objects.get(pk=user.pk)


def visible(user, perm=None) -> list[str]:
    return sorted(scope_queryset(Agent.objects.all(), fresh(user), "", perm).values_list("hostname", flat=True))


def test_each_role_holds_its_permissions_and_no_other():
    make_group("web")
    expectations = {
        "viewer": ({"agents_app.view_agent", "agents_app.view_packageupdate", "advisories_app.view_exposure"},
                   {OPERATE_AGENTS, APPROVE_UPDATES, "events_app.view_systemevent", "agents_app.change_agent"}),
        "operator": ({OPERATE_AGENTS, "agents_app.change_agentsubsystem", "agents_app.view_command"},
                     {APPROVE_UPDATES, "tokens_app.add_registrationtoken"}),
        "approver": ({APPROVE_UPDATES, "policies_app.add_policy", "agents_app.view_packageupdate"},
                     {OPERATE_AGENTS, "auth.change_user", "agents_app.change_packageupdate"}),
        "admin": ({"tokens_app.add_registrationtoken", "agents_app.add_agentrelease", "redflag.change_serversettings",
                   "auth.add_user", "accounts_app.change_rolegrant"},
                  {APPROVE_UPDATES, OPERATE_AGENTS, "events_app.view_systemevent", "auth.change_group",
                   "auth.change_permission"}),
        "auditor": ({"events_app.view_systemevent", "agents_app.view_agent"},
                    {"agents_app.view_packageupdate", OPERATE_AGENTS, "events_app.delete_systemevent"}),
    }
    for role, (held, not_held) in expectations.items():
        user = fresh(make_user(f"u-{role}", grants=[(role, [])]))
        assert user.is_staff
        assert all(user.has_perm(perm) for perm in held), role
        assert not any(user.has_perm(perm) for perm in not_held), role
    inactive = make_user("gone", grants=[("admin", [])])
    inactive.is_active = False
    inactive.save()
    assert not fresh(inactive).has_perm("auth.add_user")
    assert fresh(make_user("root", is_superuser=True)).has_perm(APPROVE_UPDATES)


def test_every_role_permission_names_a_real_permission_or_a_capability():
    """A typo in roles.py would grant nothing and fail silently: every name must exist."""
    existing = {f"{app}.{codename}" for app, codename in
                Permission.objects.values_list("content_type__app_label", "codename")}
    for role, permissions in role_permissions().items():
        assert permissions - existing <= {OPERATE_AGENTS, APPROVE_UPDATES}, role


def test_scope_of_a_permission_is_the_union_of_the_grants_that_carry_it():
    web1, db1 = make_agent("web-1"), make_agent("db-1")
    make_agent("web-2", tags=["frontend"])
    make_group("web", web1)
    make_group("front", rule_tag="frontend")
    make_group("db", db1)
    mixed = make_user("mixed", grants=[("viewer", []), ("approver", ["web", "front"]), ("operator", ["db"])])
    assert visible(mixed) == ["db-1", "web-1", "web-2"]
    assert visible(mixed, "agents_app.view_agent") == ["db-1", "web-1", "web-2"]
    assert visible(mixed, APPROVE_UPDATES) == ["web-1", "web-2"]
    assert visible(mixed, OPERATE_AGENTS) == ["db-1"]
    assert visible(mixed, "events_app.view_systemevent") == []  # no auditor grant: no events at all
    assert group_ids(fresh(mixed), APPROVE_UPDATES) == set(AgentGroup.objects.filter(
        name__in=["web", "front"]).values_list("pk", flat=True))
    assert agents_q(fresh(make_user("root", is_superuser=True)), APPROVE_UPDATES) is None
    assert visible(make_user("nobody", is_staff=True)) == []


def test_the_auditors_group_keeps_reading_the_whole_fleet():
    """events_app's Auditors group (migration 0002) predates roles: its permissions reach every agent."""
    make_agent("web-1")
    make_agent("db-1")
    auditor = make_events_user("audrey", auditor=True)
    assert visible(auditor, "events_app.view_systemevent") == ["db-1", "web-1"]
    assert visible(auditor, "agents_app.view_packageupdate") == []


def test_dashboard_and_risk_figures_count_only_the_agents_in_scope():
    world = build_world()
    scoped, fleet = world.users["viewer-web"], world.users["viewer-fleet"]
    assert fleet_summary(user=fresh(scoped))["agents"]["total"] == 1
    assert fleet_summary(user=fresh(fleet))["agents"]["total"] == 2
    assert fleet_summary(user=fresh(scoped))["updates_total"] == 1
    assert fleet_summary(user=fresh(world.users["staff-no-role"]))["agents"]["total"] == 0
    assert fleet_risk(fresh(scoped))["exposed_machines"] == 1
    assert fleet_risk(fresh(fleet))["exposed_machines"] == 2
    client = Client()
    client.force_login(scoped)
    page = client.get("/admin/").content.decode()
    assert 'id="rf-agents"' in page and OUTSIDE_HOST not in page


def test_cve_counts_pickers_and_autocomplete_are_scoped():
    world = build_world()
    client = Client()
    client.force_login(world.users["viewer-web"])
    cve_page = client.get("/admin/advisories_app/vulnerability/").content.decode()
    assert "1 machine(s)" in cve_page and "2 machine(s)" not in cve_page
    auditor = Client()
    auditor.force_login(world.users["auditor-web"])
    picked = auditor.get("/audit/events/", {"agent": str(world.outside.pk)})
    assert picked.status_code == 200 and OUTSIDE_HOST not in picked.content.decode()
    found = auditor.get("/admin/autocomplete/", {"app_label": "events_app", "model_name": "systemevent",
                                                 "field_name": "agent", "term": ""})
    assert [row["text"] for row in found.json()["results"]] == [INSIDE_HOST]


def test_a_list_filter_on_agents_lists_only_agents_in_scope():
    world = build_world()
    second = make_agent("web-inside-02")  # a filter with one choice is not shown at all
    AgentGroup.objects.get(name="web").members.add(second)
    PackageUpdate.objects.create(agent=second, package_type="apt", name="zlib", current_version="1",
                                 available_version="2")
    client = Client()
    client.force_login(world.users["viewer-web"])
    page = client.get("/admin/agents_app/packageupdate/").content.decode()
    assert f"agent__id__exact={world.inside.pk}" in page
    assert str(world.outside.pk) not in page


def test_a_scoped_list_costs_the_same_queries_whatever_the_fleet_size():
    world = build_world()
    client = Client()
    client.force_login(world.users["viewer-web"])

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/admin/agents_app/agent/").status_code == 200
        return len(queries)

    small = count()
    web = AgentGroup.objects.get(name="web")
    web.members.add(*[make_agent(f"web-more-{index}") for index in range(15)])
    for index in range(15):
        make_agent(f"db-more-{index}")
    assert count() == small


def test_deleting_a_group_records_the_narrowed_grants():
    make_group("web")
    make_group("db")
    make_user("ann", grants=[("viewer", ["web", "db"])])
    group = AgentGroup.objects.get(name="db")
    group_delete(group=group, actor="root")
    event = SystemEvent.objects.filter(event_type=EventType.ROLE_CHANGED).order_by("-seq").first()
    assert event.metadata == {"user_id": event.metadata["user_id"], "username": "ann", "role": "viewer",
                              "removed_group": "db", "source": "group_deleted"}
    assert [g.name for g in RoleGrant.objects.get(user__username="ann").groups.all()] == ["web"]


# --- the people page ----------------------------------------------------------------------------------


def people_form(user, grants: list[tuple[str, bool, list[int]]]) -> dict:
    """The change form of ``user`` as the page posts it, with ``grants`` as (role, whole fleet, group ids)."""
    existing = list(RoleGrant.objects.filter(user=user).order_by("pk"))
    data = {"username": user.username, "is_active": "on", "is_staff": "on", "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00", "role_grants-TOTAL_FORMS": str(len(grants)),
            "role_grants-INITIAL_FORMS": str(len(existing)), "role_grants-MIN_NUM_FORMS": "0",
            "role_grants-MAX_NUM_FORMS": "1000"}
    for index, (role, fleet_wide, groups) in enumerate(grants):
        prefix = f"role_grants-{index}-"
        data[prefix + "role"] = role
        if fleet_wide:
            data[prefix + "fleet_wide"] = "on"
        data[prefix + "groups"] = [str(pk) for pk in groups]
        data[prefix + "user"] = str(user.pk)
        if index < len(existing):
            data[prefix + "id"] = str(existing[index].pk)
    return data


def test_the_admin_role_grants_roles_on_the_people_page_through_the_one_write_path():
    web = make_group("web")
    admin_user = make_user("boss", grants=[("admin", [])])
    ann = make_user("ann", grants=[("viewer", [])])
    client = Client()
    client.force_login(admin_user)
    url = f"/admin/auth/user/{ann.pk}/change/"
    page = client.get(url).content.decode()
    assert "role_grants-0-role" in page and 'name="is_superuser"' not in page

    with transaction.atomic():
        response = client.post(url, people_form(ann, [("viewer", True, []), ("approver", False, [web.pk])]))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert {(g.role, g.fleet_wide) for g in RoleGrant.objects.filter(user=ann)} == {("viewer", True),
                                                                                  ("approver", False)}
    event = SystemEvent.objects.filter(event_type=EventType.ROLE_CHANGED).order_by("-seq").first()
    assert event.actor == "boss" and event.metadata["after"] == {"approver": ["web"], "viewer": None}

    refused = client.post(url, people_form(ann, [("viewer", True, []), ("admin", False, [web.pk])]))
    assert refused.status_code == 200 and "whole fleet only" in refused.content.decode()
    empty_scope = client.post(url, people_form(ann, [("viewer", True, []), ("approver", False, [])]))
    assert "pick the agent groups" in empty_scope.content.decode()


def test_only_the_admin_role_opens_the_people_page_and_nobody_but_a_superuser_touches_a_superuser():
    root = make_user("root", is_superuser=True, is_staff=True)
    approver = Client()
    approver.force_login(make_user("appr", grants=[("approver", [])]))
    assert approver.get("/admin/auth/user/").status_code == 403
    admin_client = Client()
    admin_client.force_login(make_user("boss", grants=[("admin", [])]))
    assert admin_client.get("/admin/auth/user/").status_code == 200
    assert admin_client.get(f"/admin/auth/user/{root.pk}/password/").status_code == 403
    assert admin_client.post(f"/admin/auth/user/{root.pk}/delete/", {"post": "yes"}).status_code == 403
    assert get_user_model().objects.filter(pk=root.pk).exists()
