"""Maintenance windows, patching policies, their rollouts and each machine's turn in a window.

Written only through policies_app.services (the admin calls them); the window arithmetic is the pure
module policies_app.windows.
"""

from __future__ import annotations

import fnmatch
import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from agents_app.choices import PackageType, UpdateSeverity
from agents_app.models import Agent, AgentGroup, Command
from policies_app.choices import (
    LAST_DAY_OF_MONTH,
    OPEN_ROLLOUT_STATUSES,
    ApprovalScope,
    MissedWindowRule,
    PolicyAction,
    RebootRule,
    RolloutStatus,
    TurnState,
)
from policies_app.windows import WindowSpec, time_zone_problem

WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_DURATION_MINUTES = 24 * 60
# A name pattern: package-name characters plus the glob's * ? [ ] (fnmatch, case-sensitive like the names).
PATTERN_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-_:/@*?[]!")


def validate_time_zone(value: str) -> None:
    problem = time_zone_problem(value)
    if problem:
        raise ValidationError(problem)


def validate_printable(value: str) -> None:
    # The policy's name reaches a machine in its reboot announcement, which the agent refuses unless printable.
    if not value.isprintable():
        raise ValidationError("Use printable characters only (no newline or control character).")


def pattern_lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def validate_patterns(value: str) -> None:
    for line in pattern_lines(value):
        if len(line) > 128 or not set(line) <= PATTERN_CHARACTERS:
            raise ValidationError(f"{line[:40]!r} is not a name pattern: use package-name characters with * ? [ ]")


class MaintenanceWindow(models.Model):
    """When policies may act: days of the week and/or of the month, a local start time, a duration."""

    name = models.CharField(max_length=64, unique=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone],
                                 help_text="IANA zone the days and the start time are read in: Europe/Berlin.")
    weekdays = models.JSONField(default=list, blank=True, help_text="0 = Monday … 6 = Sunday.")
    month_days = models.JSONField(default=list, blank=True, help_text="1–31, and -1 for the month's last day.")
    start_time = models.TimeField(help_text="Local time in the window's zone.")
    duration_minutes = models.PositiveIntegerField(
        default=120, validators=[MinValueValidator(15), MaxValueValidator(MAX_DURATION_MINUTES)])
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        weekdays, month_days = self.weekdays or [], self.month_days or []
        if not isinstance(weekdays, list) or any(not isinstance(d, int) or not 0 <= d <= 6 for d in weekdays):
            raise ValidationError({"weekdays": "Weekdays are numbers 0 (Monday) to 6 (Sunday)."})
        if not isinstance(month_days, list) or any(
                not isinstance(d, int) or not (1 <= d <= 31 or d == LAST_DAY_OF_MONTH) for d in month_days):
            raise ValidationError({"month_days": "Days of the month are 1 to 31, or -1 for the last day."})
        if not weekdays and not month_days:
            raise ValidationError("Pick at least one weekday or day of the month.")
        if self.start_time and (self.start_time.second or self.start_time.microsecond):
            raise ValidationError({"start_time": "Start on a whole minute."})

    def spec(self, blackouts=None) -> WindowSpec:
        """The pure definition the window arithmetic reads (blackouts from the prefetch when there is one)."""
        rows = self.blackouts.all() if blackouts is None else blackouts
        return WindowSpec(
            time_zone=self.time_zone, start_time=self.start_time, duration_minutes=self.duration_minutes,
            weekdays=frozenset(self.weekdays or ()), month_days=frozenset(self.month_days or ()),
            blackouts=tuple((row.first_date, row.last_date) for row in rows),
        )

    @property
    def recurrence(self) -> str:
        parts = []
        if self.weekdays:
            parts.append(", ".join(WEEKDAY_NAMES[d] for d in sorted(self.weekdays)))
        if self.month_days:
            days = sorted(d for d in self.month_days if d != LAST_DAY_OF_MONTH)
            words = [f"day {d}" for d in days] + (["last day"] if LAST_DAY_OF_MONTH in self.month_days else [])
            parts.append(", ".join(words) + " of the month")
        hours, minutes = divmod(self.duration_minutes, 60)
        length = f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"
        return f"{'; '.join(parts)} at {self.start_time:%H:%M} {self.time_zone} for {length}"


