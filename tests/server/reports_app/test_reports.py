"""A report generated from the seeded history: its CSV and its PDF (parsed back) hold the hand-picked figures;
its generation is claimed once, recorded as REPORT events, and a failure ends as a failed report."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_q.models import Schedule
from pypdf import PdfReader

from events_app.choices import EventSubtype, EventType
from events_app.models import SystemEvent
from reports_app import services
from reports_app.choices import ReportStatus
from reports_app.models import FleetSnapshot, Report, ReportSchedule
from reports_app.services import (
    ReportRefused,
    next_run_after,
    report_generate,
    report_request,
    report_schedules_run,
)
from tests.server.reports_app.conftest import DAY, NOW, add_machines, machine, update

pytestmark = pytest.mark.django_db

WEEK = 7


def generated(group=None, period_days: int = WEEK) -> Report:
    report = report_request(group=group, period_days=period_days)
    result = report_generate(report_id=report.pk, now=NOW)
    assert result is not None and result.status == ReportStatus.SUCCEEDED, result and result.error
    return result


def csv_rows(report: Report) -> dict[tuple[str, str, str, str], str]:
    rows = list(csv.DictReader(io.StringIO(bytes(report.csv_content).decode())))
    return {(row["section"], row["subject"], row["severity"], row["measure"]): row["value"] for row in rows}


def pdf_text(report: Report) -> str:
    """The PDF's text with each run of white space as one space (pypdf puts each table cell on its own line)."""
    reader = PdfReader(io.BytesIO(bytes(report.pdf_content)))
    return " ".join(" ".join(page.extract_text() for page in reader.pages).split())


def test_the_csv_holds_the_hand_picked_figures(history):
    rows = csv_rows(generated())
    fleet = "Whole fleet"
    assert rows["summary", fleet, "", "machines"] == "4"
    assert rows["summary", fleet, "", "machines online"] == "3"
    assert rows["summary", fleet, "", "compliance percent"] == "50.0"
    assert rows["summary", fleet, "", "outstanding security updates"] == "4"
    assert rows["compliance", fleet, "critical", "compliance percent"] == "75.0"
    assert rows["compliance", fleet, "critical", "deadline days"] == "7"
    assert rows["compliance", fleet, "moderate", "compliance percent"] == "100.0"
    assert rows["time to patch", fleet, "critical", "median days"] == "3.0"
    assert rows["time to patch", fleet, "important", "median days"] == "5.0"
    assert rows["time to patch", fleet, "low", "median days"] == ""  # nothing patched: no figure, not 0
    assert rows["overdue machine", "web-01", "critical", "oldest days"] == "8.0"
    assert rows["overdue machine", "web-02", "important", "overdue updates"] == "1"
    assert rows["overdue package", "curl (APT)", "important", "machines"] == "1"
    assert ("overdue machine", "db-01", "moderate", "overdue updates") not in rows
    assert rows["summary", fleet, "", "generated at"] == NOW.isoformat()
    assert rows["summary", fleet, "", "period start"] == (NOW - WEEK * DAY).isoformat()


def test_the_pdf_parsed_back_holds_the_same_figures(history):
    report = generated()
    assert bytes(report.pdf_content).startswith(b"%PDF-")
    text = pdf_text(report)
    assert "RedFlag compliance report: Whole fleet" in text
    assert "Period 2026-11-24 12:00 UTC to 2026-12-01 12:00 UTC" in text
    assert "critical 7 3 of 4 75 %" in text
    assert "important 14 3 of 4 75 %" in text
    assert "Compliance 50 %" in text
    assert "critical 1 3 3 3" in text  # time to patch: patched, median, mean, longest
    assert "web-02 important 1 15" in text
    assert "curl (APT) important 1 15" in text


def test_a_group_report_covers_its_machines_only(history):
    report = generated(group=history["web"])
    assert report.scope_name == "Web servers"
    rows = csv_rows(report)
    assert rows["summary", "Web servers", "", "machines"] == "2"
    assert rows["compliance", "Web servers", "critical", "compliance percent"] == "50.0"
    assert "db-01" not in bytes(report.csv_content).decode()
    assert "RedFlag compliance report: Web servers" in pdf_text(report)


def test_names_from_agents_stay_text_in_the_csv_and_the_pdf(db):
    hostile = machine('=HYPERLINK("http://evil.example")')
    update(hostile, "openssl", "critical", age=9 * DAY)
    markup = machine("<b>db</b>&amp;")
    update(markup, "openssl", "critical", age=9 * DAY)
    report = generated()
    content = bytes(report.csv_content).decode()
    assert "'=HYPERLINK" in content and ",=HYPERLINK" not in content  # a spreadsheet will not run it
    assert "<b>db</b>&amp;" in pdf_text(report)  # reportlab drew the characters, not markup


