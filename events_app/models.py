import uuid

from django.db import models
from django.utils import timezone

from events_app.choices import Component, EventSubtype, EventType, Severity


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
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The auditor's history filters (newest first) run these exact queries.
        indexes = [
            models.Index(fields=["-created_at"], name="event_time"),
            models.Index(fields=["agent", "-created_at"], name="event_agent_time"),
            models.Index(fields=["event_type", "-created_at"], name="event_type_time"),
            models.Index(fields=["severity", "-created_at"], name="event_severity_time"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.event_type}/{self.event_subtype}: {self.message}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("system events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("system events are append-only; the retention job removes old rows")