class Blackout(models.Model):
    """Local dates (inclusive) on which the window does not open: a release freeze, a holiday."""

    window = models.ForeignKey(MaintenanceWindow, on_delete=models.CASCADE, related_name="blackouts")
    first_date = models.DateField()
    last_date = models.DateField()
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["first_date"]

    def __str__(self) -> str:
        return f"{self.first_date} – {self.last_date}"

    def clean(self) -> None:
        if self.first_date and self.last_date and self.last_date < self.first_date:
            raise ValidationError({"last_date": "The last date is before the first."})


class Policy(models.Model):
    """Binds groups to a window and to rules: which updates to approve, what to do, when to reboot."""

    name = models.CharField(max_length=64, unique=True, validators=[validate_printable])
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    groups = models.ManyToManyField(AgentGroup, related_name="policies",
                                    help_text="The machines the policy patches.")
    window = models.ForeignKey(MaintenanceWindow, on_delete=models.PROTECT, related_name="policies")
    # Which updates it approves.
    approval_scope = models.CharField(max_length=16, choices=ApprovalScope.choices, default=ApprovalScope.SECURITY)
    minimum_severity = models.CharField(max_length=16, choices=UpdateSeverity.choices,
                                        default=UpdateSeverity.UNKNOWN,
                                        help_text="Unknown admits every severity.")
    package_types = models.JSONField(default=list, blank=True, help_text="Empty: every package manager.")
    include_patterns = models.TextField(blank=True, validators=[validate_patterns],
                                        help_text="One name pattern a line (openssl, lib*); empty: every name.")
    exclude_patterns = models.TextField(blank=True, validators=[validate_patterns],
                                        help_text="One name pattern a line; these are never approved.")
    minimum_age_days = models.PositiveIntegerField(
        default=0, validators=[MaxValueValidator(365)],
        help_text="Soak: days since the update was first seen before the policy takes it.")
    exploited_override = models.BooleanField(
        default=True, help_text="Take updates fixing a known-exploited CVE (CISA KEV) without waiting for the soak.")
    # What it does in the window.
    action = models.CharField(max_length=24, choices=PolicyAction.choices, default=PolicyAction.INSTALL_NO_EXTRA)
    reboot = models.CharField(max_length=16, choices=RebootRule.choices, default=RebootRule.WHEN_REQUIRED)
    reboot_max_concurrent = models.PositiveIntegerField(
        default=1, validators=[MinValueValidator(1)], help_text="At most this many machines of a group at once.")
    reboot_delay_minutes = models.PositiveIntegerField(
        default=5, validators=[MaxValueValidator(120)], help_text="Announced to the machine before it goes down.")
    missed_window = models.CharField(max_length=16, choices=MissedWindowRule.choices,
                                     default=MissedWindowRule.NEXT_WINDOW)
    # The start of the latest window occurrence the sweep has handled: tells a window the server missed
    # while it was down (conditional UPDATE, so one sweep handles it).
    last_occurrence_start = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        types = self.package_types or []
        if not isinstance(types, list) or any(t not in PackageType.values for t in types):
            raise ValidationError({"package_types": f"Package types are among {', '.join(PackageType.values)}."})

    @property
    def installs(self) -> bool:
        """Whether the policy installs in its window (or only dry-runs, leaving the install to an admin)."""
        return self.action != PolicyAction.DRY_RUN

    def name_allowed(self, name: str) -> bool:
        """The include/exclude patterns (fnmatch) on one package name."""
        include = pattern_lines(self.include_patterns)
        if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
            return False
        return not any(fnmatch.fnmatchcase(name, pattern) for pattern in pattern_lines(self.exclude_patterns))

    def agents_q(self) -> models.Q:
        """Every machine of the policy's groups, as one filter on agents."""
        q = models.Q(pk__in=[])
        for group in self.groups.all():
            q |= group.agents_q()
        return q & models.Q(revoked_at__isnull=True)