def test_each_generation_records_report_events_and_a_report_runs_once(history):
    report = report_request(period_days=WEEK)
    requested = SystemEvent.objects.get(event_type=EventType.REPORT, event_subtype=EventSubtype.INITIATED)
    assert requested.metadata["report_id"] == str(report.pk)
    assert report_generate(report_id=report.pk, now=NOW).status == ReportStatus.SUCCEEDED
    assert report_generate(report_id=report.pk, now=NOW) is None  # a second worker (django-q2's retry) backs off
    done = SystemEvent.objects.get(event_type=EventType.REPORT, event_subtype=EventSubtype.SUCCESS)
    assert done.message == ("Report generated: Whole fleet, last 7 day(s): 2 of 4 machine(s) compliant, "
                            "4 outstanding security update(s)")
    assert (done.metadata["compliance_percent"], done.metadata["machines"]) == (50.0, 4)


def test_a_report_whose_worker_died_is_claimed_again_after_a_while(history):
    report = report_request(period_days=WEEK)
    Report.objects.filter(pk=report.pk).update(status=ReportStatus.RUNNING, started_at=NOW - timedelta(minutes=5))
    assert report_generate(report_id=report.pk, now=NOW) is None  # still in another worker's hands
    Report.objects.filter(pk=report.pk).update(started_at=NOW - timedelta(minutes=16))
    assert report_generate(report_id=report.pk, now=NOW).status == ReportStatus.SUCCEEDED


def test_a_failure_ends_as_a_failed_report_with_an_event(history, monkeypatch):
    def broken(figures):
        raise OSError("disk full")

    monkeypatch.setattr("reports_app.services.render_pdf", broken)
    report = report_request(period_days=WEEK)
    result = report_generate(report_id=report.pk, now=NOW)
    assert (result.status, result.error) == (ReportStatus.FAILED, "OSError: disk full")
    assert result.finished_at is not None and bytes(result.pdf_content) == b""
    failed = SystemEvent.objects.get(event_type=EventType.REPORT, event_subtype=EventSubtype.FAILED)
    assert failed.metadata == {"report_id": str(report.pk), "error": "OSError: disk full"}


def test_a_period_out_of_range_is_refused(db):
    for days in (0, 367):
        with pytest.raises(ReportRefused, match="1 to 366 days"):
            report_request(period_days=days)
    assert not Report.objects.exists()


def test_generation_costs_the_same_queries_for_4_or_44_machines(history):
    def run() -> int:
        report = report_request(period_days=WEEK)
        with CaptureQueriesContext(connection) as captured:
            report_generate(report_id=report.pk, now=NOW)
        return len(captured)

    run()  # warms ServerSettings' per-process cache
    small = run()
    add_machines(40)
    assert run() == small


# --- schedules ----------------------------------------------------------------------------------


def test_the_default_weekly_schedule_and_the_django_q_schedules_are_registered(db):
    weekly = ReportSchedule.objects.get(name="Weekly fleet report")
    assert (weekly.every_days, weekly.group, weekly.enabled, weekly.deliver) == (7, None, True, True)
    assert (weekly.next_run_at.weekday(), weekly.next_run_at.hour) == (0, 6)  # Mondays, 06:00 UTC
    funcs = dict(Schedule.objects.filter(func__startswith="reports_app.").values_list("func", "minutes"))
    assert funcs == {"reports_app.tasks.take_snapshots": 60, "reports_app.tasks.run_report_schedules": 15}


def test_a_due_schedule_requests_one_report_and_moves_on_a_whole_period(history):
    ReportSchedule.objects.all().delete()
    due = ReportSchedule.objects.create(name="Web weekly", group=history["web"], every_days=7, deliver=False,
                                        next_run_at=NOW - timedelta(hours=1))
    ReportSchedule.objects.create(name="Later", every_days=7, next_run_at=NOW + timedelta(hours=1))
    ReportSchedule.objects.create(name="Off", every_days=7, next_run_at=NOW - DAY, enabled=False)
    reports = report_schedules_run(now=NOW)
    assert [(report.scope_name, report.period_days, report.schedule_id) for report in reports] == [
        ("Web servers", 7, due.pk)]
    due.refresh_from_db()
    assert due.next_run_at == NOW - timedelta(hours=1) + 7 * DAY  # same weekday and time next week
    assert report_schedules_run(now=NOW) == []  # not due again


