from __future__ import annotations

from datetime import datetime

from django.db import models
from django.db.models import Q

from notifications_app.choices import DeliveryStatus, Trigger


class RuleQuerySet(models.QuerySet):
    def enabled(self):
        return self.filter(enabled=True)

    def taking_messages(self, *, event_type: str, group=None):
        """Enabled event rules that take ``event_type`` for ``group`` (None: the whole fleet).

        A rule scoped to a group takes that group's messages; an unscoped rule takes every message.
        """
        scope = Q(group__isnull=True) | Q(group=group) if group is not None else Q(group__isnull=True)
        # JSON "contains" is not on SQLite: the lists are short, so they are read and checked in Python.
        candidates = self.enabled().filter(scope, trigger=Trigger.EVENT)
        return self.filter(pk__in=[rule.pk for rule in candidates.only("pk", "event_types")
                                   if not rule.event_types or event_type in rule.event_types])


class DeliveryQuerySet(models.QuerySet):
    def due(self, now: datetime):
        """Queued and due, or claimed by a worker that never finished (its claim ran out)."""
        return self.filter(Q(status=DeliveryStatus.QUEUED, next_attempt_at__lte=now)
                           | Q(status=DeliveryStatus.SENDING, claimed_until__lt=now))
