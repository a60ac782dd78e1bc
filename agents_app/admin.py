"""The fleet in the admin: agents, updates across the fleet, live operations, bulk progress.

Every action calls the write path that owns it (agents_app.updates, .commands,
.bulk, .services); nothing here changes a row by hand. Fleet-wide agent actions
go through bulk_operation_start, so they run as django-q2 tasks and the admin
lands on the operation's progress page.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any, Iterable

from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from agents_app.bulk import bulk_operation_start
from agents_app.choices import OPEN_COMMAND_STATUSES, CommandStatus, PackageType, UpdateSeverity, UpdateStatus
from agents_app.commands import CommandAlreadyOpen, command_retry, commands_cancel
from agents_app.heartbeat import heartbeat_active
from agents_app.models import Agent, AgentSubsystem, BulkOperation, Command, PackageUpdate, UpdateLog
from agents_app.services import agent_allow_rebind, agent_revoke
from agents_app.updates import (
    updates_approve,
    updates_confirm_dependencies,
    updates_ignore,
    updates_install,
    updates_unignore,
)
from events_app.choices import Component, EventSubtype, EventType
from events_app.models import SystemEvent
from events_app.services import record_event
from redflag.errors import Conflict

# Statuses the dashboard and the "failed in the last 24 h" filter count as failures.
FAILED_COMMAND_STATUSES = (CommandStatus.FAILED, CommandStatus.TIMED_OUT)
RECENT_FAILURE_WINDOW = timedelta(hours=24)
RECENT_ROWS = 10  # commands and events on the agent page
UPDATES_ON_AGENT_PAGE = 50
COMMANDS_ON_OPERATION_PAGE = 200

GREEN, GREY, RED, BLUE, ORANGE, AMBER = "#2e7d32", "#757575", "#c62828", "#1565c0", "#ef6c00", "#f9a825"
SEVERITY_COLOURS = {
    UpdateSeverity.CRITICAL: "#b71c1c",
    UpdateSeverity.IMPORTANT: ORANGE,
    UpdateSeverity.MODERATE: AMBER,
    UpdateSeverity.LOW: BLUE,
    UpdateSeverity.UNKNOWN: GREY,
}
COMMAND_STATUS_COLOURS = {
    CommandStatus.PENDING: GREY,
    CommandStatus.SENT: BLUE,
    CommandStatus.RUNNING: BLUE,
    CommandStatus.SUCCEEDED: GREEN,
    CommandStatus.FAILED: RED,
    CommandStatus.TIMED_OUT: ORANGE,
    CommandStatus.CANCELLED: GREY,
}


# --- small renderers ---------------------------------------------------------

def badge(label: str, colour: str) -> SafeString:
    return format_html(
        '<span class="rf-badge" style="color:#fff;background:{};padding:2px 8px;border-radius:8px;'
        'white-space:nowrap">{}</span>', colour, label,
    )


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """'2 min ago': the coarsest unit that is not zero."""
    if moment is None:
        return "never"
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    if seconds < 10:
        return "just now"  # includes a small clock skew into the future
    for unit_seconds, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= unit_seconds:
            return f"{seconds // unit_seconds} {unit} ago"
    return f"{seconds} s ago"


def usage_bar(percent: float | None, label: str = "") -> SafeString:
    """A plain-CSS usage bar: green, amber above 75 %, red above 90 %."""
    percent = max(0.0, min(100.0, float(percent or 0)))
    colour = RED if percent >= 90 else AMBER if percent >= 75 else GREEN
    return format_html(
        '<span class="rf-bar" title="{}" style="display:inline-block;width:160px;height:10px;'
        'background:var(--darkened-bg,#eee);border:1px solid var(--hairline-color,#ccc);border-radius:3px;'
        'vertical-align:middle;overflow:hidden"><span style="display:block;height:100%;width:{}%;'
        'background:{}"></span></span> {}',
        label or f"{percent:.0f} %", f"{percent:.1f}", colour, label or f"{percent:.0f} %",
    )


def pretty_json(value: Any) -> SafeString:
    return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>',
                       json.dumps(value, indent=2, sort_keys=True, default=str))


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], empty: str) -> SafeString:
    """A small read-only table for the sections of a change page (cells are escaped unless safe)."""
    rows = list(rows)
    if not rows:
        return format_html("<p>{}</p>", empty)
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "", "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows),
    )
    return format_html('<table class="rf-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body)


def admin_link(obj, label: Any) -> SafeString:
    meta = obj._meta
    return format_html('<a href="{}">{}</a>', reverse(f"admin:{meta.app_label}_{meta.model_name}_change",
                                                       args=[obj.pk]), label)


def changelist_url(model, **query) -> str:
    from urllib.parse import urlencode

    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return f"{url}?{urlencode(query)}" if query else url


def actor_of(request) -> str:
    return request.user.get_username()


class ReadOnlyDetailMixin:
    """Rows written only by the system: list and actions yes, add / edit / delete by hand no.

    has_change_permission(obj=None) stays true so that change-permission actions
    run; a specific object is shown view-only.
    """

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return obj is None and super().has_change_permission(request, obj)


# --- agents -------------------------------------------------------------------

class AgentStatusFilter(admin.SimpleListFilter):
    """online / offline / heartbeat / revoked; the same sets the dashboard counts."""

    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return (("online", "Online"), ("offline", "Offline"), ("heartbeat", "In heartbeat"), ("revoked", "Revoked"))

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "online":
            return queryset.online(now)
        if self.value() == "offline":
            return queryset.offline(now)
        if self.value() == "heartbeat":
            return queryset.filter(heartbeat_until__gt=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


class HasSecurityUpdatesFilter(admin.SimpleListFilter):
    title = "security updates"
    parameter_name = "security"

    def lookups(self, request, model_admin):
        return (("yes", "Has outstanding security updates"), ("no", "None"))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(security_count__gt=0)
        if self.value() == "no":
            return queryset.filter(security_count=0)
        return queryset


def _outstanding_count(**filters) -> Coalesce:
    """Outstanding updates per agent as one correlated subquery.

    Built on PackageUpdate.objects.outstanding() so the list, the dashboard and
    the updates filter share one definition of "outstanding"; the (agent, status)
    index serves it. One query for the whole page, whatever the fleet size.
    """
    counted = (
        PackageUpdate.objects.outstanding().filter(agent=OuterRef("pk"), **filters)
        .order_by().values("agent").annotate(total=Count("pk")).values("total")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


class AgentSubsystemInline(admin.TabularInline):
    """Editable schedule; AgentSubsystem.save() bumps the agent's config_version."""

    model = AgentSubsystem
    extra = 0
    can_delete = False
    fields = ("name", "enabled", "auto_run", "interval_minutes", "next_run_at", "last_run_at", "last_status",
              "last_error")
    readonly_fields = ("name", "next_run_at", "last_run_at", "last_status", "last_error")

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # created at registration from what the agent can do


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ("hostname", "status_badge", "last_seen", "os", "agent_version", "outstanding_updates",
                    "security_updates", "reboot_flag")
    list_filter = (AgentStatusFilter, "os_family", "reboot_required", HasSecurityUpdatesFilter, "agent_version")
    search_fields = ("hostname", "os_name", "=id")
    actions = ("scan_now", "heartbeat_10", "heartbeat_30", "heartbeat_60", "stop_heartbeat", "reboot",
               "approve_security_updates", "update_agent", "allow_rebind", "revoke_credentials")
    inlines = (AgentSubsystemInline,)
    readonly_fields = (
        "id", "hostname", "status_badge", "os_family", "os_name", "os_version", "kernel", "arch", "agent_version",
        "machine_id_hash", "registered_at", "last_seen_at", "heartbeat_until", "reboot_required", "reboot_reason",
        "last_boot_at", "config_version", "metrics", "rebind_allowed_until", "revoked_at", "system_reported_at",
        "system_facts", "storage", "outstanding_updates_section", "timeline",
    )
    fieldsets = (
        (None, {"fields": ("hostname", "status_badge", "id", ("os_family", "os_name", "os_version"),
                           ("kernel", "arch"), "agent_version", ("registered_at", "last_seen_at"))}),
        ("Polling and configuration", {"fields": ("poll_interval_seconds", "heartbeat_until", "config_version",
                                                  "tags")}),
        ("System", {"fields": ("system_facts", ("reboot_required", "reboot_reason"), "last_boot_at",
                               "system_reported_at")}),
        ("Storage", {"fields": ("storage",)}),
        ("Outstanding updates", {"fields": ("outstanding_updates_section",)}),
        ("Timeline", {"fields": ("timeline",)}),
        ("Credentials", {"classes": ("collapse",),
                         "fields": ("machine_id_hash", "rebind_allowed_until", "revoked_at", "metrics")}),
    )

    # One-click buttons on the agent page (templates/admin/agents_app/agent/change_form.html).
    PAGE_ACTIONS = ("scan_now", "heartbeat_10", "stop_heartbeat", "reboot", "approve_security_updates")

    def has_add_permission(self, request) -> bool:
        return False  # agents enroll themselves with a registration token

    def change_view(self, request, object_id, form_url="", extra_context=None):
        available = self.get_actions(request)
        buttons = [(name, available[name][2]) for name in self.PAGE_ACTIONS if name in available]
        return super().change_view(request, object_id, form_url, {"agent_actions": buttons, **(extra_context or {})})

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            outstanding_count=_outstanding_count(),
            security_count=_outstanding_count(is_security=True),
        )

    # -- columns

    @admin.display(description="status")
    def status_badge(self, agent: Agent):
        if agent.revoked_at:
            return badge("Revoked", RED)
        if heartbeat_active(agent, timezone.now()):
            return badge("Heartbeat", BLUE)
        if agent.is_online:
            return badge("Online", GREEN)
        return badge("Offline", GREY)

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, agent: Agent) -> str:
        return ago(agent.last_seen_at)

    @admin.display(description="OS", ordering="os_name")
    def os(self, agent: Agent) -> str:
        return " ".join(part for part in (agent.os_name or agent.os_family, agent.os_version) if part) or "—"

    @admin.display(description="outstanding", ordering="outstanding_count")
    def outstanding_updates(self, agent: Agent):
        return format_html('<a href="{}">{}</a>', changelist_url(PackageUpdate, agent__id__exact=agent.pk,
                                                                  status="outstanding"), agent.outstanding_count)

    @admin.display(description="security", ordering="security_count")
    def security_updates(self, agent: Agent):
        if not agent.security_count:
            return "0"
        url = changelist_url(PackageUpdate, agent__id__exact=agent.pk, status="outstanding", is_security__exact=1)
        return format_html('<a href="{}" style="color:{};font-weight:bold">{}</a>', url, RED, agent.security_count)

    @admin.display(description="reboot", boolean=True, ordering="reboot_required")
    def reboot_flag(self, agent: Agent) -> bool:
        return agent.reboot_required

    # -- change page sections (the agent's own, untrusted strings are escaped by format_html)

    @admin.display(description="facts")
    def system_facts(self, agent: Agent):
        info = agent.system_info or {}
        if not info:
            return "No system report yet."
        rows = []
        if info.get("cpu_model") or info.get("cpu_count"):
            cpu = " × ".join(str(part) for part in (info.get("cpu_count"), info.get("cpu_model")) if part)
            if info.get("cpu_percent") is not None:
                cpu = format_html("{} {}", cpu, usage_bar(info["cpu_percent"], f"{info['cpu_percent']:.0f} % busy"))
            rows.append(("CPU", cpu))
        total, used = info.get("memory_total_bytes"), info.get("memory_used_bytes")
        if total:
            used = used or 0
            rows.append(("Memory", usage_bar(100 * used / total,
                                             f"{filesizeformat(used)} of {filesizeformat(total)}")))
        if info.get("uptime_seconds") is not None:
            rows.append(("Uptime", str(timedelta(seconds=int(info["uptime_seconds"])))))
        if info.get("boot_time"):
            rows.append(("Booted", info["boot_time"]))
        if info.get("ip_addresses"):
            rows.append(("IP addresses", ", ".join(str(address) for address in info["ip_addresses"])))
        return table(("", ""), rows, "No system facts in the last report.")

    @admin.display(description="disks")
    def storage(self, agent: Agent):
        disks = (agent.system_info or {}).get("disks") or []
        rows = [
            (disk.get("mountpoint", ""), disk.get("device", ""), disk.get("fstype", ""),
             usage_bar(disk.get("percent"), f"{disk.get('percent', 0):.0f} %"),
             f"{filesizeformat(disk.get('used_bytes') or 0)} of {filesizeformat(disk.get('total_bytes') or 0)}")
            for disk in disks if isinstance(disk, dict)
        ]
        return table(("Mount", "Device", "Type", "Usage", "Used"), rows, "No disks reported.")

    @admin.display(description="updates")
    def outstanding_updates_section(self, agent: Agent):
        updates = list(agent.updates.outstanding().order_by("-is_security", "package_type", "name")
                       [:UPDATES_ON_AGENT_PAGE])
        rows = [
            (admin_link(update, update.name), update.get_package_type_display(),
             f"{update.current_version} → {update.available_version}", severity_badge(update),
             "yes" if update.is_security else "", update.get_status_display())
            for update in updates
        ]
        link = format_html('<p><a href="{}">All outstanding updates of {} in the fleet list</a></p>',
                           changelist_url(PackageUpdate, agent__id__exact=agent.pk, status="outstanding"),
                           agent.hostname)
        return format_html("{}{}", table(("Package", "Type", "Version", "Severity", "Security", "Status"), rows,
                                         "No outstanding updates."), link)

    @admin.display(description="timeline")
    def timeline(self, agent: Agent):
        """The agent's events and commands interleaved, newest first (each read through its own index)."""
        now = timezone.now()
        commands = [
            (command.created_at, admin_link(command, ago(command.created_at, now)), "command",
             format_html("{} {}", command.command_type, command_badge(command)),
             f"{command.get_source_display()}{' by ' + str(command.created_by) if command.created_by else ''}")
            for command in agent.commands.select_related("created_by")[:RECENT_ROWS]
        ]
        events = [
            (event.created_at, admin_link(event, ago(event.created_at, now)), "event",
             f"{event.event_type} / {event.event_subtype} ({event.severity})", event.message)
            for event in SystemEvent.objects.filter(agent=agent)[:RECENT_ROWS]  # the (agent, time) index
        ]
        rows = [row[1:] for row in sorted(commands + events, key=lambda row: row[0], reverse=True)[:RECENT_ROWS]]
        links = format_html(
            '<p><a href="{}">All commands for {}</a> · <a href="{}">All events for {}</a> · '
            '<a href="{}?agent={}">Event history</a></p>',
            changelist_url(Command, agent__id__exact=agent.pk), agent.hostname,
            changelist_url(SystemEvent, q=agent.hostname), agent.hostname, reverse("events:history"), agent.pk,
        )
        return format_html("{}{}", table(("When", "Kind", "What", "Detail"), rows, "Nothing yet."), links)

    # -- configuration changes are audited in the admin's transaction

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and form.changed_data:
            record_event(
                event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                message=f"Agent {obj.hostname} changed: {', '.join(form.changed_data)}", agent=obj,
                metadata={field: form.cleaned_data[field] for field in form.changed_data}, actor=actor_of(request),
            )

    def save_formset(self, request, form, formset, change):
        """Subsystem edits: save() bumps config_version; the event goes in the same transaction."""
        super().save_formset(request, form, formset, change)
        if formset.model is AgentSubsystem and formset.changed_objects:
            changes = {subsystem.name: {field: getattr(subsystem, field) for field in fields}
                       for subsystem, fields in formset.changed_objects}
            record_event(
                event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                message=f"Subsystems of {form.instance.hostname} changed: {', '.join(sorted(changes))}",
                agent=form.instance, metadata={"subsystems": changes}, actor=actor_of(request),
            )

    # -- fleet actions: each one is a BulkOperation run by a django-q2 task

    def _start_bulk(self, request, queryset, kind: str, params: dict | None = None, label: str = ""):
        """Start the operation for the selected, non-revoked agents and show its progress page."""
        selected = list(queryset.values_list("pk", "revoked_at"))
        agent_ids = [pk for pk, revoked_at in selected if revoked_at is None]
        skipped = len(selected) - len(agent_ids)
        if not agent_ids:
            self.message_user(request, "Only revoked agents were selected: nothing to do.", messages.WARNING)
            return None
        operation = bulk_operation_start(kind=kind, agent_ids=agent_ids, params=params or {}, user=request.user)
        note = f" ({skipped} revoked agent(s) skipped)" if skipped else ""
        self.message_user(request, f"{label or operation.get_kind_display()} started for {len(agent_ids)} "
                                   f"agent(s){note}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:agents_app_bulkoperation_change", args=[operation.pk]))

    @admin.action(description="Scan now", permissions=["change"])
    def scan_now(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.SCAN)

    @admin.action(description="Heartbeat for 10 minutes", permissions=["change"])
    def heartbeat_10(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 10}, "Heartbeat (10 min)")

    @admin.action(description="Heartbeat for 30 minutes", permissions=["change"])
    def heartbeat_30(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 30}, "Heartbeat (30 min)")

    @admin.action(description="Heartbeat for 60 minutes", permissions=["change"])
    def heartbeat_60(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 60}, "Heartbeat (60 min)")

    @admin.action(description="Stop heartbeat", permissions=["change"])
    def stop_heartbeat(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 0}, "Stop heartbeat")

    @admin.action(description="Reboot", permissions=["change"])
    def reboot(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.REBOOT)

    @admin.action(description="Approve all security updates", permissions=["change"])
    def approve_security_updates(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.APPROVE, {"security_only": True},
                                "Approve security updates")

    @admin.action(description="Update the agent to the latest release", permissions=["change"])
    def update_agent(self, request, queryset):
        """One agent: the signed update_agent command at once (source web_ui); several: a bulk task."""
        from agents_app.agent_updates import agent_update_start
        from agents_app.models import AgentRelease
        from agents_app.releases import ReleaseError, latest_release

        release = latest_release(platform=AgentRelease.Platform.ANY)
        if release is None:
            self.message_user(request, "No agent release yet: build one with manage.py build_agent_release.",
                              messages.ERROR)
            return None
        agents = list(queryset.filter(revoked_at__isnull=True))
        if len(agents) != 1:
            return self._start_bulk(request, queryset, BulkOperation.Kind.UPDATE_AGENT, {"version": release.version},
                                    f"Update to {release.version}")
        try:
            command = agent_update_start(agent=agents[0], release=release, source="web_ui", actor=actor_of(request),
                                         created_by=request.user)
        except (ReleaseError, Conflict) as exc:
            self.message_user(request, f"{agents[0].hostname}: {exc}", messages.ERROR)
            return None
        self.message_user(request, f"{agents[0].hostname} will update to {release.version} at its next check-in.",
                          messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:agents_app_command_change", args=[command.pk]))

    @admin.action(description="Allow a machine rebind (after a reinstall)", permissions=["change"])
    def allow_rebind(self, request, queryset):
        for agent in queryset:
            agent_allow_rebind(agent=agent, actor=actor_of(request))
        self.message_user(
            request, f"{queryset.count()} agent(s) may bind to a new machine id on their next request (24 h).",
            messages.SUCCESS,
        )

    @admin.action(description="Revoke credentials", permissions=["change"])
    def revoke_credentials(self, request, queryset):
        for agent in queryset:
            agent_revoke(agent=agent, actor=actor_of(request))
        self.message_user(request, f"Revoked {queryset.count()} agent(s).", messages.SUCCESS)


# --- updates across the fleet ---------------------------------------------------

def severity_badge(update: PackageUpdate) -> SafeString:
    return badge(update.get_severity_display(), SEVERITY_COLOURS.get(update.severity, GREY))


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

    list_display = ("name", "agent", "package_type", "versions", "severity_label", "security", "status",
                    "status_changed_at")
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

    @admin.display(description="version")
    def versions(self, update: PackageUpdate):
        return format_html('<span style="white-space:nowrap">{} → {}</span>', update.current_version or "?",
                           update.available_version or "?")

    @admin.display(description="severity", ordering="severity")
    def severity_label(self, update: PackageUpdate):
        return severity_badge(update)

    @admin.display(description="security", boolean=True, ordering="is_security")
    def security(self, update: PackageUpdate) -> bool:
        return update.is_security

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
        started, conflicts = [], []
        for agent in Agent.objects.filter(pk__in=queryset.values("agent_id")).order_by("hostname"):
            try:
                started += updates_install(updates=queryset.filter(agent=agent), actor=actor_of(request),
                                           created_by=request.user)
            except CommandAlreadyOpen:
                conflicts.append(agent.hostname)
        if started:
            self.message_user(request, f"Started {len(started)} dry-run(s); the install follows when the agent "
                                       f"reports no new dependencies.", messages.SUCCESS)
        elif not conflicts:
            self.message_user(request, "None of the selected updates can be installed in their state.",
                              messages.WARNING)
        if conflicts:
            self.message_user(request, f"A dry-run of the same kind is already open for: {', '.join(conflicts)}.",
                              messages.ERROR)

    @admin.action(description="Confirm dependencies and install", permissions=["change"])
    def confirm_dependencies(self, request, queryset):
        try:
            commands = updates_confirm_dependencies(updates=queryset, actor=actor_of(request),
                                                    created_by=request.user)
        except CommandAlreadyOpen as exc:
            self.message_user(request, f"Not confirmed: {exc.detail}", messages.ERROR)
            return
        if commands:
            self.message_user(request, f"Started {len(commands)} install(s) with their dependencies.",
                              messages.SUCCESS)
        else:
            self.message_user(request, "None of the selected updates is waiting for a dependency confirmation.",
                              messages.WARNING)


# --- live operations ----------------------------------------------------------

def command_badge(command: Command) -> SafeString:
    return badge(command.get_status_display(), COMMAND_STATUS_COLOURS.get(command.status, GREY))


class CommandOutcomeFilter(admin.SimpleListFilter):
    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request, model_admin):
        return (("open", "Open (pending, sent, running)"), ("failed_24h", "Failed in the last 24 h"),
                ("failed", "Failed or timed out"))

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.open()
        if self.value() == "failed_24h":
            return queryset.filter(status__in=FAILED_COMMAND_STATUSES,
                                   completed_at__gte=timezone.now() - RECENT_FAILURE_WINDOW)
        if self.value() == "failed":
            return queryset.filter(status__in=FAILED_COMMAND_STATUSES)
        return queryset


