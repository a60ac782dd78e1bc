import uuid

from django.conf import settings
from django.db import connections, models
from django.db.models.expressions import RawSQL
from django.utils import timezone

from events_app.choices import Component, EventSubtype, EventType, Origin, Severity
from events_app.querysets import SystemEventQuerySet

# PostgreSQL sequence behind SystemEvent.seq (created by migration 0003).
SEQ_NAME = "events_app_systemevent_seq"


class AppendOnlyError(Exception):
    """Raised on any attempt to change or delete a recorded SystemEvent."""


class SystemEvent(models.Model):
    """An append-only audit row.

    The agent FK is SET_NULL and ``hostname`` keeps a snapshot, so history
    survives the agent's deletion. Only the retention job removes rows, with a
    queryset delete.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    agent = models.ForeignKey(
        "agents_app.Agent", null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    hostname = models.CharField(max_length=255, blank=True)
    event_type = models.CharField(max_length=32, choices=EventType.choices)
    event_subtype = models.CharField(max_length=16, choices=EventSubtype.choices)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.INFO)
    component = models.CharField(max_length=16, choices=Component.choices)
    message = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=255, help_text="User name, agent:<hostname> or system.")
    # Also the column's DEFAULT, so raw SQL and COPY loads get one (migration 0007).
    origin = models.CharField(max_length=8, choices=Origin.choices, default=Origin.SERVER, db_default=Origin.SERVER,
                              help_text="Recorded by the server, or reported by the agent about itself.")
    # When the server recorded (or received) the event: the history orders and filters by it.
    created_at = models.DateTimeField(default=timezone.now)
    # An agent-reported event: the time the agent claims it happened (kept and shown as its claim).
    reported_at = models.DateTimeField(null=True, blank=True)
    # Insertion order, for the live stream (see next_seq_expression).
    seq = models.BigIntegerField(null=True, blank=True, unique=True, editable=False)

    objects = SystemEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        # The auditor's history filters (newest first) run these exact queries.
        indexes = [
            models.Index(fields=["-created_at"], name="event_time"),
            # The history page, exports and API: ORDER BY created_at DESC, id DESC with a keyset.
            models.Index(fields=["-created_at", "-id"], name="event_time_id"),
            models.Index(fields=["agent", "-created_at"], name="event_agent_time"),
            models.Index(fields=["event_type", "-created_at"], name="event_type_time"),
            models.Index(fields=["severity", "-created_at"], name="event_severity_time"),
            # The other column filters (migration 0009): without them a value that is rare, or absent, read
            # every row of the table (1.5 s at ten million events) to fill, or to find no, page.
            models.Index(fields=["component", "-created_at"], name="event_component_time"),
            models.Index(fields=["event_subtype", "-created_at"], name="event_subtype_time"),
            models.Index(fields=["origin", "-created_at"], name="event_origin_time"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.event_type}/{self.event_subtype}: {self.message}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("system events are append-only")
        assigned = self.seq is None
        if assigned:
            self.seq = next_seq_expression(kwargs.get("using") or "default")
        super().save(*args, **kwargs)
        if assigned:
            # The database chose it; read it lazily (deferred) if anyone asks.
            del self.__dict__["seq"]

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("system events are append-only; the retention job removes old rows")


def next_seq_expression(using: str = "default") -> RawSQL:
    """The value the database gives ``seq`` at INSERT time: a monotonic insertion counter.

    * PostgreSQL: ``nextval`` of a dedicated sequence (also the column's DEFAULT, so raw SQL and
      COPY loads get one too). Values are handed out at insert, not at commit, so a reader can see
      seq 7 before seq 6 commits, and rolled-back inserts leave holes; the live stream's
      ``SeqCursor`` waits a short grace period on holes before moving past them.
    * SQLite: ``MAX(seq) + 1`` evaluated inside the INSERT statement. SQLite has one writer at a
      time, which holds the write lock from this statement to commit, so values are unique and
      commit in order (no holes to wait for). Retention only deletes the oldest rows, so the
      maximum never goes backwards unless every event is deleted.
    """
    if connections[using].vendor == "postgresql":
        return RawSQL(f"nextval('{SEQ_NAME}')", [])
    return RawSQL(f"(SELECT COALESCE(MAX(seq), 0) + 1 FROM {SystemEvent._meta.db_table})", [])


class AuditApiToken(models.Model):
    """A per-user bearer token for SIEM tools reading /api/v1/audit/events.

    Only the SHA-256 of the secret is stored; the plaintext is shown once when an admin issues it.
    The token acts as its user: it reads events only while that user may (events_app.access).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="audit_api_tokens")
    label = models.CharField(max_length=100, help_text="Where it is used, e.g. 'Wazuh at siem-01'.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False, help_text="Enough to recognise it, not to use it.")
    created_by = models.CharField(max_length=150, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "audit API token"

    def __str__(self) -> str:
        return f"{self.label} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None
