"""Reusable reads of CVEs and exposures."""

from __future__ import annotations

from django.db import models
from django.db.models import Count

from advisories_app.choices import ExposureStatus


class VulnerabilityQuerySet(models.QuerySet):
    def with_exposure_counts(self, agents=None):
        """exposed_machines (any status), fixable_machines (a pending update fixes it), no_fix_machines;
        counting only ``agents`` (a queryset of Agent: the reader's scope) when given."""
        within = models.Q() if agents is None else models.Q(exposures__agent__in=agents.values("pk"))
        return self.annotate(
            exposed_machines=Count("exposures__agent", distinct=True, filter=within or None),
            fixable_machines=Count("exposures__agent", distinct=True,
                                   filter=within & models.Q(exposures__status=ExposureStatus.FIXED_BY_UPDATE)),
            no_fix_machines=Count("exposures__agent", distinct=True,
                                  filter=within & models.Q(exposures__status=ExposureStatus.NO_FIX_YET)),
        )


class ExposureQuerySet(models.QuerySet):
    def fixed_by_update(self):
        return self.filter(status=ExposureStatus.FIXED_BY_UPDATE)

    def no_fix_yet(self):
        return self.filter(status=ExposureStatus.NO_FIX_YET)
