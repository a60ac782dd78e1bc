"""Reusable reads of SystemEvent: the auditor's filters and keyset (cursor) pagination.

The history page, the exports, the read API and the live stream all read through these methods,
so "the current filter" means the same rows everywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connections, models
from django.db.models import Q
from django.db.models.fields.json import KeyTransform
from django.utils.dateparse import parse_datetime


class InvalidCursor(ValueError):
    """A pagination cursor that was not produced by ``encode_cursor``."""


def encode_cursor(created_at: datetime, event_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{event_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, _, event_id = raw.partition("|")
        created_at = parse_datetime(stamp)
        if created_at is None or created_at.tzinfo is None:
            raise ValueError
        return created_at, uuid.UUID(event_id)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidCursor("not a valid cursor") from None


def parse_metadata_value(raw: str) -> list[Any]:
    """``"5"`` may mean the string or the number: match both (JSON-decoded when it decodes)."""
    candidates: list[Any] = [raw]
    try:
        decoded = json.loads(raw)
    except ValueError:
        return candidates
    if decoded != raw and not isinstance(decoded, (dict, list)):
        candidates.append(decoded)
    return candidates


@dataclass(frozen=True)
class EventFilter:
    """The auditor's filter; every field optional. Built by ``events_app.filters.EventFilterForm``."""

    agent: uuid.UUID | None = None
    event_type: str = ""
    subtype: str = ""
    severity: str = ""
    component: str = ""
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""
    metadata: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """What the filter was, for an audit record (the export event) or a log line."""
        out: dict[str, Any] = {}
        for name in ("agent", "event_type", "subtype", "severity", "component", "since", "until", "text"):
            value = getattr(self, name)
            if value:
                out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
        if self.metadata:
            out["metadata"] = [f"{key}={value}" for key, value in self.metadata]
        return out


class SystemEventQuerySet(models.QuerySet):
    def newest_first(self) -> SystemEventQuerySet:
        # Index event_time_id (migration 0003) serves this order; ties on created_at broken by id.
        return self.order_by("-created_at", "-id")

    def matching(self, spec: EventFilter) -> SystemEventQuerySet:
        qs = self
        if spec.agent:
            qs = qs.filter(agent_id=spec.agent)
        if spec.event_type:
            qs = qs.filter(event_type=spec.event_type)
        if spec.subtype:
            qs = qs.filter(event_subtype=spec.subtype)
        if spec.severity:
            qs = qs.filter(severity=spec.severity)
        if spec.component:
            qs = qs.filter(component=spec.component)
        if spec.since:
            qs = qs.filter(created_at__gte=spec.since)
        if spec.until:
            qs = qs.filter(created_at__lt=spec.until)
        if spec.text:
            qs = qs.filter(message__icontains=spec.text)
        for key, value in spec.metadata:
            qs = qs.with_metadata(key, value)
        return qs

    def with_metadata(self, key: str, value: str) -> SystemEventQuerySet:
        """metadata[key] == value.

        PostgreSQL: JSON containment (``@>``), served by the GIN index (jsonb_path_ops) of
        migration 0002. SQLite has no containment operator; ``JSON_EXTRACT(metadata, '$."key"')``
        compares the same top-level value. The key is an explicit KeyTransform, never spliced into a
        lookup name, so keys like ``a__b`` or ``contains`` are just keys.
        """
        candidates = parse_metadata_value(value)
        if self._db_vendor() == "postgresql":
            condition = Q()
            for candidate in candidates:
                condition |= Q(metadata__contains={key: candidate})
            return self.filter(condition)
        alias = f"metadata_term_{len(self.query.annotations)}"
        return self.alias(**{alias: KeyTransform(key, "metadata")}).filter(
            Q.create([(alias, candidate) for candidate in candidates], connector=Q.OR))

    def _db_vendor(self) -> str:
        return connections[self.db].vendor

    def before_cursor(self, cursor: str | None) -> SystemEventQuerySet:
        """Rows after ``cursor`` in newest-first order: (created_at, id) < the cursor's.

        Written as ``created_at <= t AND (created_at < t OR id < i)`` so the planner can use the
        created_at range of the index instead of scanning from the top: page 500 costs page 1.
        """
        if not cursor:
            return self
        created_at, event_id = decode_cursor(cursor)
        return self.filter(Q(created_at__lte=created_at) & (Q(created_at__lt=created_at) | Q(id__lt=event_id)))

    def page(self, cursor: str | None, size: int) -> tuple[list, str | None]:
        """One page, newest first, and the cursor of the next page (None on the last). One query."""
        rows = list(self.before_cursor(cursor).newest_first()[: size + 1])
        if len(rows) > size:
            rows = rows[:size]
            return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
        return rows, None

    def iterate_keyset(self, batch_size: int = 2000) -> Iterator:
        """Every matching row, newest first, one bounded page at a time (constant memory).

        Not ``.iterator()``: a server-side cursor would hold one transaction open for the whole
        export; keyset pages are independent short queries.
        """
        cursor = None
        while True:
            rows, cursor = self.page(cursor, batch_size)
            yield from rows
            if cursor is None:
                return

    def after_seq(self, seq: int) -> SystemEventQuerySet:
        """The live stream's read: rows inserted after ``seq``, in insertion order."""
        return self.filter(seq__gt=seq).order_by("seq")
