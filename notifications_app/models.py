import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from events_app.choices import EventType, Severity
from notifications_app.choices import Cadence, DeliveryKind, DeliveryStatus, DestinationKind, Trigger
from notifications_app.querysets import DeliveryQuerySet, RuleQuerySet


class Destination(models.Model):
    """Where notifications go. The URL (and a webhook's signing secret) are stored encrypted
    (notifications_app.vault); ``url_masked`` is all any page shows of them after saving."""

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=16, choices=DestinationKind.choices, default=DestinationKind.APPRISE)
    url_encrypted = models.TextField(editable=False)
    url_masked = models.CharField("URL", max_length=300, editable=False)
    signing_secret_encrypted = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    # Consecutive failed attempts; FAILING_THRESHOLD of them mark it failing (reported once).
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_failure_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_failing(self) -> bool:
        return self.failing_since is not None


class Rule(models.Model):
    """Which events go to which destinations, at once or as a digest."""

    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    trigger = models.CharField(max_length=32, choices=Trigger.choices, default=Trigger.EVENT)
    event_types = models.JSONField(
        default=list, blank=True,
        help_text="For 'Events of the chosen types': the types wanted; none chosen means every type.")
    min_severity = models.CharField("minimum severity", max_length=16, choices=Severity.choices,
                                    default=Severity.INFO)
    group = models.ForeignKey("agents_app.AgentGroup", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="notification_rules",
                              help_text="Only events of agents in this group; empty means the whole fleet.")
    offline_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="For 'An agent offline for N minutes': N.")
    cadence = models.CharField(max_length=16, choices=Cadence.choices, default=Cadence.IMMEDIATE)
    destinations = models.ManyToManyField(Destination, related_name="rules")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = RuleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Delivery(models.Model):
    """One message to one destination, sent by a django-q2 task with retries (delivery_attempt)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # The log outlives a deleted destination or rule: SET_NULL plus the name at the time.
    destination = models.ForeignKey(Destination, null=True, on_delete=models.SET_NULL, related_name="deliveries")
    destination_name = models.CharField(max_length=100)
    rule = models.ForeignKey(Rule, null=True, blank=True, on_delete=models.SET_NULL, related_name="deliveries")
    kind = models.CharField(max_length=16, choices=DeliveryKind.choices)
    event_type = models.CharField(max_length=32, choices=EventType.choices, blank=True)
    # The SystemEvent it tells about (no FK: retention removes events, the log keeps its rows).
    event_id = models.UUIDField(null=True, blank=True)
    subject = models.CharField(max_length=250)
    body = models.TextField()
    payload = models.JSONField(default=dict, blank=True, help_text="The webhook's JSON body (without signature).")
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [
            # The minute sweep (deliveries_due): queued rows whose next attempt is due.
            models.Index(fields=["next_attempt_at"], condition=Q(status__in=["queued", "sending"]),
                         name="delivery_due"),
            models.Index(fields=["destination", "-created_at"], name="delivery_destination_time"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} → {self.destination_name}"


class DeliveryAttachment(models.Model):
    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attachments")
    name = models.CharField(max_length=200)
    content = models.BinaryField()
    mimetype = models.CharField(max_length=100)


class DeliveryAttempt(models.Model):
    """The delivery log: one row per try, with what went wrong (secrets scrubbed)."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempt_log")
    destination = models.ForeignKey(Destination, null=True, on_delete=models.SET_NULL, related_name="attempts")
    destination_name = models.CharField(max_length=100)
    number = models.PositiveIntegerField()
    attempted_at = models.DateTimeField()
    succeeded = models.BooleanField()
    error = models.TextField(blank=True)
    duration_ms = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-attempted_at", "-id"]
        verbose_name = "delivery attempt"
        verbose_name_plural = "delivery log"

    def __str__(self) -> str:
        return f"{self.destination_name} #{self.number} {'ok' if self.succeeded else 'failed'}"


class DigestEntry(models.Model):
    """One line waiting for its rule's digest to this destination, due at the end of its period."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="digest_entries")
    destination = models.ForeignKey(Destination, on_delete=models.CASCADE, related_name="digest_entries")
    event_id = models.UUIDField(null=True, blank=True)
    line = models.TextField()
    record = models.JSONField(default=dict)
    created_at = models.DateTimeField()
    due_at = models.DateTimeField()
    delivery = models.ForeignKey(Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        ordering = ["created_at", "id"]
        # The minute sweep (digests_flush): unsent entries that are due.
        indexes = [models.Index(fields=["due_at"], condition=Q(delivery__isnull=True), name="digest_due")]


class DispatchCursor(models.Model):
    """How far events_dispatch has read SystemEvents (by seq). One row.

    ``position``: every event with seq <= position is done. ``done_above``: seqs above it already
    handled while an earlier seq was missing (PostgreSQL hands out seq at insert, so a later event can
    commit first). ``version`` makes each advance a conditional UPDATE: two dispatchers never both
    commit the same batch.
    """

    position = models.BigIntegerField(default=0)
    done_above = models.JSONField(default=list)
    version = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)


class OfflineAlert(models.Model):
    """An agent's offline spell already told for a rule: one notification per spell, not per sweep."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="offline_alerts")
    agent = models.ForeignKey("agents_app.Agent", on_delete=models.CASCADE, related_name="+")
    last_seen_at = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["rule", "agent", "last_seen_at"], name="offline_alert_once")]
