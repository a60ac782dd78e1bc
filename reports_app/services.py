"""The reports' write paths: the daily snapshot, a report's request and generation, the schedules' sweep."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from agents_app.models import AgentGroup
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event
from notifications_app.services import notification_send
from reports_app.choices import FORMAT_MIME, ReportFormat, ReportStatus
from reports_app.compliance import fleet_counts, report_figures
from reports_app.models import MAX_PERIOD_DAYS, WHOLE_FLEET, FleetSnapshot, Report, ReportSchedule
from reports_app.rendering import render_csv, render_pdf

logger = logging.getLogger(__name__)

# A report still "running" this long after it started lost its worker: django-q2 stops a task after
# Q_CLUSTER["timeout"] (600 s), and its retry (Q_CLUSTER["retry"], 720 s) comes later than this, so the
# retry claims it again.
STALE_RUNNING = timedelta(minutes=11)
ERROR_CHARS = 1000


class ReportRefused(ValueError):
    """A report request that cannot be honoured (the message says why, for the admin form)."""


# --- daily snapshots --------------------------------------------------------------------------


def snapshot_take(*, now: datetime | None = None) -> list[FleetSnapshot]:
    """Record today's numbers for the whole fleet and each group; a second run the same day refreshes
    the day's rows (one per day and scope, by the unique constraints), so the day keeps its last figures.

    No SystemEvent: a snapshot is a measurement that changes nothing, taken every hour; the history
    would fill with it.
    """
    now = now or timezone.now()
    day = timezone.localdate(now)
    snapshots = []
    for group in [None, *AgentGroup.objects.order_by("pk")]:
        counts = fleet_counts(group=group, now=now)
        snapshot, _ = FleetSnapshot.objects.update_or_create(day=day, group=group, defaults={
            "taken_at": now,
            "machines": counts.machines,
            "online": counts.online,
            "outstanding_updates": counts.outstanding_updates,
            "outstanding_security": counts.outstanding_security,
            "compliant_machines": counts.compliant,
            "compliance_percent": counts.compliance_percent,
            "by_severity": {row.severity: row.percent for row in counts.by_severity},
        })
        snapshots.append(snapshot)
    return snapshots


# --- reports ----------------------------------------------------------------------------------


def report_request(*, group: AgentGroup | None = None, period_days: int, deliver: bool = False, user=None,
                   schedule: ReportSchedule | None = None) -> Report:
    """Queue a report and enqueue its generation when the transaction commits (a REPORT event records who asked)."""
    if not 1 <= period_days <= MAX_PERIOD_DAYS:
        raise ReportRefused(f"The period must be 1 to {MAX_PERIOD_DAYS} days, not {period_days}.")
    actor = user.get_username() if user else SYSTEM_ACTOR
    with transaction.atomic():
        report = Report.objects.create(group=group, scope_name=group.name if group else WHOLE_FLEET,
                                       period_days=period_days, deliver=deliver, requested_by=user, schedule=schedule)
        record_event(
            event_type=EventType.REPORT, subtype=EventSubtype.INITIATED, component=Component.REPORTS,
            message=f"Report requested: {report.scope_name}, last {period_days} day(s)"
                    + (f" (schedule {schedule.name})" if schedule else ""),
            metadata={"report_id": str(report.pk), "group_id": group.pk if group else None,
                      "period_days": period_days, "deliver": deliver,
                      "schedule_id": schedule.pk if schedule else None},
            actor=actor,
        )
        transaction.on_commit(lambda: async_task("reports_app.tasks.generate_report", str(report.pk),
                                                 task_name=f"report-{report.pk}"))
    return report


def _claim(report_id, now: datetime) -> bool:
    """Queued → running, or a running report whose worker died; False when another worker has it."""
    claimable = Q(status=ReportStatus.QUEUED) | Q(status=ReportStatus.RUNNING, started_at__lt=now - STALE_RUNNING)
    return Report.objects.filter(claimable, pk=report_id).update(status=ReportStatus.RUNNING, started_at=now) == 1


def report_generate(*, report_id, now: datetime | None = None) -> Report | None:
    """Compute, render and store one report (the django-q2 task's body); None when it was not ours to run.

    1. claim the report with a conditional UPDATE (queued → running), so two workers never both run it;
    2. compute the figures for its scope and period and render the CSV and the PDF;
    3. store them and record a REPORT success event in one transaction; on any error, mark it failed and
       record a failed event instead (the report never stays "running");
    4. after commit, send it through the notifications when it was asked for.
    """
    now = now or timezone.now()
    if not _claim(report_id, now):
        return None
    report = Report.objects.select_related("group").get(pk=report_id)
    try:
        figures = report_figures(group=report.group, period_days=report.period_days, now=now)
        csv_content, pdf_content = render_csv(figures), render_pdf(figures)
    except Exception as exc:  # noqa: BLE001 - any failure must end as a failed report, not a stuck one
        logger.exception("report %s failed", report.pk)
        _fail(report, f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
        return report
    counts = figures.counts
    with transaction.atomic():
        Report.objects.filter(pk=report.pk).update(
            status=ReportStatus.SUCCEEDED, period_start=figures.period_start, period_end=now,
            figures=figures.as_json(), csv_content=csv_content, pdf_content=pdf_content,
            finished_at=timezone.now(), error="")
        record_event(
            event_type=EventType.REPORT, subtype=EventSubtype.SUCCESS, component=Component.REPORTS,
            message=f"Report generated: {report.scope_name}, last {report.period_days} day(s): "
                    f"{counts.compliant} of {counts.machines} machine(s) compliant, "
                    f"{counts.outstanding_security} outstanding security update(s)",
            metadata={"report_id": str(report.pk), "machines": counts.machines, "compliant": counts.compliant,
                      "compliance_percent": counts.compliance_percent,
                      "outstanding_security": counts.outstanding_security,
                      "csv_bytes": len(csv_content), "pdf_bytes": len(pdf_content)},
        )
        if report.deliver:
            transaction.on_commit(lambda: report_deliver(report_id=report.pk))
    report.refresh_from_db()
    return report


def _fail(report: Report, error: str) -> None:
    with transaction.atomic():
        Report.objects.filter(pk=report.pk).update(status=ReportStatus.FAILED, error=error,
                                                   finished_at=timezone.now())
        record_event(
            event_type=EventType.REPORT, subtype=EventSubtype.FAILED, component=Component.REPORTS,
            severity=Severity.ERROR, message=f"Report failed: {report.scope_name}: {error[:200]}",
            metadata={"report_id": str(report.pk), "error": error},
        )
    report.refresh_from_db()


def report_message(report: Report) -> tuple[str, str]:
    """The notification's subject and body: the headline figures (the files carry the rest)."""
    counts = report.figures["counts"]
    subject = f"[RedFlag] Compliance report: {report.scope_name}, {_percent(counts['compliance_percent'])} compliant"
    lines = [
        f"RedFlag compliance report: {report.scope_name}",
        f"Period: {report.period_start:%Y-%m-%d %H:%M} to {report.period_end:%Y-%m-%d %H:%M} UTC",
        "",
        f"Machines: {counts['machines']} ({counts['online']} online)",
        f"Compliant (no overdue security update): {counts['compliant']} ({_percent(counts['compliance_percent'])})",
        f"Outstanding security updates: {counts['outstanding_security']} of {counts['outstanding_updates']}",
        "",
        *(f"{row['severity'].capitalize()} (deadline {row['deadline_days']} days): {row['compliant']} of "
          f"{row['machines']} compliant ({_percent(row['percent'])})" for row in counts["by_severity"]),
        "",
        "The CSV and the PDF are attached.",
    ]
    return subject, "\n".join(lines)


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:g} %"


