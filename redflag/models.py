"""Cross-cutting server state: database-backed settings and request nonces."""

from __future__ import annotations

import re
import time
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

RATE_PATTERN = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")


def validate_rate(value: str) -> None:
    if not RATE_PATTERN.match(value):
        raise ValidationError(f"{value!r} is not a rate like 60/min, 10/hour or 1000/day")


class ServerSettings(models.Model):
    """The one row of settings an admin edits at run time (pk is always 1).

    Read through ``ServerSettings.current()``, which each process keeps for a
    few seconds: a change reaches every web process within CACHE_SECONDS.
    """

    CACHE_SECONDS = 5

    default_poll_interval_seconds = models.PositiveIntegerField(default=300)
    heartbeat_duration_minutes = models.PositiveIntegerField(default=10)
    heartbeat_before_operations = models.BooleanField(
        default=True,
        help_text="Switch an agent to heartbeat mode before dry-runs, installs, reboots and agent updates.",
    )
    offline_threshold_seconds = models.PositiveIntegerField(
        default=900, help_text="An agent not seen for this long counts as offline."
    )
    max_pending_commands = models.PositiveIntegerField(default=10)
    registration_token_max_hours = models.PositiveIntegerField(
        default=24 * 30, help_text="Longest lifetime a new registration token may have."
    )
    rate_registration = models.CharField(
        max_length=32, default="20/hour", validators=[validate_rate], help_text="Per client IP."
    )
    rate_checkin = models.CharField(max_length=32, default="60/min", validators=[validate_rate], help_text="Per agent.")
    rate_reports = models.CharField(max_length=32, default="30/min", validators=[validate_rate], help_text="Per agent.")
    rate_admin = models.CharField(
        max_length=32, default="30/min", validators=[validate_rate], help_text="Admin log-in attempts per client IP."
    )
    event_retention_days = models.PositiveIntegerField(default=365)
    public_url = models.URLField(
        blank=True, help_text="How agents reach this server, e.g. https://redflag.example.net. Used in installers."
    )
    updated_at = models.DateTimeField(auto_now=True)

    _cached: ServerSettings | None = None
    _cached_at: float = 0.0

    class Meta:
        verbose_name = "server settings"
        verbose_name_plural = "server settings"

    def __str__(self) -> str:
        return "Server settings"

    def save(self, *args, **kwargs):
        self.pk = 1
        super().save(*args, **kwargs)
        ServerSettings.forget()

    @classmethod
    def current(cls) -> ServerSettings:
        if cls._cached is None or time.monotonic() - cls._cached_at > cls.CACHE_SECONDS:
            cls._cached, _ = cls.objects.get_or_create(pk=1)
            cls._cached_at = time.monotonic()
        return cls._cached

    @classmethod
    def forget(cls) -> None:
        cls._cached = None

    def rate_for(self, bucket: str) -> str:
        return getattr(self, f"rate_{bucket}")

    @property
    def offline_threshold(self) -> timedelta:
        return timedelta(seconds=self.offline_threshold_seconds)


class RequestNonce(models.Model):
    """A request nonce that was used. The unique constraint is the replay check.

    Nonces are 128+ bits of randomness from the agent, so they are unique
    globally; the renew endpoint checks one before it knows the agent.
    """

    nonce = models.CharField(max_length=128, unique=True)
    agent_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # The pruning job deletes by age.
        indexes = [models.Index(fields=["created_at"], name="nonce_created")]
