"""Reusable reads of SystemEvent: the auditor's filters and keyset (cursor) pagination.

The history page, the exports, the read API and the live stream all read through these methods,
so "the current filter" means the same rows everywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any

from django.db import connections, models
from django.db.models import Q
from django.db.models.fields.json import KeyTransform
from django.utils.dateparse import parse_datetime

from redflag.access import agent_model


class InvalidCursor(ValueError):
    """A pagination cursor that was not produced by ``encode_cursor``."""


class InvalidFilterValue(ValueError):
    """A filter value no database can compare; the form answers it with a 400 naming the parameter."""


class NumberOutOfRange(InvalidFilterValue):
    """A number JSON cannot hold, or one the databases would compare differently; as quoted text it is fine."""


# The integers both databases compare exactly: SQLite's JSON functions hold 64 bits and turn larger
# ones into approximate floats; PostgreSQL's jsonb is exact. Beyond that, one query would match
# different rows on each database.
JSON_INTEGER_RANGE = range(-(2**63), 2**63)

# "Message contains" has no index (a trigram index did not bring a rare term under 300 ms at ten million
# events): a history or API page with a text filter reads at most this many events of the rest of its
# filter, newest first, and says how far back it searched; the next page goes on from there.
TEXT_SCAN_WINDOW = 5000


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
        # In UTC, as the database adapters convert it: a hand-made cursor at year 1 and +14:00
        # overflows here (InvalidCursor, a 400) rather than inside the query (a 500).
        return created_at.astimezone(dt_timezone.utc), uuid.UUID(event_id)
    except (ValueError, OverflowError, UnicodeDecodeError, binascii.Error):
        raise InvalidCursor("not a valid cursor") from None


def parse_metadata_value(raw: str) -> list[Any]:
    """``"5"`` may mean the string or the number: match both (JSON-decoded when it decodes).

    Raises InvalidFilterValue when the decoded value is one no database can compare (see
    ``comparable_json_scalar``); quoting the value (``"NaN"``) matches it as text instead.
    """
    candidates: list[Any] = [raw]
    try:
        # Decimal keeps NaN, Infinity and 1e400 recognisable instead of becoming float('inf').
        decoded = json.loads(raw, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError):
        return candidates
    if not isinstance(decoded, (dict, list)):
        candidates.append(comparable_json_scalar(decoded))
    return candidates


def comparable_json_scalar(value: Any) -> Any:
    """``value`` as both databases can compare it with a JSON value, or InvalidFilterValue.

    JSON has no NaN or Infinity (SQLite reports "malformed JSON", PostgreSQL "invalid input syntax
    for type json"); jsonb refuses NUL and unpaired surrogates in strings.
    """
    if isinstance(value, Decimal):
        number = float(value)
        if not value.is_finite() or math.isinf(number) or (number == 0 and value != 0):
            raise NumberOutOfRange("is a number out of range (NaN, Infinity, beyond ±1.8e308 or too close to 0)")
        return number
    if isinstance(value, int) and not isinstance(value, bool) and value not in JSON_INTEGER_RANGE:
        raise NumberOutOfRange("is an integer out of range (beyond 64 bits)")
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidFilterValue("may not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidFilterValue("is not valid Unicode (an unpaired surrogate)") from None
    return value


@dataclass(frozen=True)
class EventFilter:
    """The auditor's filter; every field optional. Built by ``events_app.filters.EventFilterForm``."""

    agent: uuid.UUID | None = None
    event_type: str = ""
    subtype: str = ""
    severity: str = ""
    component: str = ""
    origin: str = ""
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""
    metadata: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # The reader's agents (redflag.access.agents_q, a Q over Agent): only their events; None = every event.
    # A scoped reader never sees events of no agent (server-wide facts belong to the whole fleet).
    agents_in: Any = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """What the filter was, for an audit record (the export event) or a log line."""
        out: dict[str, Any] = {}
        for name in ("agent", "event_type", "subtype", "severity", "component", "origin", "since", "until", "text"):
            value = getattr(self, name)
            if value:
                out[name] = value.isoformat() if isinstance(value, datetime) else str(value)
        if self.metadata:
            out["metadata"] = [f"{key}={value}" for key, value in self.metadata]
        return out


@dataclass(frozen=True)
class Page:
    """A reader's page: its rows, the cursor of the next one, and, when it stopped at its scan window rather than
    filling up or reaching the end of the matches, the moment it searched back to (older matches come next)."""

    rows: list
    next_cursor: str | None
    searched_back_to: datetime | None = None


class MetadataKey(KeyTransform):
    """``metadata -> key``, the key always an object member.

    Django's KeyTransform reads a key that ``int()`` accepts ("0", "-1", "1_0") as an array index on
    SQLite, and SQLite refuses a negative index as a JSON path error. PostgreSQL's containment
    query never takes this path, so the same filter means the same thing on both.
    """

    def as_sqlite(self, compiler, connection):
        lhs, params = compiler.compile(self.lhs)
        path = "$." + json.dumps(self.key_name)
        datatypes = ",".join(repr(datatype) for datatype in sorted(connection.ops.jsonfield_datatype_values))
        # As KeyTransform.as_sqlite: true/false/null compare by JSON type, everything else by value.
        sql = (f"(CASE WHEN JSON_TYPE({lhs}, %s) IN ({datatypes}) "
               f"THEN JSON_TYPE({lhs}, %s) ELSE JSON_EXTRACT({lhs}, %s) END)")
        return sql, (*params, path) * 3


class SystemEventQuerySet(models.QuerySet):
    def newest_first(self) -> SystemEventQuerySet:
        # Index event_time_id (migration 0003) serves this order; ties on created_at broken by id.
        return self.order_by("-created_at", "-id")

    def matching(self, spec: EventFilter) -> SystemEventQuerySet:
        qs = self
        if spec.agents_in is not None:
            qs = qs.filter(agent__in=agent_model().objects.filter(spec.agents_in).values("pk"))
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
        if spec.origin:
            qs = qs.filter(origin=spec.origin)
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
        compares the same top-level value. The key is an explicit MetadataKey, never spliced into a
        lookup name, so keys like ``a__b``, ``contains`` or ``-1`` are just keys.
        """
        candidates = parse_metadata_value(value)
        if self._db_vendor() == "postgresql":
            condition = Q()
            for candidate in candidates:
                condition |= Q(metadata__contains={key: candidate})
            return self.filter(condition)
        alias = f"metadata_term_{len(self.query.annotations)}"
        return self.alias(**{alias: MetadataKey(key, "metadata")}).filter(
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

    def search_page(self, spec: EventFilter, cursor: str | None, size: int, window: int | None = None) -> Page:
        """One page of ``spec`` for a reader (the history page, the read API), its cost bounded at any table size.

        Every filter but the text has an index: without text this is ``matching(spec).page()``, one query. With
        text, two:

        1. The edge: the ``window``-th (default TEXT_SCAN_WINDOW) event of the rest of the filter after the
           cursor, newest first (an index read of ``window`` entries). None: fewer are left, and the plain page
           reads them all.
        2. The page: the text matches between the cursor and the edge, at most ``size``. If it fills up, the
           next page starts after its last row as usual; if not, after the edge, and the page says how far
           back it searched. A page may then hold fewer than ``size`` rows, or none, and still have a next one.
        """
        if not spec.text:
            return Page(*self.matching(spec).page(cursor, size))
        window = window or TEXT_SCAN_WINDOW
        rest = self.matching(replace(spec, text="")).before_cursor(cursor).newest_first()
        edge = list(rest.values_list("created_at", "id")[window - 1:window])
        if not edge:
            return Page(*self.matching(spec).page(cursor, size))
        edge_time, edge_id = edge[0]
        within = Q(created_at__gte=edge_time) & (Q(created_at__gt=edge_time) | Q(id__gte=edge_id))
        rows = list(self.matching(spec).before_cursor(cursor).filter(within).newest_first()[: size + 1])
        if len(rows) > size:
            rows = rows[:size]
            return Page(rows, encode_cursor(rows[-1].created_at, rows[-1].id))
        return Page(rows, encode_cursor(edge_time, edge_id), searched_back_to=edge_time)

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
