"""Rate limits per bucket, with rates from the database-backed ServerSettings.

DRF's throttle keeps its history in Django's cache (a database table by
default, so every web process shares it; Redis when configured). Token seat
limits are enforced by the database, not here.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
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

    def wait(self) -> float:
        """Seconds until the next request would be allowed: never None, so every 429 says Retry-After.

        DRF answers None when the history holds more requests than the rate now allows (an admin
        lowered it); then the wait is until enough of the history has aged out.
        """
        wait = super().wait()
        if wait is not None:
            return wait
        # The (num_requests)-th newest request must leave the window for one more to fit.
        oldest_that_must_expire = self.history[self.num_requests - 1] if self.num_requests else self.history[0]
        return max(1.0, self.duration - (self.now - oldest_that_must_expire))

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


def budget_take(*, bucket: str, identity: str, amount: int) -> tuple[float | None, bool]:
    """Take ``amount`` from ``identity``'s budget in ``bucket`` for the current window of its rate.

    A fixed window (the rate's period), counted in the shared cache like the throttles. Returns
    (None, False) when it fits; otherwise (seconds until the window ends, whether this is the first
    refusal in this window) and nothing is taken.
    """
    if not settings.REDFLAG_RATE_LIMIT_ENABLED:
        return None, False
    count, unit = ServerSettings.current().rate_for(bucket).split("/")
    allowed, period = int(count), {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit[0]]  # as DRF reads a rate
    now = time.time()
    window = int(now // period)
    key = f"redflag-budget:{bucket}:{identity}:{window}"
    cache.add(key, 0, timeout=period + 60)
    used = cache.incr(key, amount)
    if used <= allowed:
        return None, False
    cache.decr(key, amount)
    first_refusal = cache.add(f"{key}:refused", 1, timeout=period + 60)
    return max(1.0, (window + 1) * period - now), first_refusal
