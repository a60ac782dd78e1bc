"""Which agents may this user see, or act on: one question every app asks, one pluggable answer.

Every page, list, export, stream and API that shows agents (or rows that belong to an agent) narrows
its rows with ``scope_queryset(queryset, user, path)``; every action narrows with the same call and
the permission it needs. The answer is a ``Q`` over ``agents_app.Agent`` or ``None`` for the whole
fleet, given by the class named in ``settings.REDFLAG_ACCESS_POLICY`` (accounts_app plugs in its
role grants there, the way ``AUTHENTICATION_BACKENDS`` plugs in who holds which permission). This
module is the bottom layer: every app imports it, it imports no app (the Agent model is named by
its label).

Without the setting every signed-in user sees the whole fleet (RedFlag before roles existed).
"""

from __future__ import annotations

from typing import Protocol

from django.apps import apps
from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils.module_loading import import_string

AGENT_MODEL = "agents_app.Agent"
GROUP_MODEL = "agents_app.AgentGroup"
# Capabilities beyond Django's add/change/delete/view, answered by the auth backend like any other
# permission (no auth_permission row: the roles hold them, a superuser holds every permission).
# Admin actions name them as ``permissions=["operate"]`` / ``["approve"]`` (redflag.admin_scoping).
OPERATE_AGENTS = "agents_app.operate_agent"  # scans, heartbeat, scan schedules
APPROVE_UPDATES = "agents_app.approve_update"  # approve, install, reboot, agent upgrades
# No agent at all (an empty IN never matches, on every database).
NOTHING = Q(pk__in=[])


class AccessPolicy(Protocol):
    def agents_q(self, user, perm: str | None = None) -> Q | None:
        """The agents ``user`` may see (``perm`` None) or act on with ``perm``; None = the whole fleet."""

    def group_ids(self, user, perm: str | None = None) -> set[int] | None:
        """The agent groups whose pages (and the rows that target them: policies) ``user`` may see or act
        on with ``perm``: the groups their scope is made of; None = every group."""


class FleetWideAccessPolicy:
    """Everyone signed in sees the whole fleet; what they may do is left to their permissions."""

    def agents_q(self, user, perm: str | None = None) -> Q | None:
        if not (user and user.is_authenticated and user.is_active):
            return NOTHING
        return None

    def group_ids(self, user, perm: str | None = None) -> set[int] | None:
        if not (user and user.is_authenticated and user.is_active):
            return set()
        return None


def access_policy() -> AccessPolicy:
    path = getattr(settings, "REDFLAG_ACCESS_POLICY", "redflag.access.FleetWideAccessPolicy")
    return import_string(path)()


def agents_q(user, perm: str | None = None) -> Q | None:
    """The agents ``user`` may see, or act on with ``perm``, as a filter on Agent; None = the whole fleet."""
    return access_policy().agents_q(user, perm)


def group_ids(user, perm: str | None = None) -> set[int] | None:
    """The agent groups ``user`` may see, or act on with ``perm``; None = every group."""
    return access_policy().group_ids(user, perm)


def agent_model():
    return apps.get_model(AGENT_MODEL)


def scope_queryset(queryset: QuerySet, user, path: str = "", perm: str | None = None) -> QuerySet:
    """``queryset`` narrowed to the rows whose agent (reached by ``path`` from its model; "" when the
    model is Agent) ``user`` may see or act on. Rows with no agent belong to the whole fleet: only a
    fleet-wide user sees them."""
    q = agents_q(user, perm)
    if q is None:
        return queryset
    if not path:
        return queryset.filter(q)
    return queryset.filter(**{f"{path}__in": agent_model().objects.filter(q).values("pk")})


def scope_by_groups(queryset: QuerySet, user, path: str = "", perm: str | None = None) -> QuerySet:
    """``queryset`` narrowed to rows whose agent groups (reached by ``path``; "" when the rows are groups)
    are all among the groups ``user`` may see or act on with ``perm``. A row with no group stands for the
    whole fleet: only a fleet-wide user sees it."""
    allowed = group_ids(user, perm)
    if allowed is None:
        return queryset
    if not path:
        return queryset.filter(pk__in=allowed)
    model = queryset.model
    with_an_allowed_group = model._default_manager.filter(**{f"{path}__in": allowed}).values("pk")
    outside = apps.get_model(GROUP_MODEL).objects.exclude(pk__in=allowed)
    return queryset.filter(pk__in=with_an_allowed_group).exclude(**{f"{path}__in": outside})


def may_act_on(user, agent_ids, perm: str) -> bool:
    """Whether every agent in ``agent_ids`` is in the scope of ``perm`` (and the user holds it)."""
    if not user.has_perm(perm):
        return False
    q = agents_q(user, perm)
    if q is None:
        return True
    wanted = set(agent_ids)
    return agent_model().objects.filter(q, pk__in=wanted).count() == len(wanted)


def is_fleet_wide(user, perm: str | None = None) -> bool:
    return agents_q(user, perm) is None


def agents_in_scope(user, perm: str | None = None):
    """The Agent rows ``user`` may see (or act on with ``perm``), or None for the whole fleet: for counts
    that join agents in (``Count(..., filter=Q(x__agent__in=...))``)."""
    q = agents_q(user, perm)
    return None if q is None else agent_model().objects.filter(q)
