"""Agents: list, page, fleet actions."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from agents_app.admin.common import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    RECENT_ROWS,
    RED,
    UPDATES_ON_AGENT_PAGE,
    TagsField,
    actor_of,
    admin_link,
    ago,
    badge,
    changelist_url,
    command_badge,
    neutral,
    next_poll_label,
    severity_badge,
    table,
    usage_bar,
)
from agents_app.admin.groups import ANNOUNCED_REBOOT, AgentGroupFilter, AgentTagFilter, groups_links
from agents_app.choices import CommandSource, names_in_words
from agents_app.models import (
    Agent,
    AgentRelease,
    AgentSubsystem,
    BulkOperation,
    Command,
    PackageUpdate,
    machine_id_prefix,
)
from agents_app.services.agent_upgrade import agent_update_start
from agents_app.services.agents import agent_allow_rebind, agent_revoke, agent_settings_update
from agents_app.services.bulk import agent_action_run, bulk_operation_start
from agents_app.services.heartbeat import heartbeat_active
from agents_app.services.releases import latest_release
from agents_app.services.subsystems import subsystems_update
from events_app.models import SystemEvent
from redflag.admin_scoping import ScopedAdminMixin, ScopedInlineMixin
from redflag.errors import ApiError

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


class AgentSubsystemInline(ScopedInlineMixin, admin.TabularInline):
    """Editable schedule, saved through agents_app.services.subsystems (config_version and the event)."""

    model = AgentSubsystem
    extra = 0
    can_delete = False
    fields = ("name", "enabled", "auto_run", "interval_minutes", "next_run_at", "last_run_at", "last_status",
              "last_error")
    readonly_fields = ("name", "next_run_at", "last_run_at", "last_status", "last_error")

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # created at registration from what the agent can do


@admin.register(Agent)
class AgentAdmin(ScopedAdminMixin, admin.ModelAdmin):
    scope_agent_path = ""  # the rows are the agents (redflag.admin_scoping)
    list_display = ("hostname", "status_badge", "last_seen", "os", "agent_version", "outstanding_updates",
                    "security_updates", "reboot_flag")  # fits 1366 px: tests/browser/test_layout_browser.py
    list_filter = (AgentStatusFilter, AgentGroupFilter, AgentTagFilter, "os_family", "reboot_required",
                   HasSecurityUpdatesFilter, "agent_version")
    search_fields = ("hostname", "os_name", "=id")
    actions = ("scan_now", "heartbeat_10", "heartbeat_30", "heartbeat_60", "stop_heartbeat", "reboot",
               "reboot_announced", "approve_security_updates", "update_agent", "allow_rebind", "revoke_credentials")
    inlines = (AgentSubsystemInline,)
    readonly_fields = (
        "id", "hostname", "status_badge", "os_family", "os_name", "os_version", "kernel", "arch", "agent_version",
        "machine_id_prefix", "registered_at", "last_seen_at", "heartbeat_until", "reboot_reason",
        "last_boot_at", "config_version", "metrics", "rebind_allowed_until", "revoked_at", "system_reported_at",
        "system_facts", "storage", "outstanding_updates_section", "timeline", "reboot_flag",
        "reported_tags", "groups", "next_poll",
    )
    fieldsets = (
        (None, {"fields": ("hostname", "status_badge", "id", ("os_family", "os_name", "os_version"),
                           ("kernel", "arch"), "agent_version", ("registered_at", "last_seen_at"))}),
        ("Polling and configuration", {"fields": ("poll_interval_seconds", "heartbeat_until", "next_poll",
                                                  "config_version", "tags", "reported_tags", "groups",
                                                  "verify_scans")}),
        ("System", {"fields": ("system_facts", ("reboot_flag", "reboot_reason"), "last_boot_at",
                               "system_reported_at")}),
        ("Storage", {"fields": ("storage",)}),
        ("Outstanding updates", {"fields": ("outstanding_updates_section",)}),
        ("Timeline", {"fields": ("timeline",)}),
        ("Credentials", {"classes": ("collapse",),
                         "fields": ("machine_id_prefix", "rebind_allowed_until", "revoked_at", "metrics")}),
    )

    # One-click buttons on the agent page (templates/admin/agents_app/agent/change_form.html).
    PAGE_ACTIONS = ("scan_now", "heartbeat_10", "stop_heartbeat", "reboot", "approve_security_updates")

    def has_add_permission(self, request) -> bool:
        return False  # agents enroll themselves with a registration token

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name == "tags":  # a line of text, not the JSON field's raw "[]" text area
            return TagsField(label=db_field.verbose_name.capitalize())
        return super().formfield_for_dbfield(db_field, request, **kwargs)

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

    @admin.display(description="machine id")
    def machine_id_prefix(self, agent: Agent) -> str:
        """A short prefix: enough to tell machines apart, not the identifier itself (anyone may read it)."""
        return f"{machine_id_prefix(agent.machine_id_hash)}…"

    @admin.display(description="status")
    def status_badge(self, agent: Agent):
        if agent.revoked_at:
            return badge("Revoked", RED)
        if heartbeat_active(agent, timezone.now()):
            return badge("Heartbeat", BLUE)
        if agent.is_online:
            return badge("Online", GREEN)
        return badge("Offline", GREY)

    @admin.display(description="next check-in")
    def next_poll(self, agent: Agent):
        """When the commands waiting for this agent will be picked up."""
        waiting = agent.commands.pending().count()
        note = f" — {waiting} command(s) waiting for it" if waiting else ""
        return format_html("{}{}", next_poll_label(agent), note)

    @admin.display(description="reported tags")
    def reported_tags(self, agent: Agent):
        """The agent's own tags, from its config file (``tags`` in config.json)."""
        return ", ".join(agent.reported_tags or []) or neutral("none")

    @admin.display(description="groups")
    def groups(self, agent: Agent):
        return groups_links(agent)

    @admin.display(description="last seen", ordering="last_seen_at")
    def last_seen(self, agent: Agent) -> str:
        return ago(agent.last_seen_at)

    @admin.display(description="OS", ordering="os_name")
    def os(self, agent: Agent) -> str:
        return " ".join(part for part in (agent.os_name or agent.os_family, agent.os_version) if part) or "—"

    @admin.display(description="updates", ordering="outstanding_count")
    def outstanding_updates(self, agent: Agent):
        return format_html('<a href="{}">{}</a>', changelist_url(PackageUpdate, agent__id__exact=agent.pk,
                                                                  status="outstanding"), agent.outstanding_count)

    @admin.display(description="security", ordering="security_count")
    def security_updates(self, agent: Agent):
        if not agent.security_count:
            return "0"
        url = changelist_url(PackageUpdate, agent__id__exact=agent.pk, status="outstanding", is_security__exact=1)
        return format_html('<a href="{}" style="color:{};font-weight:bold">{}</a>', url, RED, agent.security_count)

    @admin.display(description="reboot", ordering="-reboot_required")
    def reboot_flag(self, agent: Agent):
        """"Needed" stands out; no reboot needed is the normal state, shown neutral (not a red ✗)."""
        if agent.reboot_required:
            return badge("Needed", ORANGE)
        return neutral()

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
            changelist_url(SystemEvent, agent=agent.pk), agent.hostname, reverse("events:history"), agent.pk,
        )
        return format_html("{}{}", table(("When", "Kind", "What", "Detail"), rows, "Nothing yet."), links)

    # -- edits go through the write paths, which record them in the same transaction

    def save_model(self, request, obj, form, change):
        changes = {field: form.cleaned_data[field] for field in form.changed_data}
        agent_settings_update(agent=obj, changes=changes, actor=actor_of(request))

    def save_formset(self, request, form, formset, change):
        """The subsystem inline: only the changed rows, through the one subsystem write path."""
        if formset.model is not AgentSubsystem:
            return super().save_formset(request, form, formset, change)
        changed = [inline_form for inline_form in formset.forms if inline_form.has_changed()]
        subsystems_update(
            changes={inline_form.instance.pk: {field: getattr(inline_form.instance, field)
                                               for field in AgentSubsystem.CONFIG_FIELDS} for inline_form in changed},
            actor=actor_of(request),
        )
        # What formset.save() would have set: the admin's history message reads it.
        formset.new_objects, formset.deleted_objects = [], []
        formset.changed_objects = [(inline_form.instance, inline_form.changed_data) for inline_form in changed]
        return None

    # -- fleet actions: each one is a BulkOperation run by a django-q2 task

    def _start_bulk(self, request, queryset, kind: str, params: dict | None = None, label: str = ""):
        """One agent: its commands at once (source web_ui), back on its page. Several: a bulk operation run
        by a django-q2 task, and its progress page. Revoked agents are skipped."""
        selected = list(queryset.values_list("pk", "revoked_at"))
        agent_ids = [pk for pk, revoked_at in selected if revoked_at is None]
        skipped = len(selected) - len(agent_ids)
        if not agent_ids:
            self.message_user(request, "Only revoked agents were selected: nothing to do.", messages.WARNING)
            return None
        if len(selected) == 1:
            return self._run_for_one(request, Agent.objects.get(pk=agent_ids[0]), kind, params,
                                     label or BulkOperation.Kind(kind).label)
        operation = bulk_operation_start(kind=kind, agent_ids=agent_ids, params=params or {}, user=request.user)
        note = f" ({skipped} revoked agent(s) skipped)" if skipped else ""
        self.message_user(request, f"{label or operation.get_kind_display()} started for {len(agent_ids)} "
                                   f"agent(s){note}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:agents_app_bulkoperation_change", args=[operation.pk]))

    def _run_for_one(self, request, agent: Agent, kind: str, params: dict | None, label: str):
        try:
            commands = agent_action_run(kind=kind, agent=agent, params=params, actor=actor_of(request),
                                        user=request.user)
        except ApiError as exc:
            self.message_user(request, f"{agent.hostname}: {exc}", messages.ERROR)
            return None
        if commands:
            self.message_user(request, f"{label} for {agent.hostname}: {names_in_words(c.title for c in commands)} "
                                       f"queued; it runs at the agent's next check-in.", messages.SUCCESS)
        else:
            self.message_user(request, f"{label} for {agent.hostname}: nothing new to queue (the same commands "
                                       f"are already waiting, or there was nothing to do).", messages.INFO)
        return HttpResponseRedirect(reverse("admin:agents_app_agent_change", args=[agent.pk]))

    @admin.action(description="Scan now", permissions=["operate"])
    def scan_now(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.SCAN)

    @admin.action(description="Heartbeat for 10 minutes", permissions=["operate"])
    def heartbeat_10(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 10}, "Heartbeat (10 min)")

    @admin.action(description="Heartbeat for 30 minutes", permissions=["operate"])
    def heartbeat_30(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 30}, "Heartbeat (30 min)")

    @admin.action(description="Heartbeat for 60 minutes", permissions=["operate"])
    def heartbeat_60(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 60}, "Heartbeat (60 min)")

    @admin.action(description="Stop heartbeat", permissions=["operate"])
    def stop_heartbeat(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.HEARTBEAT, {"minutes": 0}, "Stop heartbeat")

    @admin.action(description="Reboot", permissions=["approve"])
    def reboot(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.REBOOT)

    @admin.action(description="Reboot in 10 minutes, announced to logged-in users", permissions=["approve"])
    def reboot_announced(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.REBOOT, ANNOUNCED_REBOOT, "Announced reboot")

    @admin.action(description="Approve all security updates", permissions=["approve"])
    def approve_security_updates(self, request, queryset):
        return self._start_bulk(request, queryset, BulkOperation.Kind.APPROVE, {"security_only": True},
                                "Approve security updates")

    @admin.action(description="Update the agent to the latest release", permissions=["approve"])
    def update_agent(self, request, queryset):
        """One agent: the signed update_agent command at once (source web_ui); several: a bulk task."""
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
            command = agent_update_start(agent=agents[0], release=release, source=CommandSource.WEB_UI,
                                         actor=actor_of(request),
                                         created_by=request.user)
        except ApiError as exc:
            self.message_user(request, f"{agents[0].hostname}: {exc}", messages.ERROR)
            return None
        self.message_user(request, f"{agents[0].hostname} will update to {release.version} at its next check-in.",
                          messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:agents_app_command_change", args=[command.pk]))

    @admin.action(description="Allow a re-enrolment (after a reinstall; restores a revoked agent)",
                  permissions=["change"])
    def allow_rebind(self, request, queryset):
        for agent in queryset:
            agent_allow_rebind(agent=agent, actor=actor_of(request))
        self.message_user(
            request, f"{queryset.count()} agent(s) may re-enrol or bind a new machine id once within 24 h.",
            messages.SUCCESS,
        )

    @admin.action(description="Revoke credentials", permissions=["change"])
    def revoke_credentials(self, request, queryset):
        for agent in queryset:
            agent_revoke(agent=agent, actor=actor_of(request))
        self.message_user(request, f"Revoked {queryset.count()} agent(s).", messages.SUCCESS)
