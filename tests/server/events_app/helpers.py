"""Helpers of the events_app tests (users in each role, events built from a frozen time)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from django.contrib.auth.models import Group, Permission, User
from django.db import connection, models

from events_app.choices import Component, EventSubtype, EventType
from events_app.models import SEQ_NAME, SystemEvent
from events_app.services import record_event

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=timezone.utc)
PASSWORD = "correct horse battery staple"


def make_user(username: str, *, staff: bool = True, superuser: bool = False, auditor: bool = False):
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff, is_superuser=superuser)
    if auditor:
        user.groups.add(auditors_group())
    return user


def auditors_group():
    """The group migration 0002 creates (rebuilt here after a transactional test's flush emptied it)."""
    group, created = Group.objects.get_or_create(name="Auditors")
    if created:
        group.permissions.set(Permission.objects.filter(
            content_type__app_label__in=("events_app", "agents_app"),
            codename__in=("view_systemevent", "view_agent")))
    return group


def bulk_events(count: int, *, start: datetime = NOW, step: timedelta = timedelta(seconds=1),
                first_seq: int | None = None, **fields) -> list:
    """``count`` events, newest at ``start``, one ``step`` apart, numbered in insertion order."""
    seqs = reserve_seqs(count) if first_seq is None else [first_seq + i for i in range(count)]
    defaults = dict(event_type="agent_checkin", event_subtype="info", severity="info", component="agent",
                    message="check-in", actor="system", metadata={})
    defaults.update(fields)
    rows = [
        SystemEvent(id=uuid.uuid4(), created_at=start - step * i, seq=seqs[i], **defaults)
        for i in range(count)
    ]
    return SystemEvent.objects.bulk_create(rows, batch_size=500)


def reserve_seqs(count: int) -> list[int]:
    """Insertion numbers for bulk-created rows (bulk_create bypasses SystemEvent.save)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT nextval('{SEQ_NAME}') FROM generate_series(1, %s)", [count])
            return [row[0] for row in cursor.fetchall()]
    top = SystemEvent.objects.aggregate(top=models.Max("seq"))["top"] or 0
    return list(range(top + 1, top + 1 + count))


def make_event(**overrides):
    """A server_startup event through the one write path, with nested metadata; ``overrides`` change any field."""
    values = dict(event_type=EventType.SERVER_STARTUP, subtype=EventSubtype.SUCCESS, component=Component.SERVER,
                  message="started", metadata={"pid": 42, "nested": {"ok": True}})
    values.update(overrides)
    return record_event(**values)
