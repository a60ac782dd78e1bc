"""Rate limits per bucket, with rates from the database-backed ServerSettings.

DRF's throttle keeps its history in Django's cache (a database table by
default, so every web process shares it; Redis when configured). Token seat
limits are enforced by the database, not here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.db import DatabaseCache
from django.db import connection
from django.utils import timezone
from rest_framework.throttling import SimpleRateThrottle

from redflag.models import ServerSettings

# As DRF reads a rate ("60/min"): the unit's first letter.
RATE_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


class AdminLoginThrottle(BucketThrottle):
    bucket = "admin"


@dataclass(frozen=True)
class RateWindow:
    """One identity's fixed-window counter in one bucket: at most ``allowed`` requests per window.

    The window opens with the first request counted and lasts the rate's period; the counter
    starts again with the first request after it. (A fixed window lets through at most twice the
    rate across a window boundary; DRF's sliding history needed a read and a rewrite of the whole
    history, five statements and a commit, on every agent request.)
    """

    key: str
    allowed: int
    period: int
    now: datetime

    @property
    def expires(self) -> datetime:
        return self.now + timedelta(seconds=self.period)


def rate_window(bucket: str, identity: str, now: datetime | None = None) -> RateWindow | None:
    """The counter for ``identity`` in ``bucket``; None when rate limits are switched off."""
    if not settings.REDFLAG_RATE_LIMIT_ENABLED:
        return None
    count, unit = ServerSettings.current().rate_for(bucket).split("/")
    return RateWindow(key=f"redflag-rate:{bucket}:{identity}", allowed=int(count), period=RATE_PERIODS[unit[0]],
                      now=now or timezone.now())


def rate_counter_table() -> str | None:
    """The database table the counters live in (the default cache is the database), else None (Redis,
    or process memory in tests): then ``rate_take`` counts in the cache."""
    backend = caches["default"]
    return backend._table if isinstance(backend, DatabaseCache) else None


def rate_counter_sql(window: RateWindow, table: str, condition: str = "true") -> tuple[str, list]:
    """One statement that counts a request in ``table`` (if ``condition`` holds) and returns the count
    (an upsert PostgreSQL and SQLite both run; SQLite needs the WHERE of its INSERT … SELECT). Its
    own rows, ``redflag-rate:`` keys, are never read by Django's cache (whose keys carry a version
    prefix); their expiry lets the cache's own culling drop them."""
    quoted = connection.ops.quote_name(table)
    now = connection.ops.adapt_datetimefield_value(window.now)
    expires = connection.ops.adapt_datetimefield_value(window.expires)
    sql = (f"INSERT INTO {quoted} (cache_key, value, expires) SELECT %s, '1', %s WHERE {condition} "
           f"ON CONFLICT (cache_key) DO UPDATE SET "
           f"value = CASE WHEN {quoted}.expires <= %s THEN '1' "
           f"ELSE CAST(CAST({quoted}.value AS bigint) + 1 AS text) END, "
           f"expires = CASE WHEN {quoted}.expires <= %s THEN excluded.expires ELSE {quoted}.expires END "
           f"RETURNING value")
    return sql, [window.key, expires, now, now]


def rate_take(window: RateWindow) -> int:
    """Count one request in ``window`` and return the count so far (one round trip to the database,
    or add + incr in Redis)."""
    table = rate_counter_table()
    if table is not None:
        sql, params = rate_counter_sql(window, table)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.fetchone()[0])
    cache.add(window.key, 0, timeout=window.period)
    return cache.incr(window.key)


class WindowThrottle(BucketThrottle):
    """A per-agent limit counted with one statement (``rate_take``), or read from a count the
    request already took in the same statement as its check-in (``request.rate_counts``, by key)."""

    def allow_request(self, request, view) -> bool:
        window = rate_window(self.bucket, self.identity(request))
        if window is None:
            return True
        taken = getattr(request, "rate_counts", {}).get(window.key)
        count = taken if taken is not None else rate_take(window)
        self.window = window
        return count <= window.allowed

    def wait(self) -> float:
        """The window's whole period: an upper bound of its remaining time, which the count alone
        does not tell (the agent treats Retry-After as the least it waits)."""
        return max(1.0, float(self.window.period))


class _PerAgentThrottle(WindowThrottle):
    def identity(self, request) -> str:
        return str(request.user.agent.pk)


class RegistrationThrottle(WindowThrottle):
    """Per client IP (REDFLAG_NUM_PROXIES says how many proxies to trust), one statement a request."""

    bucket = "registration"


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
