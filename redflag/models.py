"""Cross-cutting server state: database-backed settings and request nonces."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

RATE_PATTERN = re.compile(r"^\d+/(s|sec|second|m|min|minute|h|hour|d|day)$")

# The audit trail's retention floors. No setting can purge an event younger than these: the
# purge itself (events_app.services.events_purge) enforces them whatever it is passed, and the
# setting refuses less than the ordinary floor. Security events (component security, purges,
# configuration changes) keep the longer one.
EVENT_RETENTION_FLOOR_DAYS = 90
SECURITY_EVENT_RETENTION_FLOOR_DAYS = 365


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def public_url_is_insecure(url: str) -> bool:
    """http:// to a host that is not this machine: everything agents send crosses the network in clear."""
    parts = urlsplit(url or "")
    host = (parts.hostname or "").lower()
    return parts.scheme == "http" and not (host in LOCAL_HOSTS or host.startswith("127."))


def validate_rate(value: str) -> None:
    if not RATE_PATTERN.match(value):
        raise ValidationError(f"{value!r} is not a rate like 60/min, 10/hour or 1000/day")


def validate_event_retention_days(value: int) -> None:
    if value < EVENT_RETENTION_FLOOR_DAYS:
        raise ValidationError(
            f"Events are kept at least {EVENT_RETENTION_FLOOR_DAYS} days (security events "
            f"{SECURITY_EVENT_RETENTION_FLOOR_DAYS}), so the audit trail cannot be wiped from here; "
            f"{value} is too short.")


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
    rate_agent_events = models.CharField(
        max_length=32, default="3000/hour", validators=[validate_rate],
        help_text="Events one agent may report per period (a full outbox holds 2000 items); past it they are "
                  "refused with 429 and one warning event per period records it.",
    )
    event_retention_days = models.PositiveIntegerField(
        default=365, validators=[validate_event_retention_days],
        help_text=f"Days events are kept: at least {EVENT_RETENTION_FLOOR_DAYS}. Security events, purges and "
                  f"configuration changes are kept at least {SECURITY_EVENT_RETENTION_FLOOR_DAYS} days whatever "
                  "this says.",
    )
    public_url = models.URLField(
        blank=True, help_text="How agents reach this server, e.g. https://redflag.example.net. Used in installers."
    )
    allow_insecure_public_url = models.BooleanField(
        default=False,
        help_text="Allow a plain http:// public URL for another machine: tokens, commands and the agent itself "
                  "then cross the network unencrypted. Warned about on the dashboard and the token page.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    _cached: ServerSettings | None = None
    _cached_at: float = 0.0

    class Meta:
        verbose_name = "server settings"
        verbose_name_plural = "server settings"

    def __str__(self) -> str:
        return "Server settings"

    def clean(self):
        if public_url_is_insecure(self.public_url) and not self.allow_insecure_public_url:
            raise ValidationError({"public_url": "A plain http:// URL for another machine sends registration tokens, "
                                                 "credentials and commands unencrypted: use https://, or tick "
                                                 "'allow insecure public URL' below."})

    @property
    def insecure_public_url(self) -> bool:
        """An http:// public URL for another machine (allowed only by allow_insecure_public_url)."""
        return public_url_is_insecure(self.public_url)

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
