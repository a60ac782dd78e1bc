"""django-q2 tasks of the audit trail (scheduled by migration 0004)."""

from __future__ import annotations

from django.utils import timezone
from django_q.tasks import async_task

from events_app.services import PurgePace, events_purge
from redflag.models import ServerSettings

# Batches of 5,000 rows (tens of milliseconds each), resting as long as each took; stopped after 8 minutes,
# under the 600 s django-q2 timeout, so a kill never lands mid-batch and the run is always recorded.
PURGE_PACE = PurgePace(batch_size=5000, rest_ratio=1.0, min_rest=0.02, time_budget=480)
TASK = "events_app.tasks.purge_expired_events"


def purge_expired_events() -> int:
    """Daily: delete events older than ServerSettings.event_retention_days (default 365).

    events_purge keeps every event younger than its floor (90 days, security events 365) even if
    the row holds less, e.g. a value saved before the floor existed. A backlog larger than one run's
    time budget (the first purge of a long-lived install) continues in a follow-up task at once
    rather than a day later.
    """
    outcome = events_purge(now=timezone.now(), retention_days=ServerSettings.current().event_retention_days,
                           pace=PURGE_PACE)
    if not outcome.complete:
        async_task(TASK)
    return outcome.removed
