"""Compliance figures from the fleet's update history, for the whole fleet or one agent group.

Definitions (README, "Compliance and reports"):

- A security update is *overdue* when it is still outstanding (not installed, closed or ignored) and
  RedFlag first saw it more than its severity's deadline ago (settings.REDFLAG_PATCH_DEADLINES_DAYS).
- A machine is *compliant* for a severity when it has no overdue security update of that severity, and
  compliant overall when it has none of any severity. Revoked agents are not counted: they no longer report.
- *Time to patch* is first seen → installed (or no longer reported, the update applied outside RedFlag)
  for the security updates resolved within the report's period.

Each function runs a fixed number of queries whatever the fleet size.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from agents_app.choices import UpdateSeverity, UpdateStatus
from agents_app.models import Agent, AgentGroup, PackageUpdate
from reports_app.models import WHOLE_FLEET, FleetSnapshot

SEVERITIES = tuple(UpdateSeverity.values)
# Resolved: RedFlag installed it, or a later scan no longer lists it (patched by other means).
RESOLVED_STATUSES = (UpdateStatus.INSTALLED, UpdateStatus.CLOSED)
SECONDS_PER_DAY = 86400


def patch_deadlines() -> dict[str, timedelta]:
    return {severity: timedelta(days=settings.REDFLAG_PATCH_DEADLINES_DAYS[severity]) for severity in SEVERITIES}


def scope_agents(group: AgentGroup | None) -> QuerySet[Agent]:
    agents = Agent.objects.filter(revoked_at__isnull=True)
    return agents.filter(group.agents_q()) if group is not None else agents


def overdue_q(severity: str, now: datetime, deadlines: dict[str, timedelta]) -> Q:
    """On outstanding security updates: those of ``severity`` first seen more than its deadline ago."""
    return Q(severity=severity, first_seen_at__lt=now - deadlines[severity])


def any_overdue_q(now: datetime, deadlines: dict[str, timedelta]) -> Q:
    q = Q()
    for severity in SEVERITIES:
        q |= overdue_q(severity, now, deadlines)
    return q


def percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _days(delta: timedelta) -> float:
    return round(delta.total_seconds() / SECONDS_PER_DAY, 2)


@dataclass(frozen=True)
class SeverityCompliance:
    severity: str
    deadline_days: int
    compliant: int
    machines: int
    percent: float | None


@dataclass(frozen=True)
class TimeToPatch:
    severity: str
    patched: int
    median_days: float | None
    mean_days: float | None
    longest_days: float | None


@dataclass(frozen=True)
class OverdueMachine:
    hostname: str
    severity: str
    updates: int
    oldest_days: float


@dataclass(frozen=True)
class OverduePackage:
    name: str
    package_type: str
    severity: str
    machines: int
    oldest_days: float


@dataclass(frozen=True)
class TrendPoint:
    """One day's snapshot in the report's period (reports_app.services.snapshot_take)."""

    day: str  # ISO date
    compliance_percent: float | None
    outstanding_security: int
    online: int
    machines: int


@dataclass(frozen=True)
class FleetCounts:
    """The numbers a daily snapshot keeps."""

    machines: int
    online: int
    outstanding_updates: int
    outstanding_security: int
    compliant: int
    compliance_percent: float | None
    by_severity: list[SeverityCompliance]


@dataclass(frozen=True)
class Figures:
    """Everything a report shows."""

    scope: str
    generated_at: datetime
    period_start: datetime
    counts: FleetCounts
    time_to_patch: list[TimeToPatch]
    trend: list[TrendPoint] = field(default_factory=list)
    overdue_machines: list[OverdueMachine] = field(default_factory=list)
    overdue_packages: list[OverduePackage] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["generated_at"] = self.generated_at.isoformat()
        data["period_start"] = self.period_start.isoformat()
        return data


def fleet_counts(*, group: AgentGroup | None = None, now: datetime | None = None) -> FleetCounts:
    """Machines, online, outstanding updates and compliance per severity, in two aggregate queries.

    1. the agents in scope: how many, how many online (Agent.objects.online(), the one rule);
    2. their outstanding updates: how many, how many security ones, and per severity how many distinct
       machines hold an overdue security update (and of any severity).
    """
    now = now or timezone.now()
    deadlines = patch_deadlines()
    agents = scope_agents(group)
    machines = agents.aggregate(
        total=Count("pk"), online=Count("pk", filter=Q(pk__in=Agent.objects.online(now).values("pk"))))
    security = Q(is_security=True)
    updates = PackageUpdate.objects.outstanding().filter(agent__in=agents.values("pk")).aggregate(
        total=Count("pk"),
        security=Count("pk", filter=security),
        overdue_any=Count("agent", distinct=True, filter=security & any_overdue_q(now, deadlines)),
        **{f"overdue_{severity}": Count("agent", distinct=True, filter=security & overdue_q(severity, now, deadlines))
           for severity in SEVERITIES},
    )
    total = machines["total"]
    by_severity = [
        SeverityCompliance(severity=severity, deadline_days=deadlines[severity].days,
                           compliant=total - updates[f"overdue_{severity}"], machines=total,
                           percent=percent(total - updates[f"overdue_{severity}"], total))
        for severity in SEVERITIES
    ]
    compliant = total - updates["overdue_any"]
    return FleetCounts(machines=total, online=machines["online"], outstanding_updates=updates["total"],
                       outstanding_security=updates["security"], compliant=compliant,
                       compliance_percent=percent(compliant, total), by_severity=by_severity)


def time_to_patch(*, group: AgentGroup | None, since: datetime, now: datetime) -> list[TimeToPatch]:
    """Per severity, first seen → resolved of the security updates resolved in [since, now] (one query;
    the rows are the period's patched updates, reduced here because a median is not portable SQL)."""
    rows = (PackageUpdate.objects.filter(agent__in=scope_agents(group).values("pk"), is_security=True,
                                         status__in=RESOLVED_STATUSES, status_changed_at__gte=since,
                                         status_changed_at__lte=now)
            .values_list("severity", "first_seen_at", "status_changed_at"))
    durations: dict[str, list[float]] = {severity: [] for severity in SEVERITIES}
    for severity, first_seen_at, resolved_at in rows:
        durations.setdefault(severity, []).append(_days(resolved_at - first_seen_at))
    return [
        TimeToPatch(severity=severity, patched=len(days),
                    median_days=round(statistics.median(days), 2) if days else None,
                    mean_days=round(statistics.fmean(days), 2) if days else None,
                    longest_days=max(days) if days else None)
        for severity, days in durations.items()
    ]


def overdue_machines(*, group: AgentGroup | None, now: datetime) -> list[OverdueMachine]:
    """Each machine with overdue security updates, per severity, the longest-waiting first (one query)."""
    deadlines = patch_deadlines()
    rows = (PackageUpdate.objects.outstanding()
            .filter(any_overdue_q(now, deadlines), agent__in=scope_agents(group).values("pk"), is_security=True)
            .order_by().values("agent_id", "agent__hostname", "severity")
            .annotate(updates=Count("pk"), oldest=Min("first_seen_at")).order_by("oldest", "agent__hostname"))
    return [OverdueMachine(hostname=row["agent__hostname"], severity=row["severity"], updates=row["updates"],
                           oldest_days=_days(now - row["oldest"])) for row in rows]


def overdue_packages(*, group: AgentGroup | None, now: datetime) -> list[OverduePackage]:
    """Each overdue security package, with how many machines wait for it, the most widespread first (one query)."""
    deadlines = patch_deadlines()
    rows = (PackageUpdate.objects.outstanding()
            .filter(any_overdue_q(now, deadlines), agent__in=scope_agents(group).values("pk"), is_security=True)
            .order_by().values("name", "package_type", "severity")
            .annotate(machines=Count("agent", distinct=True), oldest=Min("first_seen_at"))
            .order_by("-machines", "oldest", "name"))
    return [OverduePackage(name=row["name"], package_type=row["package_type"], severity=row["severity"],
                           machines=row["machines"], oldest_days=_days(now - row["oldest"])) for row in rows]


def trend(*, group: AgentGroup | None, since: datetime, now: datetime) -> list[TrendPoint]:
    """The scope's daily snapshots within the period, oldest first (one query)."""
    snapshots = FleetSnapshot.objects.filter(group=group) if group is not None else FleetSnapshot.objects.fleet()
    return [TrendPoint(day=snapshot.day.isoformat(), compliance_percent=snapshot.compliance_percent,
                       outstanding_security=snapshot.outstanding_security, online=snapshot.online,
                       machines=snapshot.machines)
            for snapshot in snapshots.between(timezone.localdate(since), timezone.localdate(now))]


def report_figures(*, group: AgentGroup | None = None, period_days: int, now: datetime | None = None) -> Figures:
    """All of a report's figures in six queries (two for the counts, one for each list and the trend)."""
    now = now or timezone.now()
    since = now - timedelta(days=period_days)
    return Figures(
        scope=group.name if group is not None else WHOLE_FLEET,
        generated_at=now,
        period_start=since,
        counts=fleet_counts(group=group, now=now),
        time_to_patch=time_to_patch(group=group, since=since, now=now),
        trend=trend(group=group, since=since, now=now),
        overdue_machines=overdue_machines(group=group, now=now),
        overdue_packages=overdue_packages(group=group, now=now),
    )