class BulkOperationFilter(admin.SimpleListFilter):
    """The commands one bulk operation created; shown only when the operation page links here."""

    title = "bulk operation"
    parameter_name = "bulk_operation"

    def lookups(self, request, model_admin):
        value = self.value()
        return ((value, f"Operation {value[:8]}…"),) if value else ()

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            return queryset.filter(bulk_operation_id=uuid.UUID(self.value()))
        except ValueError:
            return queryset.none()  # a mangled link shows nothing rather than a 500


@admin.register(Command)
class CommandAdmin(ReadOnlyDetailMixin, admin.ModelAdmin):
    """'Live operations': commands are created by the workflow, never by hand."""

    list_display = ("command_type", "agent", "status_label", "source", "age", "created_by", "completed_at")
    list_filter = (CommandOutcomeFilter, "status", "command_type", "source", BulkOperationFilter)
    search_fields = ("agent__hostname", "=id")
    list_select_related = ("agent", "created_by")
    actions = ("cancel_pending", "retry_failed")
    fields = ("id", "agent", "command_type", "status_label", "source", "created_by", "created_at", "sent_at",
              "started_at", "completed_at", "expires_at", "params_pretty", "result_pretty", "output_pre",
              "retry_of", "bulk_operation", "key_id")
    readonly_fields = fields

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {"title": "Live operations", **(extra_context or {})})

    @admin.display(description="status", ordering="status")
    def status_label(self, command: Command):
        return command_badge(command)

    @admin.display(description="age", ordering="-created_at")
    def age(self, command: Command) -> str:
        return ago(command.created_at)

    @admin.display(description="params")
    def params_pretty(self, command: Command):
        return pretty_json(command.params)

    @admin.display(description="result")
    def result_pretty(self, command: Command):
        return pretty_json(command.result)

    @admin.display(description="output")
    def output_pre(self, command: Command):
        return format_html('<pre style="white-space:pre-wrap;max-height:40em;overflow:auto;margin:0">{}</pre>',
                           command.output or "(none)")

    @admin.action(description="Cancel pending commands", permissions=["change"])
    def cancel_pending(self, request, queryset):
        cancelled = commands_cancel(commands=queryset.select_related("agent"), actor=actor_of(request))
        skipped = queryset.count() - cancelled
        note = f"; {skipped} had already reached the agent or finished" if skipped else ""
        self.message_user(request, f"Cancelled {cancelled} command(s){note}.",
                          messages.SUCCESS if cancelled else messages.WARNING)

    @admin.action(description="Retry failed commands", permissions=["change"])
    def retry_failed(self, request, queryset):
        retried = 0
        for command in queryset.select_related("agent"):
            try:
                command_retry(command=command, actor=actor_of(request), created_by=request.user)
            except CommandAlreadyOpen:
                self.message_user(request, f"{command.command_type} for {command.agent.hostname}: the same kind "
                                           f"of command is already open.", messages.ERROR)
            except Conflict as exc:
                self.message_user(request, f"{command.command_type} for {command.agent.hostname}: {exc.detail}",
                                  messages.WARNING)
            else:
                retried += 1
        if retried:
            self.message_user(request, f"Queued {retried} retry command(s).", messages.SUCCESS)


