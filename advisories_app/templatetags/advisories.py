"""``{% advisory_summary as risk %}``: the dashboard's exposure figures (templates/admin/index.html)."""

from django import template
from django.urls import reverse

from advisories_app.risk import fleet_risk

register = template.Library()


@register.simple_tag
def advisory_summary():
    exposures = reverse("admin:advisories_app_exposure_changelist")
    return {**fleet_risk(), "links": {"exposed": exposures,
                                      "exploited": f"{exposures}?vulnerability__known_exploited__exact=1"}}
