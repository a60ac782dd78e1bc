"""``{% fleet_trends as trends %}``: the dashboard's trend charts (templates/admin/index.html), 30 days or,
with ``?trend=90``, 90. A fleet-wide user sees the whole fleet's; a user whose roles reach some groups sees
the first of those groups' (redflag.access), never numbers about machines outside their scope."""

from django import template

from agents_app.models import AgentGroup
from redflag.access import group_ids
from reports_app.trends import TREND_RANGES, dashboard_trends

register = template.Library()


@register.simple_tag(takes_context=True)
def fleet_trends(context):
    request = context.get("request")
    if request is None:
        return None
    asked = request.GET.get("trend", "")
    days = int(asked) if asked in {str(option) for option in TREND_RANGES} else TREND_RANGES[0]
    allowed = group_ids(request.user)
    if allowed is None:
        return dashboard_trends(days=days)
    group = AgentGroup.objects.filter(pk__in=allowed).order_by("name").first()
    return dashboard_trends(days=days, group=group) if group is not None else None
