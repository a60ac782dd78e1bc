"""Live operations (commands), bulk operations and update logs."""

from __future__ import annotations

import uuid

from django.contrib import admin, messages
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from agents_app.admin.common import (
    BLUE,
    COMMANDS_ON_OPERATION_PAGE,
    FAILED_COMMAND_STATUSES,
    GREEN,
    GREY,
    RECENT_FAILURE_WINDOW,
    RED,
    ReadOnlyDetailMixin,
    actor_of,
    admin_link,
    ago,
    badge,
    changelist_url,
    command_badge,
    next_poll_label,
    pretty_json,
    table,
)
from agents_app.choices import CommandStatus, names_in_words
from agents_app.models import BulkOperation, Command, UpdateLog
from agents_app.services.commands import CommandAlreadyOpen, command_retry
from agents_app.services.results import commands_cancel
from redflag.admin_scoping import ScopedAdminMixin
from redflag.errors import Conflict

# --- live operations ----------------------------------------------------------



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
class CommandAdmin(ScopedAdminMixin, ReadOnlyDetailMixin, admin.ModelAdmin):
    """'Live operations': commands are created by the workflow, never by hand."""

    list_display = ("title", "agent", "status_label", "source", "age", "created_by", "completed_at")
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

    @admin.display(description="command", ordering="command_type")
    def title(self, command: Command) -> str:
        return command.title

    @admin.display(description="status", ordering="status")
    def status_label(self, command: Command):
        """A pending command waits for the agent's next check-in: say when that is expected."""
        if command.status != CommandStatus.PENDING:
            return command_badge(command)
        return format_html('{}<br><span class="rf-muted">next check-in {}</span>', command_badge(command),
                           next_poll_label(command.agent))

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

    @admin.action(description="Cancel pending commands", permissions=["operate"])
    def cancel_pending(self, request, queryset):
        cancelled = commands_cancel(commands=queryset.select_related("agent"), actor=actor_of(request))
        skipped = queryset.count() - cancelled
        note = f"; {skipped} had already reached the agent or finished" if skipped else ""
        self.message_user(request, f"Cancelled {cancelled} command(s){note}.",
                          messages.SUCCESS if cancelled else messages.WARNING)

    @admin.action(description="Retry failed commands", permissions=["approve"])
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
class BulkOperationAdmin(ScopedAdminMixin, ReadOnlyDetailMixin, admin.ModelAdmin):
    """Progress of fleet actions; the change page refreshes itself every 2 s until the task finishes."""

    # An operation reaches its agents through many commands: a scoped user sees the ones they started.
    scope_owner_field = "created_by"

    list_display = ("__str__", "kind", "status_label", "progress", "requested", "done", "failed", "created_by",
                    "created_at")
    list_filter = ("kind", "status")
    list_select_related = ("created_by",)
    fields = ("kind", "status_label", "progress", "requested", "done", "failed", "errors_table", "params_pretty",
              "created_by", "created_at", "finished_at", "commands_created")
    readonly_fields = fields

    def get_queryset(self, request):
        # A finished operation whose commands later failed must not read as a success.
        return super().get_queryset(request).annotate(
            failed_commands=Count("commands", filter=Q(commands__status__in=FAILED_COMMAND_STATUSES)))

    @admin.display(description="status", ordering="status")
    def status_label(self, operation: BulkOperation):
        colour = {BulkOperation.Status.QUEUED: GREY, BulkOperation.Status.RUNNING: BLUE}.get(
            operation.status, RED if operation.failed or operation.failed_commands else GREEN)
        label = operation.get_status_display()
        if operation.failed_commands:
            label = f"{label}, {operation.failed_commands} command(s) failed"
        return badge(label, colour)

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
        rows = [(admin_link(command, command.title), command.agent.hostname, command_badge(command))
                for command in commands]
        outcomes = dict(operation.commands.order_by().values_list("status").annotate(count=Count("pk")))
        summary = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in sorted(outcomes.items()))
        link = format_html('<p>{} command(s) started{}. <a href="{}">All commands of this operation</a></p>',
                           sum(outcomes.values()), f": {summary}" if summary else "",
                           changelist_url(Command, bulk_operation=operation.pk))
        return format_html("{}{}", link, table(("Command", "Agent", "Status"), rows, "No commands (yet)."))


@admin.register(UpdateLog)
class UpdateLogAdmin(ScopedAdminMixin, ReadOnlyDetailMixin, admin.ModelAdmin):
    list_display = ("created_at", "agent", "action", "package_type", "package_count", "succeeded", "exit_code",
                    "duration_seconds")
    list_filter = ("action", "succeeded", "package_type")
    search_fields = ("agent__hostname",)
    list_select_related = ("agent",)
    fields = ("agent", "command", "action", "package_type", "packages", "succeeded", "exit_code",
              "duration_seconds", "created_at", "output")
    readonly_fields = fields

    @admin.display(description="packages")
    def package_count(self, log: UpdateLog) -> str:
        return names_in_words(log.packages or [])

    @admin.display(description="output tail")
    def output(self, log: UpdateLog):
        return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', log.output_tail or "(none)")
