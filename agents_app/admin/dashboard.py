"""The fleet dashboard's numbers (redflag.admin_site renders them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from agents_app.admin.common import (
    BLUE,
    FAILED_COMMAND_STATUSES,
    GREEN,
    GREY,
    RECENT_FAILURE_WINDOW,
    RED,
    SEVERITY_COLOURS,
    changelist_url,
)
from agents_app.choices import OPEN_COMMAND_STATUSES, PackageType, UpdateSeverity
from agents_app.models import Agent, BulkOperation, Command, PackageUpdate
from redflag.access import scope_queryset
from redflag.models import ServerSettings

# --- the dashboard's numbers (redflag.admin_site renders them) -------------------

def fleet_summary(now: datetime | None = None, user=None) -> dict[str, Any]:
    """Everything the admin index shows, in three aggregate queries whatever the fleet size.

    Counted over the agents ``user`` may see (redflag.access), the same rows their lists show; every
    agent when no user is given.

    1. agents: one aggregate (online reuses Agent.objects.online() as a subquery);
    2. outstanding updates grouped by severity, package type and security flag;
    3. commands: open ones and failures within the last 24 h.
    """
    now = now or timezone.now()
    server = ServerSettings.current()

    def scoped(queryset, path: str):
        # Each figure through the grants that let the user read its list (as the list itself does).
        view = f"{queryset.model._meta.app_label}.view_{queryset.model._meta.model_name}"
        return queryset if user is None else scope_queryset(queryset, user, path, view)

    agents = scoped(Agent.objects.all(), "").aggregate(
        total=Count("pk"),
        online=Count("pk", filter=Q(pk__in=Agent.objects.online(now).values("pk"))),
        heartbeat=Count("pk", filter=Q(heartbeat_until__gt=now)),
        reboot=Count("pk", filter=Q(reboot_required=True)),
        revoked=Count("pk", filter=Q(revoked_at__isnull=False)),
    )
    agents["offline"] = agents["total"] - agents["online"]

    by_severity = dict.fromkeys(UpdateSeverity.values, 0)
    by_type = dict.fromkeys(PackageType.values, 0)
    security = total_updates = 0
    grouped = (scoped(PackageUpdate.objects.outstanding(), "agent").order_by()
               .values("severity", "package_type", "is_security").annotate(n=Count("pk")))
    for row in grouped:
        by_severity[row["severity"]] = by_severity.get(row["severity"], 0) + row["n"]
        by_type[row["package_type"]] = by_type.get(row["package_type"], 0) + row["n"]
        security += row["n"] if row["is_security"] else 0
        total_updates += row["n"]

    commands = scoped(Command.objects.all(), "agent").filter(
        Q(status__in=OPEN_COMMAND_STATUSES)
        | Q(status__in=FAILED_COMMAND_STATUSES, completed_at__gte=now - RECENT_FAILURE_WINDOW)
    ).aggregate(
        open=Count("pk", filter=Q(status__in=OPEN_COMMAND_STATUSES)),
        failed_24h=Count("pk", filter=Q(status__in=FAILED_COMMAND_STATUSES)),
    )

    def bars(counts: dict[str, int], labels: dict[str, str], colours: dict[str, str], lookup: str) -> list[dict]:
        """One chart row per value: its share of the largest bar and its filtered list."""
        top = max(counts.values(), default=0) or 1
        return [{"label": labels.get(value, value), "count": count, "percent": round(100 * count / top, 1),
                 "colour": colours.get(value, BLUE),
                 "url": changelist_url(PackageUpdate, status="outstanding", **{lookup: value})}
                for value, count in counts.items()]

    agent_total = max(agents["total"], 1)
    return {
        "agents": agents,
        "agents_online_percent": round(100 * agents["online"] / agent_total, 1),
        "agents_offline_percent": round(100 * agents["offline"] / agent_total, 1),
        "updates_total": total_updates,
        "security": security,
        "severity_bars": bars(by_severity, dict(UpdateSeverity.choices), SEVERITY_COLOURS, "severity__exact"),
        # Only the package managers this fleet has updates from: eight bars of zero say nothing.
        "type_bars": bars({value: count for value, count in by_type.items() if count}, dict(PackageType.choices), {},
                          "package_type__exact"),
        "commands": commands,
        "links": {
            "agents": changelist_url(Agent),
            "online": changelist_url(Agent, status="online"),
            "offline": changelist_url(Agent, status="offline"),
            "heartbeat": changelist_url(Agent, status="heartbeat"),
            "revoked": changelist_url(Agent, status="revoked"),
            "reboot": changelist_url(Agent, reboot_required__exact=1),
            "updates": changelist_url(PackageUpdate, status="outstanding"),
            "security": changelist_url(PackageUpdate, status="outstanding", is_security__exact=1),
            "open_commands": changelist_url(Command, outcome="open"),
            "failed_commands": changelist_url(Command, outcome="failed_24h"),
            "bulk_operations": changelist_url(BulkOperation),
        },
        "colours": {"online": GREEN, "offline": GREY, "security": RED},
        "insecure_public_url": server.public_url if server.insecure_public_url else "",
    }
