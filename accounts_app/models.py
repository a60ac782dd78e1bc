"""Role grants: a role held by a user on a scope (the whole fleet, or some agent groups)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts_app.choices import GrantSource, Role
from agents_app.models import AgentGroup


class RoleGrant(models.Model):
    """One role of one user and where it applies.

    The scope is explicit: ``fleet_wide`` or the listed ``groups``. It is never "no groups means
    everything": deleting the last group of a scoped grant must shrink it to nothing, not widen it
    to the fleet.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="role_grants")
    role = models.CharField(max_length=16, choices=Role.choices)
    fleet_wide = models.BooleanField(
        "whole fleet", default=False, help_text="The role applies to every agent, present and future.")
    groups = models.ManyToManyField(
        AgentGroup, blank=True, related_name="role_grants",
        help_text="The agent groups the role applies to (when not fleet-wide).")
    source = models.CharField(max_length=16, choices=GrantSource.choices, default=GrantSource.ADMIN)
    granted_by = models.CharField(max_length=255, blank=True)
    granted_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["user_id", "role"]
        constraints = [models.UniqueConstraint(fields=["user", "role"], name="role_grant_one_per_user_role")]

    def __str__(self) -> str:
        return f"{self.user} — {self.role}"

    def scope_label(self) -> str:
        if self.fleet_wide:
            return "whole fleet"
        names = sorted(group.name for group in self.groups.all())
        return ", ".join(names) if names else "no agents"


# What a user object carries for the rest of its request: its grants, the permissions they give
# (backends.RoleBackend) and the scopes computed so far (scoping.GrantAccessPolicy).
GRANTS_CACHE = "_redflag_role_grants"
PERMISSIONS_CACHE = "_redflag_role_perm_cache"
SCOPE_CACHE = "_redflag_scope_cache"


def user_grants(user) -> list[RoleGrant]:
    """The user's grants, read once per user object (one query): the permission backend and the scope
    policy both ask on every request, and a request's user object lives as long as the request."""
    if not hasattr(user, GRANTS_CACHE):
        setattr(user, GRANTS_CACHE, list(RoleGrant.objects.filter(user_id=user.pk)))
    return getattr(user, GRANTS_CACHE)


def forget_cached_access(user) -> None:
    """Drop what ``user`` carries of its grants (after they changed), and Django's permission caches."""
    for name in (GRANTS_CACHE, PERMISSIONS_CACHE, SCOPE_CACHE, "_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(name, None)
