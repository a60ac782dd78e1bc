"""The dashboard's trends: the daily fleet snapshots of the last 30 or 90 days as three charts."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.utils import timezone

from agents_app.models import AgentGroup
from reports_app.charts import Series, line_chart
from reports_app.models import FleetSnapshot

TREND_RANGES = (30, 90)
GREEN, BLUE, GREY, RED = "#2e7d32", "#1565c0", "#78909c", "#c62828"


def dashboard_trends(*, days: int = TREND_RANGES[0], today: date | None = None,
                     group: AgentGroup | None = None) -> dict[str, Any]:
    """Three charts over the last ``days`` days (today included), from one query on the snapshots of the
    whole fleet or of ``group``."""
    days = days if days in TREND_RANGES else TREND_RANGES[0]
    today = today or timezone.localdate()
    first = today - timedelta(days=days - 1)
    snapshots = FleetSnapshot.objects.filter(group=group) if group is not None else FleetSnapshot.objects.fleet()
    by_day = {snapshot.day: snapshot for snapshot in snapshots.between(first, today)}
    axis = [first + timedelta(days=offset) for offset in range(days)]

    def values(attribute: str) -> list[float | None]:
        return [getattr(by_day[day], attribute) if day in by_day else None for day in axis]

    charts = [] if not by_day else [
        line_chart(chart_id="rf-trend-compliance", title="Compliance (machines with no overdue security update)",
                   days=axis, series=[Series("Compliant", GREEN, values("compliance_percent"))], unit="%", y_max=100),
        line_chart(chart_id="rf-trend-security", title="Outstanding security updates", days=axis,
                   series=[Series("Security updates", RED, values("outstanding_security"))]),
        line_chart(chart_id="rf-trend-machines", title="Machines online", days=axis,
                   series=[Series("Online", BLUE, values("online")), Series("Total", GREY, values("machines"))]),
    ]
    return {"days": days, "scope": group.name if group is not None else "",
            "ranges": [{"days": option, "active": option == days} for option in TREND_RANGES],
            "charts": charts, "snapshots": len(by_day)}
