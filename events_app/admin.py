import json

from django.contrib import admin
from django.utils.html import format_html

from events_app.models import SystemEvent


@admin.register(SystemEvent)
class SystemEventAdmin(admin.ModelAdmin):
    """Read-only history: events are append-only, for admins and auditors alike."""

    list_display = ("created_at", "event_type", "event_subtype", "severity", "component", "hostname", "actor", "message")
    list_filter = ("event_type", "event_subtype", "severity", "component", "created_at")
    search_fields = ("message", "hostname")
    date_hierarchy = "created_at"
    list_select_related = False
    show_full_result_count = False  # a COUNT(*) over millions of rows on every page is not free
    fields = (
        "id",
        "created_at",
        "event_type",
        "event_subtype",
        "severity",
        "component",
        "agent",
        "hostname",
        "actor",
        "message",
        "metadata_pretty",
    )
    readonly_fields = fields

    @admin.display(description="metadata")
    def metadata_pretty(self, event: SystemEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.metadata, indent=2, sort_keys=True))

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
