"""Reusable reads of the reports' tables."""

from __future__ import annotations

from datetime import date

from django.db import models


class FleetSnapshotQuerySet(models.QuerySet):
    def fleet(self):
        """The whole fleet's rows (not a group's)."""
        return self.filter(group__isnull=True)

    def between(self, first: date, last: date):
        return self.filter(day__gte=first, day__lte=last).order_by("day")