class RolloutStage(models.Model):
    """A ring: the policy's machines in these groups (none: every machine no earlier ring took)."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="stages")
    position = models.PositiveIntegerField(default=1)
    name = models.CharField(max_length=64)
    groups = models.ManyToManyField(AgentGroup, blank=True, related_name="rollout_stages",
                                    help_text="Empty: the policy's machines that no other ring names.")
    soak_hours = models.PositiveIntegerField(default=24, help_text="Wait after this ring before the next starts.")
    success_percent = models.PositiveIntegerField(default=100, validators=[MaxValueValidator(100)])
    minimum_machines = models.PositiveIntegerField(default=1)
    halt_failure_percent = models.PositiveIntegerField(
        default=20, validators=[MaxValueValidator(100)],
        help_text="More failures than this share of the ring's machines halts the rollout.")

    class Meta:
        ordering = ["policy", "position"]
        constraints = [models.UniqueConstraint(fields=["policy", "position"], name="one_stage_per_position")]

    def __str__(self) -> str:
        return f"{self.position}. {self.name}"


class Rollout(models.Model):
    """One pass of a policy over its machines, ring by ring."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="rollouts")
    status = models.CharField(max_length=16, choices=RolloutStatus.choices, default=RolloutStatus.RUNNING)
    stage_position = models.PositiveIntegerField(default=1)
    stage_started_at = models.DateTimeField(default=timezone.now)
    # When the current ring's last machine finished: its soak counts from here.
    stage_finished_at = models.DateTimeField(null=True, blank=True)
    halted_reason = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [models.UniqueConstraint(
            fields=["policy"], condition=models.Q(status__in=OPEN_ROLLOUT_STATUSES), name="one_open_rollout_per_policy",
        )]

    def __str__(self) -> str:
        return f"{self.policy} rollout of {self.started_at:%Y-%m-%d %H:%M} ({self.status})"


class MachineTurn(models.Model):
    """One machine's turn in one window occurrence of one policy.

    The unique (policy, agent, occurrence_start) is what makes "a window opens exactly once per machine" true
    with several sweeps and clusters: a sweep claims a turn by inserting it, and only the inserting sweep
    (``claim``) acts on it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="turns")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="policy_turns")
    occurrence_start = models.DateTimeField()
    occurrence_end = models.DateTimeField()
    rollout = models.ForeignKey(Rollout, null=True, blank=True, on_delete=models.SET_NULL, related_name="turns")
    stage_position = models.PositiveIntegerField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=TurnState.choices)
    claim = models.UUIDField(editable=False)
    # The updates it approved (ids) and their names, a snapshot for the history.
    update_ids = models.JSONField(default=list, blank=True)
    packages = models.JSONField(default=list, blank=True)
    # The dry-run and install commands the policy created for this turn.
    command_ids = models.JSONField(default=list, blank=True)
    reboot_command = models.ForeignKey(Command, null=True, blank=True, on_delete=models.SET_NULL,
                                       related_name="policy_turns")
    note = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-occurrence_start", "agent"]
        constraints = [models.UniqueConstraint(fields=["policy", "agent", "occurrence_start"],
                                               name="one_turn_per_machine_and_occurrence")]
        # The sweep follows its policies' moving turns; the rollout page counts a rollout's turns by state.
        indexes = [models.Index(fields=["policy", "state"], name="turn_policy_state"),
                   models.Index(fields=["rollout", "state"], name="turn_rollout_state")]

    def __str__(self) -> str:
        return f"{self.agent_id} in {self.policy_id} at {self.occurrence_start:%Y-%m-%d %H:%M} ({self.state})"
