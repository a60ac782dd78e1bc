"""Updates across the fleet."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme

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
from redflag.admin_scoping import ScopedAdminMixin
from redflag.errors import ApiError

# --- updates across the fleet ---------------------------------------------------

# When an approved update will be installed. The policy engine (policies_app) sits above this app, which
# may not import it, so it plugs its read in at start-up: next_windows_source_set(source), where
# source(agent_ids, now) -> {agent_id: (policy, occurrence)} and occurrence.start is the window's opening
# (policies_app.selection.next_windows_for_agents). Unset: no policy engine, approved updates wait for
# an admin.
NextWindowsSource = Callable[[list, datetime], dict]
_next_windows_source: NextWindowsSource | None = None


def next_windows_source_set(source: NextWindowsSource | None) -> None:
    global _next_windows_source
    _next_windows_source = source


def next_windows(agent_ids: Iterable, now: datetime) -> dict:
    """{agent_id: (policy, occurrence)} of the machines a policy will patch next; {} without a policy engine."""
    agent_ids = list(agent_ids)
    if _next_windows_source is None or not agent_ids:
        return {}
    return _next_windows_source(agent_ids, now)


def what_happens_next(update: PackageUpdate, window: tuple[Any, Any] | None) -> str:
    """What the workflow does with this update next, in words ("" when nothing is going to happen)."""
    if update.status == UpdateStatus.APPROVED:
        if update.operation_command_id:
            return "Dry-run under way: installs at once when it pulls in nothing extra"
        if window is not None:
            policy, occurrence = window
            when = f"the window of policy {policy} opening {occurrence.start:%Y-%m-%d %H:%M} UTC"
            if getattr(policy, "installs", True):
                return f"Installs in {when}"
            return f"Dry-run in {when}, then waits for an admin to install it"
        return "Approved: waits for an admin to install it"
    return {
        UpdateStatus.PENDING: "Waits for an admin",
        UpdateStatus.FAILED: "Failed: waits for an admin to retry or ignore it",
        UpdateStatus.PENDING_DEPENDENCIES: "Waits for an admin to confirm the extra packages",
        UpdateStatus.INSTALLING: "Installing now",
    }.get(update.status, "")


class UpdateChangeList(ChangeList):
    """The list's page of updates, each approved one with the window it will be installed in (looked up
    once for the page: a constant number of queries, whatever the rows)."""

    def get_results(self, request):
        super().get_results(request)
        approved = {row.agent_id for row in self.result_list if row.status == UpdateStatus.APPROVED}
        windows = next_windows(approved, timezone.now())
        for row in self.result_list:
            row.next_window = windows.get(row.agent_id)


# Row buttons on the list and the page: (action, label, statuses it applies to).
ROW_ACTIONS = (
    ("approve", "Approve", (UpdateStatus.PENDING, UpdateStatus.FAILED)),
    ("install", "Install now", (UpdateStatus.PENDING, UpdateStatus.APPROVED, UpdateStatus.FAILED)),
    ("confirm_dependencies", "Confirm and install", (UpdateStatus.PENDING_DEPENDENCIES,)),
    ("ignore", "Ignore", (UpdateStatus.PENDING, UpdateStatus.APPROVED, UpdateStatus.FAILED,
                          UpdateStatus.PENDING_DEPENDENCIES)),
    ("unignore", "Un-ignore", (UpdateStatus.IGNORED,)),
)


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
class PackageUpdateAdmin(ScopedAdminMixin, ReadOnlyDetailMixin, admin.ModelAdmin):
    """'Updates across the fleet': statuses change only through the actions (the workflow's write paths)."""

    # Narrow enough for 1366 px with the advisories' risk columns added (tests/browser/test_layout_browser.py):
    # the package type rides under the name, the versions on two lines, times as "2 h ago".
    list_display = ("package", "agent", "versions", "severity_label", "security", "status_and_next", "changed")
    list_filter = (UpdateStatusFilter, "package_type", "severity", "is_security", "agent")
    search_fields = ("name", "agent__hostname")
    list_select_related = ("agent",)
    actions = ("approve", "ignore", "unignore", "install", "confirm_dependencies")
    fields = ("agent", "package_type", "name", "current_version", "available_version", "severity", "is_security",
              "repository", "size_bytes", "cve_ids", "kb_ids", "status", "next_step", "dependencies",
              "operation_command", "first_seen_at", "last_seen_at", "status_changed_at", "metadata")
    readonly_fields = fields

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Updates across the fleet", **(extra_context or {})})

    def get_changelist(self, request, **kwargs):
        return UpdateChangeList

    # -- one update's actions, from its row or its page: the same admin actions on a one-row selection

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method == "POST" and "update_action" in request.POST:
            return self._row_action(request, object_id, request.POST["update_action"])
        update = self.get_object(request, unquote(object_id))
        available = self.get_actions(request)
        buttons = [(name, label) for name, label, statuses in ROW_ACTIONS
                   if update is not None and update.status in statuses and name in available]
        return super().change_view(request, object_id, form_url, {"update_actions": buttons, **(extra_context or {})})

    def _row_action(self, request, object_id, name: str):
        """Run one of ROW_ACTIONS on this update (the action keeps its permission and scope checks), then back
        to where the button was: the list (with its filters) or the update's page."""
        available = self.get_actions(request)
        if name not in {action for action, _, _ in ROW_ACTIONS} or name not in available:
            raise PermissionDenied
        available[name][0](self, request, self.get_queryset(request).filter(pk=object_id))
        back = request.META.get("HTTP_REFERER", "")
        changelist = reverse("admin:agents_app_packageupdate_changelist")
        if not (url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()})
                and back.split("?")[0].endswith(changelist)):
            back = reverse("admin:agents_app_packageupdate_change", args=[object_id])
        return HttpResponseRedirect(back)

    def row_buttons(self, update: PackageUpdate, url: str):
        """Buttons that post ``update_action`` to the update's page (``formaction``: on the list they sit
        inside the changelist's own form, which carries the CSRF token)."""
        buttons = [(url, name, label) for name, label, statuses in ROW_ACTIONS if update.status in statuses]
        return format_html_join(
            " ", '<button type="submit" class="button rf-row-action" formaction="{}" name="update_action" '
                 'value="{}">{}</button>', buttons)

    @admin.display(description="status", ordering="status")
    def status_and_next(self, update: PackageUpdate):
        """The status, what happens next, and this row's actions."""
        url = reverse("admin:agents_app_packageupdate_change", args=[update.pk])
        window = getattr(update, "next_window", None)
        return format_html('{}<br><span class="rf-muted rf-next-step">{}</span><br>{}', update.get_status_display(),
                           what_happens_next(update, window), self.row_buttons(update, url))

    @admin.display(description="what happens next")
    def next_step(self, update: PackageUpdate):
        window = next_windows([update.agent_id], timezone.now()).get(update.agent_id) \
            if update.status == UpdateStatus.APPROVED else None
        return what_happens_next(update, window) or neutral("nothing: the update is closed")

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

    @admin.action(description="Approve", permissions=["approve"])
    def approve(self, request, queryset):
        self._report(request, "Approved", updates_approve(updates=queryset, actor=actor_of(request)), queryset.count())

    @admin.action(description="Ignore", permissions=["approve"])
    def ignore(self, request, queryset):
        self._report(request, "Ignored", updates_ignore(updates=queryset, actor=actor_of(request)), queryset.count())

    @admin.action(description="Un-ignore", permissions=["approve"])
    def unignore(self, request, queryset):
        self._report(request, "Un-ignored", updates_unignore(updates=queryset, actor=actor_of(request)),
                     queryset.count())

    @admin.action(description="Install (dry-run first)", permissions=["approve"])
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

    @admin.action(description="Confirm dependencies and install", permissions=["approve"])
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
