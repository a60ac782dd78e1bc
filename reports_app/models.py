"""Daily fleet snapshots (the dashboard's trends), report schedules and the reports they produce."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from agents_app.models import AgentGroup
from reports_app.choices import ReportStatus
from reports_app.querysets import FleetSnapshotQuerySet

# The longest period a report or a schedule may cover (a year, leap day included).
MAX_PERIOD_DAYS = 366
WHOLE_FLEET = "Whole fleet"


class FleetSnapshot(models.Model):
    """The fleet's numbers on one day, for the whole fleet (group empty) or one group.

    Written by reports_app.services.snapshot_take (hourly; each run refreshes the day's row, so a
    day's figures are its last measurement), one row per day and scope by the constraints below.
    A group's rows go with the group: they describe a set of machines that no longer exists.
    """

    day = models.DateField()
    group = models.ForeignKey(AgentGroup, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    taken_at = models.DateTimeField(default=timezone.now)
    machines = models.PositiveIntegerField()
    online = models.PositiveIntegerField()
    outstanding_updates = models.PositiveIntegerField()
    outstanding_security = models.PositiveIntegerField()
    compliant_machines = models.PositiveIntegerField()
    # None when the scope had no machines: an empty fleet is neither compliant nor not.
    compliance_percent = models.FloatField(null=True, blank=True)
    # {severity: percent or None}: the same share for each severity's deadline alone.
    by_severity = models.JSONField(default=dict, blank=True)

    objects = FleetSnapshotQuerySet.as_manager()

    class Meta:
        ordering = ["-day"]
        constraints = [
            # Two constraints, because SQL never finds two NULL groups equal: one fleet row per day...
            models.UniqueConstraint(fields=["day"], condition=Q(group__isnull=True), name="fleet_snapshot_once_a_day"),
            # ...and one row per group per day. The dashboard reads (group NULL, day range) through the first.
            models.UniqueConstraint(fields=["group", "day"], condition=Q(group__isnull=False),
                                    name="group_snapshot_once_a_day"),
        ]

    def __str__(self) -> str:
        return f"{self.group or WHOLE_FLEET} on {self.day}"


class ReportSchedule(models.Model):
    """A report produced every ``every_days`` days from ``next_run_at`` (weekly by default), for the
    whole fleet or one group, and optionally sent through the notifications."""

    name = models.CharField(max_length=100, unique=True)
    # PROTECT: deleting a group must not silently stop a report someone relies on (the admin's delete page
    # names the schedules to change first), as for the notification rules.
    group = models.ForeignKey(AgentGroup, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
                              help_text="Empty: the whole fleet.")
    every_days = models.PositiveSmallIntegerField(
        "every (days)", default=7, validators=[MinValueValidator(1), MaxValueValidator(MAX_PERIOD_DAYS)],
        help_text="Also the period each report covers: 7 is a weekly report of the last 7 days.")
    next_run_at = models.DateTimeField(help_text="The next report; later ones follow at the same time of day.")
    enabled = models.BooleanField(default=True)
    deliver = models.BooleanField("send through notifications", default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Report(models.Model):
    """One generated report: its figures (JSON), its CSV and PDF, and how it was delivered.

    The files are small (tens of kilobytes) and live in the database, so a report is backed up and
    served like any other row and needs no file storage of its own.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    group = models.ForeignKey(AgentGroup, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # What the report covered, kept when the group is renamed or deleted.
    scope_name = models.CharField("scope", max_length=100)
    schedule = models.ForeignKey(ReportSchedule, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="reports")
    period_days = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(MAX_PERIOD_DAYS)])
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=ReportStatus.choices, default=ReportStatus.QUEUED)
    error = models.TextField(blank=True)
    deliver = models.BooleanField(default=False)
    delivery = models.CharField(max_length=255, blank=True, help_text="What happened to the notification.")
    figures = models.JSONField(default=dict, blank=True, editable=False)
    csv_content = models.BinaryField(default=b"", editable=False)
    pdf_content = models.BinaryField(default=b"", editable=False)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["-created_at"], name="report_newest_first")]  # the admin list

    def __str__(self) -> str:
        return f"{self.scope_name}, {self.period_days} days, {self.created_at:%Y-%m-%d %H:%M}"

    def filename(self, file_format: str) -> str:
        """redflag-report-2026-12-01-<8 hex>.pdf: only the date and the id, nothing an admin typed."""
        day = (self.period_end or self.created_at).date().isoformat()
        return f"redflag-report-{day}-{self.pk.hex[:8]}.{file_format}"
