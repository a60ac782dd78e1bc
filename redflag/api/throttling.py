"""Rate limits per bucket, with rates from the database-backed ServerSettings.

DRF's throttle keeps its history in Django's cache (a database table by
default, so every web process shares it; Redis when configured). Token seat
limits are enforced by the database, not here.
"""

from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from redflag.models import ServerSettings


class BucketThrottle(SimpleRateThrottle):
    bucket = ""

    def get_rate(self) -> str:
        return ServerSettings.current().rate_for(self.bucket)

    def allow_request(self, request, view) -> bool:
        if not settings.REDFLAG_RATE_LIMIT_ENABLED:
            return True
        return super().allow_request(request, view)

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.bucket, "ident": self.identity(request)}

    def identity(self, request) -> str:
        # No REMOTE_ADDR (a server on a Unix socket): all such clients share one bucket.
        return self.get_ident(request) or "unknown-client"


class RegistrationThrottle(BucketThrottle):
    """Per client IP (REDFLAG_NUM_PROXIES says how many proxies to trust)."""

    bucket = "registration"


class AdminLoginThrottle(BucketThrottle):
    bucket = "admin"


class _PerAgentThrottle(BucketThrottle):
    def identity(self, request) -> str:
        return str(request.user.agent.pk)


class CheckinThrottle(_PerAgentThrottle):
    bucket = "checkin"


class ReportsThrottle(_PerAgentThrottle):
    bucket = "reports"