def report_deliver(*, report_id) -> str:
    """Send a generated report, CSV and PDF attached, through the notifications: every destination of the
    enabled rules that take REPORT messages for its group (notifications_app.services.notification_send).
    Stores and returns what happened; a failure to queue is recorded on the report, not raised, since the
    report itself is done."""
    report = Report.objects.select_related("group").get(pk=report_id)
    subject, body = report_message(report)
    attachments = [(report.filename(file_format), bytes(content), FORMAT_MIME[file_format])
                   for file_format, content in ((ReportFormat.CSV, report.csv_content),
                                                (ReportFormat.PDF, report.pdf_content))]
    try:
        queued = notification_send(subject=subject, body=body, attachments=attachments,
                                   event_type=EventType.REPORT, group=report.group)
    except Exception as exc:  # noqa: BLE001 - the report stays; only its sending failed
        logger.exception("report %s not sent", report.pk)
        outcome = f"not sent: {type(exc).__name__}: {exc}"
    else:
        outcome = (f"queued for {queued} destination(s)" if queued
                   else "not sent: no enabled notification rule takes reports")
    Report.objects.filter(pk=report.pk).update(delivery=outcome[:255])
    return outcome


# --- schedules --------------------------------------------------------------------------------


def _schedule_words(schedule: ReportSchedule) -> str:
    scope = schedule.group.name if schedule.group_id else WHOLE_FLEET
    state = "" if schedule.enabled else ", disabled"
    return (f"{schedule.name}: {scope}, every {schedule.every_days} day(s) "
            f"from {schedule.next_run_at:%Y-%m-%d %H:%M} UTC{state}")