def test_runs_missed_while_the_server_was_down_are_not_replayed(db):
    schedule = ReportSchedule(every_days=7, next_run_at=NOW - 20 * DAY)
    assert next_run_after(schedule, NOW) == NOW + DAY  # three periods on, the first one after now


def test_the_sweep_that_loses_the_claim_requests_nothing(history, monkeypatch):
    """Another sweep moves the schedule on between this one's read and its conditional UPDATE."""
    ReportSchedule.objects.all().delete()
    schedule = ReportSchedule.objects.create(name="Weekly", every_days=7, next_run_at=NOW - timedelta(hours=1))
    real_next_run_after = services.next_run_after

    def other_sweep_wins(read_schedule, now):
        ReportSchedule.objects.filter(pk=read_schedule.pk).update(next_run_at=NOW + 6 * DAY)
        return real_next_run_after(read_schedule, now)

    monkeypatch.setattr(services, "next_run_after", other_sweep_wins)
    assert report_schedules_run(now=NOW) == []
    assert not Report.objects.exists()
    schedule.refresh_from_db()
    assert schedule.next_run_at == NOW + 6 * DAY  # the winner's value stands


def test_schedule_changes_are_recorded_as_config_changes(admin_client, history):
    response = admin_client.post("/admin/reports_app/reportschedule/add/", {
        "name": "Web monthly", "group": history["web"].pk, "every_days": "30", "next_run_at_0": "2026-12-07",
        "next_run_at_1": "06:00:00", "enabled": "on", "deliver": "on"})
    assert response.status_code == 302, response.content.decode()[:2000]
    schedule = ReportSchedule.objects.get(name="Web monthly")
    event = SystemEvent.objects.get(event_type=EventType.CONFIG_CHANGED, metadata__report_schedule_id=schedule.pk)
    assert (event.actor, event.message) == (
        "admin", "Report schedule created: Web monthly: Web servers, every 30 day(s) from 2026-12-07 06:00 UTC")
    response = admin_client.post(f"/admin/reports_app/reportschedule/{schedule.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not ReportSchedule.objects.filter(pk=schedule.pk).exists()
    assert SystemEvent.objects.filter(message__startswith="Report schedule deleted: Web monthly").count() == 1


def test_a_schedule_needs_a_period_of_1_to_366_days(admin_client, db):
    response = admin_client.post("/admin/reports_app/reportschedule/add/", {
        "name": "Never", "every_days": "0", "next_run_at_0": "2026-12-07", "next_run_at_1": "06:00:00"})
    assert response.status_code == 200
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    assert not ReportSchedule.objects.filter(name="Never").exists()


def test_the_report_carries_the_periods_daily_snapshots(history):
    for age, percent in ((6, 25.0), (5, 50.0), (1, 75.0)):  # days 2 to 4 of the week were not measured
        FleetSnapshot.objects.create(day=(NOW - age * DAY).date(), machines=4, online=3, outstanding_updates=6,
                                     outstanding_security=10 - age, compliant_machines=int(percent) // 25,
                                     compliance_percent=percent)
    FleetSnapshot.objects.create(day=(NOW - 9 * DAY).date(), machines=4, online=3, outstanding_updates=6,
                                 outstanding_security=1, compliant_machines=0, compliance_percent=0.0)  # before
    FleetSnapshot.objects.create(day=(NOW - DAY).date(), group=history["web"], machines=2, online=2,
                                 outstanding_updates=3, outstanding_security=3, compliant_machines=0,
                                 compliance_percent=0.0)  # the group's own row
    report = generated()
    rows = csv_rows(report)
    assert [(day, rows["trend", day, "", "compliance percent"]) for day in ("2026-11-25", "2026-11-26", "2026-11-30")
            ] == [("2026-11-25", "25.0"), ("2026-11-26", "50.0"), ("2026-11-30", "75.0")]
    assert rows["trend", "2026-11-30", "", "outstanding security updates"] == "9"
    assert not any(key[0] == "trend" and key[1] in ("2026-11-22", "2026-11-27") for key in rows)
    assert ("Compliance went from 25 % on 2026-11-25 to 75 % on 2026-11-30 (3 daily snapshots)."
            in pdf_text(report))
    web = csv_rows(generated(group=history["web"]))
    assert [key[1] for key in web if key[0] == "trend" and key[3] == "compliance percent"] == ["2026-11-30"]


def test_a_period_without_snapshots_says_so(history):
    assert "No daily snapshot in this period." in pdf_text(generated())
