"""role_grants_replace: the one write path of roles, its validation and its events."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from accounts_app.models import RoleGrant
from accounts_app.services import role_grants_replace
from agents_app.models import Agent
from events_app.choices import Component, EventType
from events_app.models import SystemEvent
from redflag.access import scope_queryset
from tests.server.accounts_app.helpers import make_agent, make_group, make_user

pytestmark = pytest.mark.django_db


def grants_of(user) -> dict:
    return {grant.role: (None if grant.fleet_wide else sorted(g.name for g in grant.groups.all()))
            for grant in RoleGrant.objects.filter(user=user).prefetch_related("groups")}


def role_events():
    return list(SystemEvent.objects.filter(event_type=EventType.ROLE_CHANGED).order_by("seq"))


def test_replace_sets_grants_makes_staff_and_records_before_and_after():
    make_group("web")
    make_group("db")
    user = make_user("ann")
    assert not user.is_staff

    changed = role_grants_replace(user=user, grants=[("viewer", []), ("approver", ["web", "db"])],
                                  actor="root", source="admin")

    assert changed is True
    assert grants_of(user) == {"viewer": None, "approver": ["db", "web"]}
    user.refresh_from_db()
    assert user.is_staff
    [event] = role_events()
    assert event.component == Component.ACCOUNTS and event.actor == "root"
    assert event.metadata == {"user_id": user.pk, "username": "ann", "source": "admin", "before": {},
                              "after": {"approver": ["db", "web"], "viewer": None}}


def test_replace_removes_what_is_not_listed_and_same_grants_again_is_silent():
    make_group("web")
    user = make_user("ann", grants=[("viewer", []), ("operator", ["web"])])
    assert len(role_events()) == 1

    assert role_grants_replace(user=user, grants=[("operator", ["web"])], actor="sso", source="sso") is True
    assert grants_of(user) == {"operator": ["web"]}
    assert role_events()[-1].metadata["before"] == {"operator": ["web"], "viewer": None}
    assert role_grants_replace(user=user, grants=[("operator", ["web"])], actor="sso", source="sso") is False
    assert len(role_events()) == 2

    assert role_grants_replace(user=user, grants=[], actor="root", source="admin") is True
    assert grants_of(user) == {}
    assert role_events()[-1].metadata["after"] == {}


def test_a_role_listed_twice_gets_the_union_and_an_empty_list_means_the_fleet():
    make_group("web")
    make_group("db")
    user = make_user("ann")
    role_grants_replace(user=user, grants=[("viewer", ["web"]), ("viewer", ["db"]), ("operator", ["web"]),
                                           ("operator", [])], actor="root", source="admin")
    assert grants_of(user) == {"viewer": ["db", "web"], "operator": None}


@pytest.mark.parametrize(("grants", "message"), [
    ([("superhero", [])], "unknown role 'superhero'"),
    ([("viewer", ["nope", "web"])], "unknown agent group(s): nope"),
    ([("admin", ["web"])], "whole fleet only"),
    ([("viewer",)], "a grant must be a (role, group names) pair"),
    ([("viewer", "web")], "must be a list of group names"),
    ("viewer", "grants must be a list"),
])
def test_bad_grants_are_refused_naming_the_problem_and_change_nothing(grants, message):
    make_group("web")
    user = make_user("ann", grants=[("auditor", [])])
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        role_grants_replace(user=user, grants=grants, actor="root", source="admin")
    assert grants_of(user) == {"auditor": None}
    assert len(role_events()) == 1


def test_unknown_source_is_refused():
    user = make_user("ann")
    with pytest.raises(ValidationError, match="unknown grant source 'ldap'"):
        role_grants_replace(user=user, grants=[("viewer", [])], actor="root", source="ldap")


def test_deleting_the_last_group_of_a_scoped_grant_narrows_it_to_nothing_not_the_fleet():
    web1 = make_agent("web-1")
    make_agent("db-1")
    web = make_group("web", web1)
    user = make_user("ann", grants=[("viewer", ["web"])])
    assert list(scope_queryset(Agent.objects.all(), user)) == [web1]

    web.delete()
    user = get_user_model().objects.get(pk=user.pk)  # a new request: no cached scope
    assert list(scope_queryset(Agent.objects.all(), user)) == []
    assert grants_of(user) == {"viewer": []}
