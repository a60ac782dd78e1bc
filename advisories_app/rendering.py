"""One shape of an exposure for every reader: the CSV/JSON Lines exports and the read API."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from advisories_app.models import Exposure
from events_app.rendering import FORMULA_PREFIXES

COLUMNS = (
    "cve_id", "cvss_score", "epss_score", "epss_percentile", "known_exploited", "kev_date_added", "kev_due_date",
    "agent_id", "hostname", "package_type", "package", "current_version", "available_version", "status",
    "fixed_version", "source",
)


def exposures_for_reading():
    """Exposures with what a record shows, in a stable order (keyset pagination on id)."""
    return Exposure.objects.select_related("vulnerability", "agent", "package_update").order_by("pk")


def exposure_record(exposure: Exposure) -> dict[str, Any]:
    vulnerability, update = exposure.vulnerability, exposure.package_update
    return {
        "cve_id": vulnerability.cve_id,
        "cvss_score": vulnerability.cvss_score,
        "epss_score": vulnerability.epss_score,
        "epss_percentile": vulnerability.epss_percentile,
        "known_exploited": vulnerability.known_exploited,
        "kev_date_added": vulnerability.kev_date_added.isoformat() if vulnerability.kev_date_added else None,
        "kev_due_date": vulnerability.kev_due_date.isoformat() if vulnerability.kev_due_date else None,
        "agent_id": str(exposure.agent_id),
        "hostname": exposure.agent.hostname,
        "package_type": update.package_type,
        "package": update.name,
        "current_version": update.current_version,
        "available_version": update.available_version,
        "status": exposure.status,
        "fixed_version": exposure.fixed_version,
        "source": exposure.source,
    }


def _csv_cell(value: Any) -> str:
    """As events_app.rendering: a leading formula character is quoted so a spreadsheet keeps it text."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_lines(exposures: Iterable[Exposure]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(values) -> str:
        writer.writerow(values)
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    yield line(COLUMNS)
    for exposure in exposures:
        record = exposure_record(exposure)
        yield line([_csv_cell(record[column]) for column in COLUMNS])


def jsonl_lines(exposures: Iterable[Exposure]) -> Iterator[str]:
    for exposure in exposures:
        yield json.dumps(exposure_record(exposure), sort_keys=True) + "\n"
