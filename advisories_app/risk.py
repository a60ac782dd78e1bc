"""The risk figures of pending updates, machines and the fleet: one definition for admin, API and exports."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Count, F, Q
from django.db.models.functions import Coalesce

from advisories_app.models import Exposure
from redflag.access import scope_queryset

RISK_FIELDS = ("cve_count", "max_cvss", "max_epss", "known_exploited")
# Highest risk first: known exploited, then the highest CVSS; updates that fix nothing known last.
HIGHEST_RISK_FIRST = (F("risk__known_exploited").desc(nulls_last=True), F("risk__max_cvss").desc(nulls_last=True))


def with_update_risk(updates: models.QuerySet) -> models.QuerySet:
    """Annotate PackageUpdates with what their available version fixes for their machine's release.

    cve_count, max_cvss, max_epss and known_exploited over the CVEs the update fixes
    (ExposureStatus.FIXED_BY_UPDATE), read from UpdateRisk (one join; sorting the fleet by risk
    reads its index). An update that fixes nothing known has 0, None, None, False.
    """
    return updates.annotate(
        cve_count=Coalesce(F("risk__cve_count"), 0),
        max_cvss=F("risk__max_cvss"),
        max_epss=F("risk__max_epss"),
        known_exploited=Coalesce(F("risk__known_exploited"), False),
    )


def update_risk(update) -> dict[str, Any]:
    """The RISK_FIELDS of one update (annotated by with_update_risk, or read here when it was not)."""
    if all(hasattr(update, field) for field in RISK_FIELDS):
        return {field: getattr(update, field) for field in RISK_FIELDS}
    annotated = with_update_risk(type(update).objects.filter(pk=update.pk)).values(*RISK_FIELDS).first() or {}
    return {field: annotated.get(field) for field in RISK_FIELDS}


def fleet_risk(user=None) -> dict[str, int]:
    """The dashboard's figures in one aggregate query: exposed machines, machines exposed to a known-exploited
    CVE, and how many such CVEs; over the agents ``user`` may see (redflag.access), every agent without one."""
    exploited = Q(vulnerability__known_exploited=True)
    exposures = Exposure.objects.all()
    if user is not None:
        exposures = scope_queryset(exposures, user, "agent", "advisories_app.view_exposure")
    return exposures.aggregate(
        exposed_machines=Count("agent", distinct=True),
        exploited_machines=Count("agent", distinct=True, filter=exploited),
        exploited_cves=Count("vulnerability", distinct=True, filter=exploited),
    )
