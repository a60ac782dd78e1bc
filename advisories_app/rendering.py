"""One shape of an exposure for every reader: the CSV/JSON Lines exports and the read API."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from advisories_app.models import Exposure
from events_app.rendering import records_csv_lines, records_jsonl_lines

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


def csv_lines(exposures: Iterable[Exposure]) -> Iterator[str]:
    return records_csv_lines((exposure_record(exposure) for exposure in exposures), COLUMNS)


def jsonl_lines(exposures: Iterable[Exposure]) -> Iterator[str]:
    return records_jsonl_lines(exposure_record(exposure) for exposure in exposures)
