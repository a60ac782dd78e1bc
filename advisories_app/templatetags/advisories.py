"""``{% advisory_summary as risk %}``: the dashboard's exposure figures (templates/admin/index.html)."""

from django import template
from django.urls import reverse

from advisories_app.risk import fleet_risk

register = template.Library()


@register.simple_tag(takes_context=True)
def advisory_summary(context):
    exposures = reverse("admin:advisories_app_exposure_changelist")
    return {**fleet_risk(context["request"].user), "links": {"exposed": exposures,
                                      "exploited": f"{exposures}?vulnerability__known_exploited__exact=1"}}
