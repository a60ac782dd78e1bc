"""Reusable reads of the fleet (each rule defined once; model properties reuse them)."""

from __future__ import annotations

import datetime

from django.db import models
from django.utils import timezone

from agents_app.choices import OPEN_COMMAND_STATUSES, CommandStatus, UpdateStatus
from redflag.models import ServerSettings


class AgentQuerySet(models.QuerySet):
    def online(self, now: datetime.datetime | None = None):
        now = now or timezone.now()
        return self.filter(last_seen_at__gte=now - ServerSettings.current().offline_threshold)

    def offline(self, now: datetime.datetime | None = None):
        return self.exclude(pk__in=self.online(now).values("pk"))


class AgentSubsystemQuerySet(models.QuerySet):
    def due(self, now: datetime.datetime | None = None):
        """Enabled, auto-run subsystems whose next run time has come (or was never set)."""
        now = now or timezone.now()
        return self.filter(enabled=True, auto_run=True).filter(
            models.Q(next_run_at__isnull=True) | models.Q(next_run_at__lte=now)
        )


class CommandQuerySet(models.QuerySet):
    def open(self):
        return self.filter(status__in=OPEN_COMMAND_STATUSES)

    def pending(self):
        return self.filter(status=CommandStatus.PENDING)


class PackageUpdateQuerySet(models.QuerySet):
    def outstanding(self):
        """Updates still to act on: not installed, closed or ignored."""
        return self.exclude(status__in=(UpdateStatus.INSTALLED, UpdateStatus.CLOSED, UpdateStatus.IGNORED))
