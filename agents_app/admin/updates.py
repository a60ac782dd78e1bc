"""Updates across the fleet."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html

from agents_app.admin.common import (
    RED,
    ReadOnlyDetailMixin,
    actor_of,
    badge,
    neutral,
    severity_badge,
    when,
)
from agents_app.choices import UpdateStatus
from agents_app.models import Agent, PackageUpdate
from agents_app.services.commands import CommandAlreadyOpen
from agents_app.services.package_updates import (
    updates_approve,
    updates_confirm_dependencies,
    updates_ignore,
    updates_install,
    updates_unignore,
)
from redflag.errors import ApiError

# --- updates across the fleet ---------------------------------------------------



class UpdateStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return (("outstanding", "Outstanding (to act on)"), *UpdateStatus.choices)

    def queryset(self, request, queryset):
        if self.value() == "outstanding":
            return queryset.outstanding()
        if self.value() in UpdateStatus.values:
            return queryset.filter(status=self.value())
        return queryset


@admin.register(PackageUpdate)
class PackageUpdateAdmin(ReadOnlyDetailMixin, admin.ModelAdmin):
    """'Updates across the fleet': statuses change only through the actions (the workflow's write paths)."""

    # Narrow enough for 1366 px with the advisories' risk columns added (tests/browser/test_layout_browser.py):
    # the package type rides under the name, the versions on two lines, times as "2 h ago".
    list_display = ("package", "agent", "versions", "severity_label", "security", "status", "changed")
    list_filter = (UpdateStatusFilter, "package_type", "severity", "is_security", "agent")
    search_fields = ("name", "agent__hostname")
    list_select_related = ("agent",)
    actions = ("approve", "ignore", "unignore", "install", "confirm_dependencies")
    fields = ("agent", "package_type", "name", "current_version", "available_version", "severity", "is_security",
              "repository", "size_bytes", "cve_ids", "kb_ids", "status", "dependencies", "operation_command",
              "first_seen_at", "last_seen_at", "status_changed_at", "metadata")
    readonly_fields = fields

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Updates across the fleet", **(extra_context or {})})

    @admin.display(description="package", ordering="name")
    def package(self, update: PackageUpdate):
        return format_html('{}<br><span class="rf-muted">{}</span>', update.name, update.get_package_type_display())

    @admin.display(description="version")
    def versions(self, update: PackageUpdate):
        return format_html('<span class="rf-versions rf-wrap">{}<span class="rf-to">→ {}</span></span>',
                           update.current_version or "?", update.available_version or "?")

    @admin.display(description="severity", ordering="severity")
    def severity_label(self, update: PackageUpdate):
        return severity_badge(update)

    @admin.display(description="security", ordering="-is_security")
    def security(self, update: PackageUpdate):
        """A red mark for a security fix; nothing alarming (no red ✗) for an ordinary update."""
        return badge("security", RED) if update.is_security else neutral()

    @admin.display(description="changed", ordering="status_changed_at")
    def changed(self, update: PackageUpdate):
        return when(update.status_changed_at)

    def _report(self, request, verb: str, changed: int, selected: int) -> None:
        level = messages.SUCCESS if changed else messages.WARNING
        unchanged = selected - changed
        note = f"; {unchanged} were not in a state that allows it" if unchanged else ""
        self.message_user(request, f"{verb} {changed} update(s){note}.", level)

    @admin.action(description="Approve", permissions=["change"])
    def approve(self, request, queryset):
        self._report(request, "Approved", updates_approve(updates=queryset, actor=actor_of(request)), queryset.count())

    @admin.action(description="Ignore", permissions=["change"])
    def ignore(self, request, queryset):
        self._report(request, "Ignored", updates_ignore(updates=queryset, actor=actor_of(request)), queryset.count())

    @admin.action(description="Un-ignore", permissions=["change"])
    def unignore(self, request, queryset):
        self._report(request, "Un-ignored", updates_unignore(updates=queryset, actor=actor_of(request)),
                     queryset.count())

    @admin.action(description="Install (dry-run first)", permissions=["change"])
    def install(self, request, queryset):
        """One call per agent, so one agent's open dry-run does not hold back the others."""
        started, conflicts, refused = [], [], []
        for agent in Agent.objects.filter(pk__in=queryset.values("agent_id")).order_by("hostname"):
            try:
                started += updates_install(updates=queryset.filter(agent=agent), actor=actor_of(request),
                                           created_by=request.user)
            except CommandAlreadyOpen:
                conflicts.append(agent.hostname)
            except ApiError as exc:  # e.g. a stored name that is no package name: never signed
                refused.append(f"{agent.hostname}: {exc.detail}")
        if started:
            self.message_user(request, f"Started {len(started)} dry-run(s); the install follows when the agent "
                                       f"reports no new dependencies.", messages.SUCCESS)
        elif not conflicts and not refused:
            self.message_user(request, "None of the selected updates can be installed in their state.",
                              messages.WARNING)
        if conflicts:
            self.message_user(request, f"A dry-run of the same kind is already open for: {', '.join(conflicts)}.",
                              messages.ERROR)
        for message in refused:
            self.message_user(request, f"Not started: {message}", messages.ERROR)

    @admin.action(description="Confirm dependencies and install", permissions=["change"])
    def confirm_dependencies(self, request, queryset):
        try:
            commands = updates_confirm_dependencies(updates=queryset, actor=actor_of(request),
                                                    created_by=request.user)
        except ApiError as exc:  # the same kind already open, or a dependency that is no package name
            self.message_user(request, f"Not confirmed: {exc.detail}", messages.ERROR)
            return
        if commands:
            self.message_user(request, f"Started {len(commands)} install(s) with their dependencies.",
                              messages.SUCCESS)
        else:
            self.message_user(request, "None of the selected updates is waiting for a dependency confirmation.",
                              messages.WARNING)
