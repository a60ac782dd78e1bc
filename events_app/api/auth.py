"""Audit API authentication: a per-user bearer token (events_app.models.AuditApiToken)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import BasePermission

from events_app.access import can_read_events
from events_app.models import AuditApiToken
from events_app.services import AUDIT_TOKEN_PREFIX, audit_token_hash

# last_used_at is informational; write it at most this often per token (one UPDATE, conditional).
LAST_USED_RESOLUTION = timedelta(minutes=1)


class AuditTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer rfa_...``: a missing header is 401, so is a wrong, revoked or
    inactive user's token (never a hint which)."""

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header:
            return None
        if len(header) != 2 or header[0].lower() != b"bearer":
            raise AuthenticationFailed("The Authorization header must be 'Bearer <audit API token>'.")
        try:
            secret = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid token.") from None
        if not secret.startswith(AUDIT_TOKEN_PREFIX) or len(secret) > 100:
            raise AuthenticationFailed("Invalid token.")
        token = (AuditApiToken.objects.select_related("user")
                 .filter(token_hash=audit_token_hash(secret), revoked_at__isnull=True).first())
        if token is None or not token.user.is_active:
            raise AuthenticationFailed("Invalid token.")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            AuditApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="redflag-audit"'


class CanReadEvents(BasePermission):
    """The same rule as the history page: a staff user with the Auditors' read permission, or an admin."""

    message = "This token's user may not read the event history."

    def has_permission(self, request, view) -> bool:
        return can_read_events(request.user)


class AuditTokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """The audit API's security scheme in the OpenAPI schema (registered by being defined)."""

    target_class = AuditTokenAuthentication
    name = "AuditToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "A per-user audit API token (rfa_...), issued and revoked by an admin."}