def report_schedule_save(*, schedule: ReportSchedule, actor: str, changed: list[str] | None = None) -> ReportSchedule:
    """Create or change a report schedule, recorded as a config_changed event naming what changed."""
    created = schedule._state.adding
    with transaction.atomic():
        schedule.full_clean()
        schedule.save()
        record_event(
            event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.INFO, component=Component.REPORTS,
            message=f"Report schedule {'created' if created else 'changed'}: {_schedule_words(schedule)}",
            metadata={"report_schedule_id": schedule.pk, "changed": sorted(changed or []),
                      "group_id": schedule.group_id, "every_days": schedule.every_days,
                      "enabled": schedule.enabled, "deliver": schedule.deliver},
            actor=actor,
        )
    return schedule


def report_schedule_delete(*, schedule: ReportSchedule, actor: str) -> None:
    with transaction.atomic():
        record_event(
            event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.INFO, component=Component.REPORTS,
            message=f"Report schedule deleted: {_schedule_words(schedule)}",
            metadata={"report_schedule_id": schedule.pk}, actor=actor,
        )
        schedule.delete()


def next_run_after(schedule: ReportSchedule, now: datetime) -> datetime:
    """The schedule's next run strictly after ``now``, whole periods on from the current one (so the
    time of day and the weekday stay, and runs missed while the server was down are not all replayed)."""
    period = timedelta(days=schedule.every_days)
    missed = max(0, int((now - schedule.next_run_at) / period)) + 1
    return schedule.next_run_at + missed * period


def report_schedules_run(*, now: datetime | None = None) -> list[Report]:
    """Request the report of every due schedule (the django-q2 sweep's body).

    1. read the enabled schedules whose next run has come;
    2. claim each with a conditional UPDATE that moves next_run_at on (only the worker whose UPDATE
       matched the old value requests the report, so two sweeps never produce it twice);
    3. request its report (queued, generated by its own task).
    """
    now = now or timezone.now()
    reports = []
    for schedule in ReportSchedule.objects.filter(enabled=True, next_run_at__lte=now).select_related("group"):
        claimed = ReportSchedule.objects.filter(pk=schedule.pk, next_run_at=schedule.next_run_at).update(
            next_run_at=next_run_after(schedule, now))
        if claimed:
            reports.append(report_request(group=schedule.group, period_days=schedule.every_days,
                                          deliver=schedule.deliver, schedule=schedule))
    return reports
