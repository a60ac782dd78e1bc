"""``{% fleet_summary as fleet %}``: the fleet dashboard's numbers on the admin index
(templates/admin/index.html), so the admin site itself needs no app."""

from django import template

from agents_app.admin.dashboard import fleet_summary as summary

register = template.Library()


@register.simple_tag(takes_context=True)
def fleet_summary(context):
    # The figures of the agents the signed-in user may see (redflag.access).
    return summary(user=context["request"].user)
