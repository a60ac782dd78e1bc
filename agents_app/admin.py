from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from agents_app.models import Agent
from agents_app.services import agent_allow_rebind, agent_revoke


class OnlineFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "online"

    def lookups(self, request, model_admin):
        return (("yes", "Online"), ("no", "Offline"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.online()
        if self.value() == "no":
            return queryset.offline()
        return queryset


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("hostname", "status_badge", "last_seen", "os_name", "os_version", "agent_version", "registered_at")
    list_filter = (OnlineFilter, "os_family", "agent_version")
    search_fields = ("hostname", "os_name", "=id")
    actions = ("allow_rebind", "revoke_credentials")
    readonly_fields = (
        "id", "hostname", "os_family", "os_name", "os_version", "kernel", "arch", "agent_version",
        "machine_id_hash", "registered_at", "last_seen_at", "heartbeat_until", "reboot_required",
        "reboot_reason", "last_boot_at", "config_version", "metrics", "rebind_allowed_until", "revoked_at",
    )
    fields = (*readonly_fields[:8], "poll_interval_seconds", "tags", *readonly_fields[8:])

    def has_add_permission(self, request) -> bool:
        return False  # agents enroll themselves with a registration token

    @admin.display(description="status")
    def status_badge(self, agent: Agent):
        if agent.revoked_at:
            colour, label = "#c62828", "Revoked"
        elif agent.is_online:
            colour, label = "#2e7d32", "Online"
        else:
            colour, label = "#757575", "Offline"
        return format_html(
            '<span style="color:#fff;background:{};padding:2px 8px;border-radius:8px">{}</span>', colour, label
        )

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, agent: Agent) -> str:
        if agent.last_seen_at is None:
            return "never"
        return f"{timesince(agent.last_seen_at, timezone.now()).split(',')[0]} ago"

    @admin.action(description="Allow a machine rebind (after a reinstall)", permissions=["change"])
    def allow_rebind(self, request, queryset):
        for agent in queryset:
            agent_allow_rebind(agent=agent, actor=request.user.get_username())
        self.message_user(
            request, f"{queryset.count()} agent(s) may bind to a new machine id on their next request (24 h).",
            messages.SUCCESS,
        )

    @admin.action(description="Revoke credentials", permissions=["change"])
    def revoke_credentials(self, request, queryset):
        for agent in queryset:
            agent_revoke(agent=agent, actor=request.user.get_username())
        self.message_user(request, f"Revoked {queryset.count()} agent(s).", messages.SUCCESS)
