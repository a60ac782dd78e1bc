"""The authentication backend that answers permission checks from a user's role grants (see roles.py)."""

from __future__ import annotations

from django.contrib.auth.backends import BaseBackend

from accounts_app.models import PERMISSIONS_CACHE, user_grants
from accounts_app.roles import permissions_of


class RoleBackend(BaseBackend):
    """Authenticates nobody (ModelBackend and single sign-on do); grants permissions from roles.

    The grants are read once per user object (one query, shared with the scope policy) and the
    permissions kept on it for the request, like ModelBackend's own cache.
    """

    def get_all_permissions(self, user_obj, obj=None) -> set[str]:
        if not user_obj.is_active or user_obj.is_anonymous or obj is not None:
            return set()
        if not hasattr(user_obj, PERMISSIONS_CACHE):
            roles = [grant.role for grant in user_grants(user_obj)]
            setattr(user_obj, PERMISSIONS_CACHE, set(permissions_of(roles)))
        return getattr(user_obj, PERMISSIONS_CACHE)

    def has_perm(self, user_obj, perm, obj=None) -> bool:
        return perm in self.get_all_permissions(user_obj, obj)

    def has_module_perms(self, user_obj, app_label) -> bool:
        return any(perm.startswith(f"{app_label}.") for perm in self.get_all_permissions(user_obj))
