"""The write paths of people and access: replacing a user's role grants (one event per change)."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts_app.choices import GrantSource, Role
from accounts_app.models import RoleGrant, forget_cached_access
from agents_app.models import AgentGroup
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event

# Roles whose permissions reach beyond agents (tokens, releases, settings, people): a scoped grant of
# one would be a fiction, since whoever manages people can grant themselves any scope.
FLEET_ONLY_ROLES = frozenset({Role.ADMIN})

def _wanted_grants(grants: Iterable[tuple[str, list[str]]]) -> dict[str, set[str] | None]:
    """{role: group names, or None for the whole fleet}; a role listed twice gets the union of its scopes."""
    wanted: dict[str, set[str] | None] = {}
    if isinstance(grants, (str, bytes)):
        raise ValidationError("grants must be a list of (role, group names) pairs")
    for entry in grants:
        try:
            role, group_names = entry
        except (TypeError, ValueError):
            raise ValidationError(f"a grant must be a (role, group names) pair, not {entry!r}") from None
        if role not in Role.values:
            raise ValidationError(f"unknown role {role!r} (roles: {', '.join(Role.values)})")
        if isinstance(group_names, (str, bytes)) or not all(isinstance(name, str) for name in group_names):
            raise ValidationError(f"the groups of role {role!r} must be a list of group names")
        names = set(group_names)
        if role in FLEET_ONLY_ROLES and names:
            raise ValidationError(f"the {role} role is granted on the whole fleet only (it manages people)")
        if not names or wanted.get(role, set()) is None:
            wanted[role] = None
        else:
            wanted[role] = wanted.get(role, set()) | names
    return wanted

def _snapshot(user) -> dict[str, list[str] | None]:
    """The user's grants as {role: sorted group names, or None for the whole fleet} (what events record)."""
    snapshot: dict[str, list[str] | None] = {}
    for grant in RoleGrant.objects.filter(user=user).prefetch_related("groups"):
        snapshot[grant.role] = None if grant.fleet_wide else sorted(group.name for group in grant.groups.all())
    return snapshot

def role_grants_replace(*, user, grants: list[tuple[str, list[str]]], actor: str, source: str) -> bool:
    """Make ``grants`` the user's whole set of roles; True when something changed.

    ``grants`` is a list of (role name, agent group names); an empty list of names grants the role on
    the whole fleet. Used by the admin's role page, single sign-on (claims mapped to roles on every
    sign-in) and management commands alike.

    1. Validate everything first (unknown role, source or group: ValidationError naming it; the admin
       role is fleet-wide only), so nothing is half-applied.
    2. Lock the user's row, so two replaces of one user (two sign-ins, an admin and a sign-in) apply
       one after the other and each event's "before" is what the other left.
    3. Compare with what the user holds; no change writes nothing and records no event (a single
       sign-on that maps the same claims on every sign-in stays silent).
    4. Replace the grants, make the user staff when they now hold a role (the admin's door; their
       permissions come from the grants), and record one ROLE_CHANGED event with before and after.
    """
    if source not in GrantSource.values:
        raise ValidationError(f"unknown grant source {source!r} (sources: {', '.join(GrantSource.values)})")
    wanted = _wanted_grants(grants)
    named = set().union(*(names for names in wanted.values() if names))
    groups = {group.name: group for group in AgentGroup.objects.filter(name__in=named)}
    missing = sorted(named - set(groups))
    if missing:
        raise ValidationError(f"unknown agent group(s): {', '.join(missing)}")
    after = {role: None if names is None else sorted(names) for role, names in sorted(wanted.items())}

    forget_cached_access(user)
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().get(pk=user.pk)
        before = _snapshot(user)
        if before == after:
            return False
        RoleGrant.objects.filter(user=user).exclude(role__in=list(after)).delete()
        for role, names in after.items():
            grant, _ = RoleGrant.objects.update_or_create(
                user=user, role=role,
                defaults={"fleet_wide": names is None, "source": source, "granted_by": actor[:255]})
            grant.groups.set([groups[name] for name in names or ()])
        if after and not user.is_staff:
            user.is_staff = True
            user.save(update_fields=["is_staff"])
        added_admin = Role.ADMIN in after and Role.ADMIN not in before
        record_event(
            event_type=EventType.ROLE_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.ACCOUNTS,
            severity=Severity.WARNING if added_admin else Severity.INFO,
            message=f"Roles of {user.get_username()} changed: {_describe(after)}",
            metadata={"user_id": user.pk, "username": user.get_username(), "source": source,
                      "before": before, "after": after},
            actor=actor)
    return True

def _describe(grants: dict[str, list[str] | None]) -> str:
    if not grants:
        return "no roles"
    return "; ".join(f"{role} on {'the whole fleet' if names is None else ', '.join(names) or 'no groups'}"
                     for role, names in grants.items())
