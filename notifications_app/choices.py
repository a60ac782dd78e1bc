"""Notification vocabulary: the only place these strings are defined."""

from django.db import models


class DestinationKind(models.TextChoices):
    APPRISE = "apprise", "Apprise URL (e-mail, ntfy, Gotify, Matrix, Discord, Slack, Telegram, …)"
    WEBHOOK = "webhook", "Signed webhook (JSON, HMAC-SHA256)"


class Trigger(models.TextChoices):
    EVENT = "event", "Events of the chosen types"
    INSTALL_FAILED = "install_failed", "An install failed"
    ROLLOUT_HALTED = "rollout_halted", "A rollout halted"
    AGENT_OFFLINE = "agent_offline", "An agent offline for N minutes"
    SECURITY_VIOLATION = "security_violation", "A security violation"
    KEV_EXPOSURE = "kev_exposure", "A new known-exploited (KEV) exposure"


class Cadence(models.TextChoices):
    IMMEDIATE = "immediate", "At once"
    HOURLY = "hourly", "Hourly digest"
    DAILY = "daily", "Daily digest (00:00 UTC)"


class DeliveryKind(models.TextChoices):
    EVENT = "event", "Event"
    DIGEST = "digest", "Digest"
    OFFLINE = "offline", "Agent offline"
    MESSAGE = "message", "Message (report)"
    FAILING = "failing", "Destination failing"
    TEST = "test", "Test"


class DeliveryStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Gave up"
    CANCELLED = "cancelled", "Cancelled"
