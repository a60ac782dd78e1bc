"""Server settings: one page, saved through agents_app.services.server_settings."""

from django.contrib import admin
from django.db import models
from django.http import HttpResponseRedirect
from django.urls import reverse

from agents_app.admin.common import actor_of
from agents_app.services.server_settings import server_settings_update
from redflag.models import ServerSettings


@admin.register(ServerSettings)
class ServerSettingsAdmin(admin.ModelAdmin):
    """One page: the list view goes straight to the single row."""

    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    fieldsets = (
        ("Agents", {"fields": ("public_url", "allow_insecure_public_url", "default_poll_interval_seconds",
                               "heartbeat_duration_minutes", "offline_threshold_seconds", "max_pending_commands")}),
        ("Registration tokens", {"fields": ("registration_token_max_hours",)}),
        ("Rate limits", {"fields": ("rate_registration", "rate_checkin", "rate_reports", "rate_admin",
                                    "rate_agent_events")}),
        ("Events", {"fields": ("event_retention_days",)}),
    )

    def changelist_view(self, request, extra_context=None):
        ServerSettings.current()
        return HttpResponseRedirect(reverse("admin:redflag_serversettings_change", args=[1]))

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def save_model(self, request, obj, form, change):
        server_settings_update(changes={field: form.cleaned_data[field] for field in form.changed_data},
                               actor=actor_of(request))
