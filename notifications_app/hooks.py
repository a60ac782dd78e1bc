"""Wake the dispatcher when an event some rule may want commits.

The post_save receiver runs inside every event's transaction, the agent check-in's included, so it
must cost nothing there: it consults a per-process copy of the event types the enabled rules can
match and adds no query. The copy is refreshed after commit (never inside the caller's transaction)
once it is WANTED_TTL_SECONDS old; a rule changed in another process is therefore seen within that
time, and the minute schedule covers the gap (and events written without save(), e.g. bulk_create).
"""

from __future__ import annotations

import threading
import time

from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from django_q.tasks import async_task

from events_app.models import SystemEvent
from notifications_app.matching import UNROUTED_TYPES, wanted_types
from notifications_app.models import Rule

DISPATCH_TASK = "notifications_app.tasks.dispatch_events"
WANTED_TTL_SECONDS = 30.0


class _Wanted:
    """The event types enabled rules can match (None: every type), with when they were read."""

    def __init__(self):
        self.lock = threading.Lock()
        self.types: frozenset[str] | None = frozenset()
        self.read_at = float("-inf")

    def fresh(self) -> bool:
        return time.monotonic() - self.read_at < WANTED_TTL_SECONDS

    def refresh(self) -> None:
        rules = list(Rule.objects.enabled().only("trigger", "event_types"))
        with self.lock:
            self.types = wanted_types(rules) if rules else frozenset()
            self.read_at = time.monotonic()

    def forget(self) -> None:
        self.read_at = float("-inf")

    def wants(self, event_type: str) -> bool:
        return event_type not in UNROUTED_TYPES and (self.types is None or event_type in self.types)


wanted = _Wanted()


def _enqueue_dispatch() -> None:
    async_task(DISPATCH_TASK, task_name="notifications-dispatch")


class _RefreshThenEnqueue:
    """After commit: re-read the wanted types, then wake the dispatcher if one of ``types`` is wanted."""

    def __init__(self):
        self.types: set[str] = set()

    def __call__(self) -> None:
        wanted.refresh()
        if any(wanted.wants(event_type) for event_type in self.types):
            _enqueue_dispatch()


def _scheduled(connection, kind):
    """This transaction's pending callback of ``kind`` (one per transaction, however many events)."""
    for entry in connection.run_on_commit:
        callback = entry[1]
        if callback is kind or isinstance(callback, kind if isinstance(kind, type) else ()):
            return callback
    return None


@receiver(post_save, sender=SystemEvent, dispatch_uid="notifications_event_saved")
def event_saved(sender, instance: SystemEvent, created: bool, using: str = "default", **kwargs) -> None:
    if not created or instance.event_type in UNROUTED_TYPES:
        return
    connection = transaction.get_connection(using)
    if not wanted.fresh():
        refresh = _scheduled(connection, _RefreshThenEnqueue)
        if refresh is None:
            refresh = _RefreshThenEnqueue()
            transaction.on_commit(refresh, using=using)
        refresh.types.add(instance.event_type)
    elif wanted.wants(instance.event_type) and _scheduled(connection, _enqueue_dispatch) is None:
        transaction.on_commit(_enqueue_dispatch, using=using)
