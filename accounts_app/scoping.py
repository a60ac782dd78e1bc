"""Where a user's roles apply: redflag.access's policy, answered from their role grants (see roles.py)."""

from __future__ import annotations

from django.contrib.auth.backends import ModelBackend
from django.db.models import Q

from accounts_app.models import SCOPE_CACHE, RoleGrant, user_grants
from accounts_app.roles import role_permissions
from agents_app.models import AgentGroup
from redflag.access import NOTHING

FLEET = None  # the whole fleet, as redflag.access says it


class GrantAccessPolicy:
    """The agents (and groups) a user may see, with any grant, or act on with a permission, with the
    grants whose role carries it.

    A superuser, and a permission held through Django's own groups or user permissions (the Auditors
    group), reach the whole fleet. Grants are read once per user object (accounts_app.models.user_grants),
    the groups of the scoped ones in one more query, and each answer is kept on the user object for
    the rest of the request.
    """

    def agents_q(self, user, perm: str | None = None) -> Q | None:
        return self._cached(user, ("agents", perm), lambda: self._agents_q(user, perm), NOTHING)

    def group_ids(self, user, perm: str | None = None) -> set[int] | None:
        return self._cached(user, ("groups", perm), lambda: self._group_ids(user, perm), set())

    @staticmethod
    def _cached(user, key, compute, nothing):
        if not (user and user.is_authenticated and user.is_active):
            return nothing
        if user.is_superuser:
            return FLEET
        cache = user.__dict__.setdefault(SCOPE_CACHE, {})
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    @staticmethod
    def _grants(user, perm: str | None) -> list[RoleGrant] | None:
        """The grants that carry ``perm`` (all of them for "see"), or FLEET when one reaches the whole fleet."""
        django_permissions = ModelBackend().get_all_permissions(user)
        if django_permissions and (perm is None or perm in django_permissions):
            return FLEET
        table = role_permissions()
        grants = [grant for grant in user_grants(user) if perm is None or perm in table.get(grant.role, ())]
        return FLEET if any(grant.fleet_wide for grant in grants) else grants

    def _group_ids(self, user, perm: str | None) -> set[int] | None:
        grants = self._grants(user, perm)
        if grants is FLEET:
            return FLEET
        if not grants:
            return set()
        through = RoleGrant.groups.through.objects.filter(rolegrant_id__in=[grant.pk for grant in grants])
        return set(through.values_list("agentgroup_id", flat=True))

    def _agents_q(self, user, perm: str | None) -> Q | None:
        group_ids = self.group_ids(user, perm)
        if group_ids is FLEET:
            return FLEET
        q = NOTHING
        for group in AgentGroup.objects.filter(pk__in=group_ids) if group_ids else ():
            q |= group.agents_q()
        return q
