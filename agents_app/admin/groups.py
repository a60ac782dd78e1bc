"""Agent groups: their rule and hand-picked members, who is in them now, and fleet actions on them.

Saves and deletes go through agents_app.services.groups (the ``group_changed`` event); the actions start
one bulk operation for the agents of the selected groups, resolved when the action starts.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count, Exists, OuterRef, Q
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from agents_app.admin.common import actor_of, admin_link, changelist_url, neutral, table, when
from agents_app.models import Agent, AgentGroup, BulkOperation
from agents_app.services.groups import group_delete, group_save, groups_bulk_operation_start
from redflag.access import scope_queryset
from redflag.admin_scoping import ScopedAdminMixin

# Agents listed on a group's page; the count and the link to the filtered agent list cover the rest.
AGENTS_ON_GROUP_PAGE = 50
# The announced reboot of the group action: time for logged-in users to save their work.
ANNOUNCED_REBOOT = {"delay_minutes": 10,
                    "message": "RedFlag: this machine reboots in 10 minutes for updates. Please save your work."}


# --- the agent list's filters and the agent page's groups ---------------------------------


class AgentGroupFilter(admin.SimpleListFilter):
    """Agents of one group, by the group's rule and members (AgentGroup.agents_q)."""

    title = "group"
    parameter_name = "group"

    def lookups(self, request, model_admin):
        return [(str(pk), name) for pk, name in AgentGroup.objects.values_list("pk", "name")]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        group = AgentGroup.objects.filter(pk=self.value()).first() if self.value().isdigit() else None
        return queryset.filter(group.agents_q()) if group else queryset.none()


class AgentTagFilter(admin.SimpleListFilter):
    """Agents with a tag, set by an admin or reported by the agent (as a group's tag rule reads them)."""

    title = "tag"
    parameter_name = "tag"

    def lookups(self, request, model_admin):
        tags = set()
        agents = scope_queryset(Agent.objects.all(), request.user, "", "agents_app.view_agent")  # only those seen
        for admin_tags, reported in agents.values_list("tags", "reported_tags").order_by():
            tags.update(tag for tag in (admin_tags or []) + (reported or []) if isinstance(tag, str))
        return [(tag, tag) for tag in sorted(tags, key=str.lower)]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return queryset.filter(Q(tags__has_tag=self.value()) | Q(reported_tags__has_tag=self.value()))


def groups_of(agent: Agent) -> list[AgentGroup]:
    """The groups ``agent`` is in, in one query (one EXISTS per group, each the group's own filter)."""
    groups = list(AgentGroup.objects.all())
    if not groups:
        return []
    flags = Agent.objects.filter(pk=agent.pk).values(**{
        f"in_{group.pk}": Exists(Agent.objects.filter(group.agents_q(), pk=OuterRef("pk"))) for group in groups})
    row = flags.first() or {}
    return [group for group in groups if row.get(f"in_{group.pk}")]


def groups_links(agent: Agent):
    groups = groups_of(agent)
    if not groups:
        return neutral("in no group")
    return format_html_join(", ", "{}", ((admin_link(group, group.name),) for group in groups))


