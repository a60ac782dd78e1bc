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


def csv_lines(events: Iterable[SystemEvent]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values) -> str:
        writer.writerow(values)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(CSV_COLUMNS)
    for event in events:
        record = event_record(event)
        yield line([_csv_cell(record[column]) for column in CSV_COLUMNS])


def jsonl_lines(events: Iterable[SystemEvent]) -> Iterator[str]:
    for event in events:
        yield json.dumps(event_record(event), sort_keys=True) + "\n"
