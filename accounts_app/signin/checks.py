"""A role map that names a role RedFlag does not have stops start-up (manage.py check, run_portal)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register

from accounts_app.signin.sso import RoleMapError, validate_role_map


@register()
def role_map_check(app_configs=None, **kwargs):
    try:
        validate_role_map(settings.REDFLAG_OIDC_ROLE_MAP)
    except RoleMapError as exc:
        return [Error(f"REDFLAG_OIDC_ROLE_MAP: {exc}", id="redflag.signin.E001")]
    return []