# --- bulk operations and update logs -------------------------------------------

def progress_bar(operation: BulkOperation) -> SafeString:
    finished = operation.done + operation.failed
    total = max(operation.requested, 1)
    done_percent, failed_percent = 100 * operation.done / total, 100 * operation.failed / total
    return format_html(
        '<span class="rf-progress" style="display:inline-block;width:240px;height:12px;border-radius:3px;'
        'overflow:hidden;vertical-align:middle;background:var(--darkened-bg,#eee);'
        'border:1px solid var(--hairline-color,#ccc)">'
        '<span style="float:left;height:100%;width:{}%;background:{}"></span>'
        '<span style="float:left;height:100%;width:{}%;background:{}"></span></span> '
        '<span class="rf-progress-text">{} / {}</span>',
        f"{done_percent:.1f}", GREEN, f"{failed_percent:.1f}", RED, finished, operation.requested,
    )


@admin.register(BulkOperation)
class BulkOperationAdmin(ReadOnlyDetailMixin, admin.ModelAdmin):
    """Progress of fleet actions; the change page refreshes itself every 2 s until the task finishes."""

    list_display = ("__str__", "kind", "status_label", "progress", "requested", "done", "failed", "created_by",
                    "created_at")
    list_filter = ("kind", "status")
    list_select_related = ("created_by",)
    fields = ("kind", "status_label", "progress", "requested", "done", "failed", "errors_table", "params_pretty",
              "created_by", "created_at", "finished_at", "commands_created")
    readonly_fields = fields

    @admin.display(description="status", ordering="status")
    def status_label(self, operation: BulkOperation):
        colour = {BulkOperation.Status.QUEUED: GREY, BulkOperation.Status.RUNNING: BLUE}.get(
            operation.status, RED if operation.failed else GREEN)
        return badge(operation.get_status_display(), colour)

    @admin.display(description="progress")
    def progress(self, operation: BulkOperation):
        return progress_bar(operation)

    @admin.display(description="errors")
    def errors_table(self, operation: BulkOperation):
        rows = [(error.get("agent", ""), error.get("error", "")) for error in operation.errors or []
                if isinstance(error, dict)]
        return table(("Agent", "Error"), rows, "None.")

    @admin.display(description="parameters")
    def params_pretty(self, operation: BulkOperation):
        params = dict(operation.params)
        agent_ids = params.pop("agent_ids", [])
        return format_html("{}<p>{} agent(s)</p>", pretty_json(params), len(agent_ids))

    @admin.display(description="commands created")
    def commands_created(self, operation: BulkOperation):
        commands = list(operation.commands.select_related("agent").order_by("agent__hostname", "created_at")
                        [:COMMANDS_ON_OPERATION_PAGE])
        rows = [(admin_link(command, command.command_type), command.agent.hostname, command_badge(command))
                for command in commands]
        link = format_html('<p><a href="{}">All commands of this operation</a></p>',
                           changelist_url(Command, bulk_operation=operation.pk))
        return format_html("{}{}", table(("Command", "Agent", "Status"), rows, "No commands (yet)."), link)


