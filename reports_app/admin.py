"""Reports in the admin: the generated reports (download CSV / PDF, "Generate now") and their schedules."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from agents_app.admin.common import BLUE, GREEN, GREY, RED, ReadOnlyDetailMixin, actor_of, badge, neutral, table
from agents_app.models import AgentGroup
from redflag.access import is_fleet_wide, scope_by_groups
from redflag.admin_scoping import ScopedAdminMixin
from reports_app.choices import FORMAT_MIME, ReportFormat, ReportStatus
from reports_app.models import MAX_PERIOD_DAYS, Report, ReportSchedule
from reports_app.services import ReportRefused, report_request, report_schedule_delete, report_schedule_save

STATUS_COLOURS = {ReportStatus.QUEUED: GREY, ReportStatus.RUNNING: BLUE, ReportStatus.SUCCEEDED: GREEN,
                  ReportStatus.FAILED: RED}
GENERATE_PERMISSION = "reports_app.add_report"


def groups_for(user, perm: str):
    return scope_by_groups(AgentGroup.objects.all(), user, "", perm)


class GenerateForm(forms.Form):
    group = forms.ModelChoiceField(queryset=AgentGroup.objects.none(), required=False, empty_label="Whole fleet",
                                   help_text="The agents the report covers.")
    period_days = forms.IntegerField(label="Period (days)", min_value=1, max_value=MAX_PERIOD_DAYS, initial=7,
                                     help_text="The report covers the days up to now.")
    deliver = forms.BooleanField(label="Also send it through the notifications", required=False)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        # A user whose roles reach some groups reports on those; the whole fleet is for fleet-wide users.
        self.fields["group"].queryset = groups_for(user, GENERATE_PERMISSION)
        self.fields["group"].required = not is_fleet_wide(user, GENERATE_PERMISSION)


def _percent(value) -> str:
    return "—" if value is None else f"{value:g} %"


@admin.register(Report)
class ReportAdmin(ScopedAdminMixin, ReadOnlyDetailMixin, admin.ModelAdmin):
    """Generated reports; the change page refreshes itself until the django-q2 task has finished.

    A user whose roles reach some groups sees those groups' reports (and downloads only those); the
    whole fleet's reports are for fleet-wide users (redflag.admin_scoping).
    """

    scope_agent_path = None
    scope_group_path = "group"

    list_display = ("__str__", "scope_name", "period_days", "status_label", "compliance", "downloads", "sent",
                    "created_at")
    list_filter = ("status", "scope_name")
    list_select_related = ("requested_by",)
    fields = ("scope_name", "period", "status_label", "summary", "downloads", "sent", "error",
              "schedule", "requested_by", "created_at", "started_at", "finished_at")
    readonly_fields = fields

    def get_queryset(self, request):
        # The list never needs the files; a page of 100 reports would otherwise read them all.
        return super().get_queryset(request).defer("csv_content", "pdf_content")

    def get_urls(self):
        own = [
            path("generate/", self.admin_site.admin_view(self.generate_view), name="reports_app_report_generate"),
            path("<uuid:report_id>/download/<str:file_format>/", self.admin_site.admin_view(self.download_view),
                 name="reports_app_report_download"),
        ]
        return own + super().get_urls()

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}),
                         "can_generate": request.user.has_perm(GENERATE_PERMISSION)}
        return super().changelist_view(request, extra_context)

    @admin.display(description="status", ordering="status")
    def status_label(self, report: Report):
        return badge(report.get_status_display(), STATUS_COLOURS.get(report.status, GREY))

    @admin.display(description="compliance")
    def compliance(self, report: Report):
        counts = (report.figures or {}).get("counts")
        if not counts:
            return "—"
        return f"{_percent(counts.get('compliance_percent'))} ({counts.get('compliant')}/{counts.get('machines')})"

    @admin.display(description="sent through notifications")
    def sent(self, report: Report):
        if not report.deliver:
            return neutral("not asked")
        return report.delivery or neutral("once generated")

    @admin.display(description="period")
    def period(self, report: Report):
        if report.period_start is None:
            return f"the last {report.period_days} day(s), from when it is generated"
        return f"{report.period_start:%Y-%m-%d %H:%M} to {report.period_end:%Y-%m-%d %H:%M} UTC"

    @admin.display(description="download")
    def downloads(self, report: Report):
        if report.status != ReportStatus.SUCCEEDED:
            return "—"
        return format_html_join(" · ", '<a class="rf-download" href="{}" download>{}</a>', (
            (reverse("admin:reports_app_report_download", args=[report.pk, file_format]), file_format.label)
            for file_format in ReportFormat))

    @admin.display(description="figures")
    def summary(self, report: Report):
        counts = (report.figures or {}).get("counts")
        if not counts:
            return "Not generated yet."
        totals = table(("Machines", "Online", "Outstanding updates", "Security updates", "Compliant"), [(
            counts["machines"], counts["online"], counts["outstanding_updates"], counts["outstanding_security"],
            f"{counts['compliant']} ({_percent(counts['compliance_percent'])})")], "")
        severities = table(("Severity", "Deadline (days)", "Compliant", "Median days to patch", "Patched"), [
            (row["severity"], row["deadline_days"], f"{row['compliant']} ({_percent(row['percent'])})",
             "—" if patch["median_days"] is None else patch["median_days"], patch["patched"])
            for row, patch in zip(counts["by_severity"], report.figures.get("time_to_patch", []), strict=False)
        ], "")
        overdue = len({row["hostname"] for row in report.figures.get("overdue_machines", [])})
        return format_html("{}{}<p>{} machine(s) with an overdue security update; the CSV lists them.</p>",
                           totals, severities, overdue)

    def download_view(self, request, report_id, file_format: str):
        if not self.has_view_permission(request):
            raise PermissionDenied
        if file_format not in ReportFormat.values:
            raise Http404("No such format: CSV or PDF.")
        report = get_object_or_404(self.get_queryset(request).defer(None), pk=report_id,
                                   status=ReportStatus.SUCCEEDED)
        content = bytes(report.csv_content if file_format == ReportFormat.CSV else report.pdf_content)
        response = HttpResponse(content, content_type=FORMAT_MIME[ReportFormat(file_format)])
        response["Content-Disposition"] = f'attachment; filename="{report.filename(file_format)}"'
        return response

    def generate_view(self, request):
        """Generate now: a form (scope, period, send or not); the report is queued and its page follows it."""
        if not request.user.has_perm(GENERATE_PERMISSION):
            raise PermissionDenied
        form = GenerateForm(request.POST or None, user=request.user)
        if request.method == "POST" and form.is_valid():
            try:
                report = report_request(group=form.cleaned_data["group"],
                                        period_days=form.cleaned_data["period_days"],
                                        deliver=form.cleaned_data["deliver"], user=request.user)
            except ReportRefused as exc:
                form.add_error(None, str(exc))
            else:
                self.message_user(request, f"Report queued: {report.scope_name}, last {report.period_days} day(s).",
                                  messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:reports_app_report_change", args=[report.pk]))
        context = {**self.admin_site.each_context(request), "title": "Generate a report now", "form": form,
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/reports_app/report/generate.html", context,
                                status=400 if request.method == "POST" else 200)


@admin.register(ReportSchedule)
class ReportScheduleAdmin(ScopedAdminMixin, admin.ModelAdmin):
    scope_agent_path = None
    scope_group_path = "group"
    list_display = ("name", "group", "every_days", "next_run_at", "enabled", "deliver", "last_report")
    list_filter = ("enabled", "deliver")
    list_select_related = ("group",)
    fields = ("name", "group", "every_days", "next_run_at", "enabled", "deliver")
    actions = ("generate_now",)

    def save_model(self, request, obj, form, change):
        report_schedule_save(schedule=obj, actor=actor_of(request), changed=form.changed_data)

    def delete_model(self, request, obj):
        report_schedule_delete(schedule=obj, actor=actor_of(request))

    def delete_queryset(self, request, queryset):
        for schedule in queryset:
            report_schedule_delete(schedule=schedule, actor=actor_of(request))

    @admin.display(description="last report")
    def last_report(self, schedule: ReportSchedule):
        report = schedule.reports.defer("csv_content", "pdf_content").order_by("-created_at").first()
        if report is None:
            return "—"
        return format_html('<a href="{}">{}</a>', reverse("admin:reports_app_report_change", args=[report.pk]),
                           report.get_status_display())

    @admin.action(description="Generate now", permissions=["generate"])
    def generate_now(self, request, queryset):
        for schedule in queryset.select_related("group"):
            report_request(group=schedule.group, period_days=schedule.every_days, deliver=schedule.deliver,
                           user=request.user, schedule=schedule)
        self.message_user(request, f"{queryset.count()} report(s) queued.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:reports_app_report_changelist"))

    def has_generate_permission(self, request) -> bool:
        return request.user.has_perm(GENERATE_PERMISSION)

    def _action_perm(self, func) -> str | None:
        # "Generate now" adds reports: its selection must lie where the user may add them.
        return GENERATE_PERMISSION if func.__name__ == "generate_now" else super()._action_perm(func)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "group":
            kwargs["queryset"] = groups_for(request.user, self._model_perm("change"))
            kwargs["required"] = not is_fleet_wide(request.user, self._model_perm("change"))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
