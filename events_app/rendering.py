"""One shape of an event for every reader: exports, the read API and the live stream."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from events_app.models import SystemEvent

CSV_COLUMNS = (
    "id", "created_at", "event_type", "event_subtype", "severity", "component",
    "agent_id", "hostname", "actor", "origin", "reported_at", "message", "metadata",
)
# A spreadsheet would run these as formulas (CSV injection); prefixing a quote keeps them text.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def event_record(event: SystemEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "created_at": event.created_at.isoformat(),
        "event_type": event.event_type,
        "event_subtype": event.event_subtype,
        "severity": event.severity,
        "component": event.component,
        "agent_id": str(event.agent_id) if event.agent_id else None,
        "hostname": event.hostname,
        "actor": event.actor,
        # "agent": the agent's own account of itself; reported_at is the time it claims.
        "origin": event.origin,
        "reported_at": event.reported_at.isoformat() if event.reported_at else None,
        "message": event.message,
        "metadata": event.metadata,
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def records_csv_lines(records: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[str]:
    """CSV, one line at a time (for a streaming response): the header, then each record's ``columns``,
    every cell safe from spreadsheet formulas. Every CSV export renders through here."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values) -> str:
        writer.writerow(values)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(columns)
    for record in records:
        yield line([_csv_cell(record[column]) for column in columns])


def records_jsonl_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, sort_keys=True) + "\n"


def csv_lines(events: Iterable[SystemEvent]) -> Iterator[str]:
    return records_csv_lines((event_record(event) for event in events), CSV_COLUMNS)


def jsonl_lines(events: Iterable[SystemEvent]) -> Iterator[str]:
    return records_jsonl_lines(event_record(event) for event in events)