@admin.register(UpdateLog)
class UpdateLogAdmin(ReadOnlyDetailMixin, admin.ModelAdmin):
    list_display = ("created_at", "agent", "action", "package_type", "package_count", "succeeded", "exit_code",
                    "duration_seconds")
    list_filter = ("action", "succeeded", "package_type")
    search_fields = ("agent__hostname",)
    list_select_related = ("agent",)
    fields = ("agent", "command", "action", "package_type", "packages", "succeeded", "exit_code",
              "duration_seconds", "created_at", "output")
    readonly_fields = fields

    @admin.display(description="packages")
    def package_count(self, log: UpdateLog) -> int:
        return len(log.packages or [])

    @admin.display(description="output tail")
    def output(self, log: UpdateLog):
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', log.output_tail or "(none)")


# --- the dashboard's numbers (redflag.admin_site renders them) -------------------

def fleet_summary(now: datetime | None = None) -> dict[str, Any]:
    """Everything the admin index shows, in three aggregate queries whatever the fleet size.

    1. agents: one aggregate (online reuses Agent.objects.online() as a subquery);
    2. outstanding updates grouped by severity, package type and security flag;
    3. commands: open ones and failures within the last 24 h.
    """
    now = now or timezone.now()
    agents = Agent.objects.aggregate(
        total=Count("pk"),
        online=Count("pk", filter=Q(pk__in=Agent.objects.online(now).values("pk"))),
        heartbeat=Count("pk", filter=Q(heartbeat_until__gt=now)),
        reboot=Count("pk", filter=Q(reboot_required=True)),
        revoked=Count("pk", filter=Q(revoked_at__isnull=False)),
    )
    agents["offline"] = agents["total"] - agents["online"]

    by_severity = dict.fromkeys(UpdateSeverity.values, 0)
    by_type = dict.fromkeys(PackageType.values, 0)
    security = total_updates = 0
    grouped = (PackageUpdate.objects.outstanding().order_by().values("severity", "package_type", "is_security")
               .annotate(n=Count("pk")))
    for row in grouped:
        by_severity[row["severity"]] = by_severity.get(row["severity"], 0) + row["n"]
        by_type[row["package_type"]] = by_type.get(row["package_type"], 0) + row["n"]
        security += row["n"] if row["is_security"] else 0
        total_updates += row["n"]

    commands = Command.objects.filter(
        Q(status__in=OPEN_COMMAND_STATUSES)
        | Q(status__in=FAILED_COMMAND_STATUSES, completed_at__gte=now - RECENT_FAILURE_WINDOW)
    ).aggregate(
        open=Count("pk", filter=Q(status__in=OPEN_COMMAND_STATUSES)),
        failed_24h=Count("pk", filter=Q(status__in=FAILED_COMMAND_STATUSES)),
    )

    def bars(counts: dict[str, int], labels: dict[str, str], colours: dict[str, str], lookup: str) -> list[dict]:
        """One chart row per value: its share of the largest bar and its filtered list."""
        top = max(counts.values(), default=0) or 1
        return [{"label": labels.get(value, value), "count": count, "percent": round(100 * count / top, 1),
                 "colour": colours.get(value, BLUE),
                 "url": changelist_url(PackageUpdate, status="outstanding", **{lookup: value})}
                for value, count in counts.items()]

    agent_total = max(agents["total"], 1)
    return {
        "agents": agents,
        "agents_online_percent": round(100 * agents["online"] / agent_total, 1),
        "agents_offline_percent": round(100 * agents["offline"] / agent_total, 1),
        "updates_total": total_updates,
        "security": security,
        "severity_bars": bars(by_severity, dict(UpdateSeverity.choices), SEVERITY_COLOURS, "severity__exact"),
        "type_bars": bars(by_type, dict(PackageType.choices), {}, "package_type__exact"),
        "commands": commands,
        "links": {
            "agents": changelist_url(Agent),
            "online": changelist_url(Agent, status="online"),
            "offline": changelist_url(Agent, status="offline"),
            "heartbeat": changelist_url(Agent, status="heartbeat"),
            "revoked": changelist_url(Agent, status="revoked"),
            "reboot": changelist_url(Agent, reboot_required__exact=1),
            "updates": changelist_url(PackageUpdate, status="outstanding"),
            "security": changelist_url(PackageUpdate, status="outstanding", is_security__exact=1),
            "open_commands": changelist_url(Command, outcome="open"),
            "failed_commands": changelist_url(Command, outcome="failed_24h"),
            "bulk_operations": changelist_url(BulkOperation),
        },
        "colours": {"online": GREEN, "offline": GREY, "security": RED},
    }



