"""Subsystems across the fleet."""

from __future__ import annotations

from django.contrib import admin, messages

from agents_app.admin.common import (
    actor_of,
)
from agents_app.models import AgentSubsystem

# --- subsystems across the fleet --------------------------------------------------------------
from agents_app.services.subsystems import subsystems_configure
from redflag.admin_scoping import ScopedAdminMixin


@admin.register(AgentSubsystem)
class AgentSubsystemAdmin(ScopedAdminMixin, admin.ModelAdmin):
    """Schedules across the fleet, changed in bulk through subsystems_configure (config_version + event)."""

    list_display = ("agent", "name", "enabled", "auto_run", "interval_minutes", "next_run_at", "last_run_at",
                    "last_status")
    list_filter = ("name", "enabled", "auto_run", "last_status")
    search_fields = ("agent__hostname",)
    list_select_related = ("agent",)
    readonly_fields = ("agent", "name", "enabled", "auto_run", "interval_minutes", "next_run_at", "last_run_at",
                       "last_status", "last_error")
    actions = ("enable", "disable", "scan_on_schedule", "scan_on_demand", "every_6_hours", "daily")

    def has_add_permission(self, request) -> bool:
        return False  # created at registration from what the agent can do

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def _configure(self, request, queryset, changes: dict, what: str) -> None:
        changed = subsystems_configure(subsystems=queryset, changes=changes, actor=actor_of(request))
        self.message_user(request, f"{changed} subsystem(s) {what}; their agents fetch the new config at check-in.",
                          messages.SUCCESS)

    @admin.action(description="Enable", permissions=["change"])
    def enable(self, request, queryset):
        self._configure(request, queryset, {"enabled": True}, "enabled")

    @admin.action(description="Disable", permissions=["change"])
    def disable(self, request, queryset):
        self._configure(request, queryset, {"enabled": False}, "disabled")

    @admin.action(description="Scan on the schedule", permissions=["change"])
    def scan_on_schedule(self, request, queryset):
        self._configure(request, queryset, {"auto_run": True}, "set to scan on the schedule")

    @admin.action(description="Scan only on demand", permissions=["change"])
    def scan_on_demand(self, request, queryset):
        self._configure(request, queryset, {"auto_run": False}, "set to scan only on demand")

    @admin.action(description="Every 6 hours", permissions=["change"])
    def every_6_hours(self, request, queryset):
        self._configure(request, queryset, {"interval_minutes": 360}, "set to every 6 hours")

    @admin.action(description="Daily", permissions=["change"])
    def daily(self, request, queryset):
        self._configure(request, queryset, {"interval_minutes": 1440}, "set to daily")
