"""django-q2 tasks of the audit trail (scheduled by migration 0004)."""

from __future__ import annotations

from django.utils import timezone

from events_app.services import events_purge
from redflag.models import ServerSettings

PURGE_BATCH_SIZE = 5000


def purge_expired_events() -> int:
    """Daily: delete events older than ServerSettings.event_retention_days (default 365).

    events_purge keeps every event younger than its floor (90 days, security events 365) even if
    the row holds less, e.g. a value saved before the floor existed.
    """
    return events_purge(now=timezone.now(), retention_days=ServerSettings.current().event_retention_days,
                        batch_size=PURGE_BATCH_SIZE)