# --- agent releases ------------------------------------------------------------------------------
# Imported here rather than at the top: this section was appended with the releases feature.
from django import forms  # noqa: E402

from agents_app.models import AgentRelease  # noqa: E402
from agents_app.releases import (  # noqa: E402
    ReleaseError,
    latest_release_ids,
    release_create_from_upload,
    release_find,
    release_revoke,
    version_key,
)


class AgentReleaseUploadForm(forms.ModelForm):
    """Add an artifact built elsewhere; it is hashed and signed here exactly like a built release."""

    upload = forms.FileField(help_text="A built redflag-agent.pyz.")

    class Meta:
        model = AgentRelease
        fields = ["version", "platform"]

    def clean_version(self):
        version = self.cleaned_data["version"].strip()
        try:
            version_key(version)
        except ReleaseError as error:
            raise forms.ValidationError(str(error)) from None
        return version

    def clean(self):
        cleaned = super().clean()
        version, platform = cleaned.get("version"), cleaned.get("platform")
        if version and platform and release_find(version=version, platform=platform) is not None:
            self.add_error("version", f"Release {version} for platform {platform} already exists.")
        return cleaned


@admin.register(AgentRelease)
class AgentReleaseAdmin(admin.ModelAdmin):
    """Releases, newest first per platform, with the latest one (agents_app.releases.latest_release) marked.

    Build with ``manage.py build_agent_release --version V`` or upload here; revoke instead of deleting.
    """

    list_filter = ["platform", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["version", "sha256"]
    actions = ["revoke_releases"]
    readonly_fields = ["version", "platform", "artifact", "size", "sha256", "created_at", "created_by", "revoked_at",
                       "key_id", "signature", "manifest"]

    def get_list_display(self, request):
        latest_ids = latest_release_ids()  # one query per page, whatever the number of releases

        @admin.display(description="latest")
        def latest(release):
            if release.pk in latest_ids:
                return format_html('<strong class="latest-release">latest for {}</strong>', release.platform)
            return ""

        return ["version", "platform", latest, "size_display", "sha256_short", "key_id", "created_at",
                "revoked_at"]

    @admin.display(description="size", ordering="size")
    def size_display(self, release):
        return filesizeformat(release.size)

    @admin.display(description="SHA-256")
    def sha256_short(self, release):
        return format_html('<code title="{}">{}…</code>', release.sha256, release.sha256[:16])

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = AgentReleaseUploadForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return ["version", "platform", "upload"] if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        release = release_create_from_upload(upload=form.cleaned_data["upload"], version=obj.version,
                                             platform=obj.platform, actor=request.user.get_username())
        # The write path made the row; the admin's follow-up (log entry, redirect) needs it in ``obj``.
        obj.__dict__.update(release.__dict__)

    def save_related(self, request, form, formsets, change):
        pass  # no related objects; the default would save the form's m2m against a row it did not create

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: agents and the audit trail refer to releases by version

    @admin.action(description="Revoke the selected releases (downloads answer 410)")
    def revoke_releases(self, request, queryset):
        revoked = sum(release_revoke(release=release, actor=request.user.get_username()) for release in queryset)
        self.message_user(request, f"Revoked {revoked} release(s).", messages.SUCCESS)


# --- subsystems across the fleet --------------------------------------------------------------

from agents_app.subsystems import subsystems_configure  # noqa: E402


@admin.register(AgentSubsystem)
class AgentSubsystemAdmin(admin.ModelAdmin):
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