@admin.register(AgentGroup)
class AgentGroupAdmin(ScopedAdminMixin, admin.ModelAdmin):
    # A scoped user sees the groups their roles are granted on (redflag.admin_scoping).
    scope_agent_path, scope_group_path = None, ""
    list_display = ("name", "rule", "member_count", "agent_count", "created")
    search_fields = ("name", "description")
    autocomplete_fields = ("members",)
    actions = ("scan_now", "heartbeat_30", "approve_security_updates", "approve_all_updates",
               "install_approved_updates", "reboot", "reboot_announced")
    fieldsets = (
        (None, {"fields": ("name", "description")}),
        ("Rule", {"fields": ("rule_os_family", "rule_tag", "rule_hostname_pattern", "rule_package_type"),
                  "description": "An agent matches when every part that is set holds. Leave all empty for a "
                                 "group of hand-picked members only."}),
        ("Members", {"fields": ("members",)}),
        ("In the group now", {"fields": ("matching_agents",)}),
    )
    readonly_fields = ("matching_agents",)

    # -- columns

    @admin.display(description="rule")
    def rule(self, group: AgentGroup):
        parts = [f"{AgentGroup._meta.get_field(field).verbose_name}: {getattr(group, field)}"
                 for field in ("rule_os_family", "rule_tag", "rule_hostname_pattern", "rule_package_type")
                 if getattr(group, field)]
        return "; ".join(parts) if parts else neutral("members only")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(member_total=Count("members"))

    @admin.display(description="by hand", ordering="member_total")
    def member_count(self, group: AgentGroup) -> int:
        return group.member_total

    @admin.display(description="agents now")
    def agent_count(self, group: AgentGroup):
        """One count per group on the page: each group's rule is its own filter (groups are few, agents many)."""
        return format_html('<a href="{}">{}</a>', changelist_url(Agent, group=group.pk), group.agents().count())

    @admin.display(description="created", ordering="created_at")
    def created(self, group: AgentGroup):
        return when(group.created_at)

    @admin.display(description="matching agents")
    def matching_agents(self, group: AgentGroup):
        """Who the rule and the members select as saved (a change shows after saving)."""
        if group.pk is None:
            return "Save the group to see its agents."
        agents = group.agents()
        total = agents.count()
        rows = [(admin_link(agent, agent.hostname), agent.os_family or "—", ", ".join(agent.tags or []),
                 ", ".join(agent.reported_tags or []), when(agent.last_seen_at))
                for agent in agents.order_by("hostname")[:AGENTS_ON_GROUP_PAGE]]
        summary = format_html('<p><strong>{}</strong> agent(s) in this group. <a href="{}">Open them in the agent '
                              'list</a></p>', total, changelist_url(Agent, group=group.pk))
        return format_html("{}{}", summary, table(("Agent", "OS", "Admin tags", "Reported tags", "Last seen"),
                                                   rows, "No agent matches yet."))

    # -- writes through the one write path

    def save_model(self, request, obj, form, change):
        group_save(group=obj, members=form.cleaned_data.get("members", []), actor=actor_of(request),
                   changed=form.changed_data)

    def save_related(self, request, form, formsets, change):
        """group_save set the members with the group, in its transaction and event."""

    def delete_model(self, request, obj):
        group_delete(group=obj, actor=actor_of(request))

    def delete_queryset(self, request, queryset):
        for group in queryset:
            group_delete(group=group, actor=actor_of(request))

    # -- fleet actions on the agents of the selected groups

    def _start(self, request, queryset, kind: str, params: dict | None = None, label: str = ""):
        groups = list(queryset)
        label = label or BulkOperation.Kind(kind).label
        operation = groups_bulk_operation_start(kind=kind, groups=groups, params=params, user=request.user)
        names = ", ".join(group.name for group in groups)
        if operation is None:
            self.message_user(request, f"{label}: the group(s) {names} hold no agent that is not revoked.",
                              messages.WARNING)
            return None
        self.message_user(request, f"{label} started for {operation.requested} agent(s) of {names}.",
                          messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:agents_app_bulkoperation_change", args=[operation.pk]))

    @admin.action(description="Scan the agents of the selected groups", permissions=["operate"])
    def scan_now(self, request, queryset):
        return self._start(request, queryset, BulkOperation.Kind.SCAN)

    @admin.action(description="Heartbeat for 30 minutes on the agents of the selected groups",
                  permissions=["operate"])
    def heartbeat_30(self, request, queryset):
        return self._start(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 30}, "Heartbeat (30 min)")

    @admin.action(description="Approve the security updates of the selected groups' agents", permissions=["approve"])
    def approve_security_updates(self, request, queryset):
        return self._start(request, queryset, BulkOperation.Kind.APPROVE, {"security_only": True},
                           "Approve security updates")

    @admin.action(description="Approve all updates of the selected groups' agents", permissions=["approve"])
    def approve_all_updates(self, request, queryset):
        return self._start(request, queryset, BulkOperation.Kind.APPROVE, {"security_only": False},
                           "Approve all updates")

    @admin.action(description="Install the approved updates of the selected groups' agents (dry-run first)",
                  permissions=["approve"])
    def install_approved_updates(self, request, queryset):
        return self._start(request, queryset, BulkOperation.Kind.INSTALL, {"approved_only": True},
                           "Install approved updates")

    @admin.action(description="Reboot the agents of the selected groups", permissions=["approve"])
    def reboot(self, request, queryset):
        return self._start(request, queryset, BulkOperation.Kind.REBOOT)

    @admin.action(description="Reboot the agents of the selected groups in 10 minutes, announced to their users",
                  permissions=["approve"])
    def reboot_announced(self, request, queryset):
        return self._start(request, queryset, BulkOperation.Kind.REBOOT, ANNOUNCED_REBOOT, "Announced reboot")
