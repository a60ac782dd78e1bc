"""Roles as Django permissions, and where each applies.

How roles meet Django's permission machinery
--------------------------------------------
A role is a fixed set of permission names (``app_label.codename``, below). A user's grants
(``RoleGrant``: role + scope) are turned into permissions by one authentication backend,
``accounts_app.backends.RoleBackend``, listed in ``AUTHENTICATION_BACKENDS`` after Django's
``ModelBackend``. So ``user.has_perm``, every ``has_*_permission`` of the admin, the admin's app list
and navigation, and ``@permission_required`` answer from the roles with no code of their own.

- Django's four model permissions (``view_agent``, ``change_packageupdate``...) are used as they are.
- Two capabilities have no model of their own and no row in ``auth_permission``:
  ``agents_app.operate_agent`` (scans, heartbeat, scan schedules) and ``agents_app.approve_update``
  (approve, install, reboot, agent upgrades), named in ``redflag.access``. Admin actions ask for them
  with ``permissions=["operate"]`` / ``["approve"]`` (``redflag.admin_scoping.ScopedAdminMixin``
  supplies ``has_operate_permission`` / ``has_approve_permission``). A superuser holds them too, as
  Django gives superusers every permission.
- Permissions say *what*; the scope says *where*. ``accounts_app.scoping.GrantAccessPolicy`` answers
  ``redflag.access.agents_q(user, perm)``: the union of the scopes of the user's grants whose role
  carries ``perm`` (any grant for "see"). Lists, pages, exports, the stream and the read API filter
  their rows with it; actions refuse a selection that reaches outside the scope of their permission.
- Permissions from Django's own groups and user permissions (the "Auditors" group of events_app's
  migration 0002, kept working) apply to the whole fleet, as they always did.
- Django's groups and raw permissions stay with superusers (the people page hides them from the admin
  role, and leaves superusers' accounts alone): they would let the admin role grant more than roles.
- The admin role is granted on the whole fleet only: it manages people, so it could grant itself any
  scope; a scoped admin would be a fiction.
"""

from __future__ import annotations

from functools import cache

from django.apps import apps

from accounts_app.choices import Role
from redflag.access import APPROVE_UPDATES, OPERATE_AGENTS

# What "read everything in scope" reads: every model of these apps (their rows belong to agents, or
# are the fleet's shared knowledge, such as advisories and policies).
FLEET_READ_APPS = ("agents_app", "advisories_app", "policies_app", "reports_app")
# Rows nobody browses (credentials, idempotency keys) or that belong to the admin role.
NOT_READ_BY_VIEWERS = frozenset({"agents_app.refreshtoken", "agents_app.ingestedreport"})
# The admin role's objects: not agents, so not scoped (tokens, releases, settings and what configures the
# server: notification destinations, report schedules, vulnerability feeds; people).
ADMIN_APPS = ("tokens_app", "notifications_app", "reports_app", "accounts_app")
ADMIN_MODELS = ("agents_app.agentrelease", "agents_app.agent", "agents_app.agentgroup", "redflag.serversettings",
                "advisories_app.feedsource", "auth.user", "events_app.auditapitoken")


def _model_permissions(model_labels, actions=("view", "add", "change", "delete")) -> set[str]:
    permissions = set()
    for label in model_labels:
        app_label, model_name = label.split(".")
        permissions |= {f"{app_label}.{action}_{model_name}" for action in actions}
    return permissions


def _app_models(app_labels) -> list[str]:
    found = []
    for app_label in app_labels:
        try:
            config = apps.get_app_config(app_label)
        except LookupError:
            continue
        found += [model._meta.label_lower for model in config.get_models()]
    return found


@cache
def role_permissions() -> dict[str, frozenset[str]]:
    """{role: the permission names it carries}, built once from the installed models."""
    viewing = _model_permissions([label for label in _app_models(FLEET_READ_APPS) if label not in NOT_READ_BY_VIEWERS],
                                 actions=("view",))
    return {
        Role.VIEWER: frozenset(viewing),
        Role.OPERATOR: frozenset(viewing | {OPERATE_AGENTS, "agents_app.change_agentsubsystem"}),
        Role.APPROVER: frozenset(viewing | {APPROVE_UPDATES} | _model_permissions(_app_models(["policies_app"]))),
        Role.ADMIN: frozenset(viewing | _model_permissions(_app_models(ADMIN_APPS)) | _model_permissions(ADMIN_MODELS)),
        # As the Auditors group of events_app's migration 0002: the history, and the agents it names.
        Role.AUDITOR: frozenset({"events_app.view_systemevent", "agents_app.view_agent"}),
    }


def permissions_of(roles) -> frozenset[str]:
    table = role_permissions()
    return frozenset().union(*(table[role] for role in roles if role in table))


def roles_carrying(perm: str) -> list[str]:
    return [role for role, permissions in role_permissions().items() if perm in permissions]
