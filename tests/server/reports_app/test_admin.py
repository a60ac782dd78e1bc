"""Reports in the admin: generate now (a real django-q2 task run in this process), the report page,
the CSV and PDF downloads, the permissions, the navigation and the dashboard's trend charts."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from accounts_app.services import role_grants_replace
from events_app.choices import EventSubtype, EventType
from events_app.models import SystemEvent
from reports_app.choices import ReportStatus
from reports_app.models import FleetSnapshot, Report, ReportSchedule
from reports_app.services import report_generate, report_request
from tests.server.reports_app.conftest import NOW

pytestmark = pytest.mark.django_db

REPORTS = "/admin/reports_app/report/"
GENERATE = f"{REPORTS}generate/"
SCHEDULES = "/admin/reports_app/reportschedule/"


@pytest.fixture
def sync_queue(monkeypatch, django_capture_on_commit_callbacks):
    """django-q2's own synchronous mode: async_task runs the task in this process when the transaction commits
    (the enqueue → task → stored report path, without a cluster; the browser test runs a real one)."""
    monkeypatch.setattr("django_q.conf.Conf.SYNC", True)
    return lambda: django_capture_on_commit_callbacks(execute=True)


def generate_now(client, sync_queue, **form):
    with sync_queue():
        return client.post(GENERATE, {"period_days": "7", **form})


def test_generate_now_queues_a_report_whose_task_stores_the_csv_and_the_pdf(admin_client, history, sync_queue):
    response = generate_now(admin_client, sync_queue, group=str(history["web"].pk))
    report = Report.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{REPORTS}{report.pk}/change/"
    assert (report.status, report.scope_name, report.requested_by.username) == (
        ReportStatus.SUCCEEDED, "Web servers", "admin")
    assert SystemEvent.objects.get(event_type=EventType.REPORT, event_subtype=EventSubtype.INITIATED).actor == "admin"

    page = admin_client.get(f"{REPORTS}{report.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' not in page  # finished: the page stops refreshing
    csv_url, pdf_url = f"{REPORTS}{report.pk}/download/csv/", f"{REPORTS}{report.pk}/download/pdf/"
    assert csv_url in page and pdf_url in page

    download = admin_client.get(csv_url)
    assert download["Content-Type"] == "text/csv"
    assert download["Content-Disposition"] == f'attachment; filename="{report.filename("csv")}"'
    rows = list(csv.DictReader(io.StringIO(download.content.decode())))
    assert {row["subject"] for row in rows if row["section"] == "summary"} == {"Web servers"}
    pdf = admin_client.get(pdf_url)
    assert pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF-")


def test_a_queued_report_page_refreshes_itself_and_offers_no_download(admin_client, history):
    report = report_request(period_days=7)
    page = admin_client.get(f"{REPORTS}{report.pk}/change/").content.decode()
    assert '<meta http-equiv="refresh" content="2">' in page
    assert admin_client.get(f"{REPORTS}{report.pk}/download/csv/").status_code == 404


def test_the_generate_form_names_a_bad_period(admin_client, db):
    response = admin_client.post(GENERATE, {"period_days": "0"})
    assert response.status_code == 400
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    response = admin_client.post(GENERATE, {"period_days": "7", "group": "999999"})
    assert response.status_code == 400 and "Select a valid choice." in response.content.decode()
    assert not Report.objects.exists()


def test_an_unknown_format_or_report_is_a_404(admin_client, history):
    report = report_generate(report_id=report_request(period_days=7).pk, now=NOW)
    assert admin_client.get(f"{REPORTS}{report.pk}/download/docx/").status_code == 404
    assert admin_client.get(f"{REPORTS}00000000-0000-0000-0000-000000000000/download/csv/").status_code == 404


def test_reports_need_their_permissions(client, django_user_model, history):
    report = report_generate(report_id=report_request(period_days=7).pk, now=NOW)
    download = f"{REPORTS}{report.pk}/download/pdf/"
    assert client.get(download).status_code == 302  # anonymous: to the log-in page
    staff = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(download).status_code == 403
    assert client.get(GENERATE).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_report"))
    staff = django_user_model.objects.get(pk=staff.pk)  # permission cache
    client.force_login(staff)
    assert client.get(download).status_code == 200
    assert client.get(GENERATE).status_code == 403  # viewing is not generating
    assert "rf-generate-report" not in client.get(REPORTS).content.decode()


def test_the_list_shows_status_compliance_and_the_navigation_names_reports(admin_client, history):
    report_generate(report_id=report_request(period_days=7).pk, now=NOW)
    page = admin_client.get(REPORTS).content.decode()
    assert "50 % (2/4)" in page
    assert 'id="rf-generate-report"' in page
    assert f'href="{REPORTS}"' in page and ">Reports<" in page  # the top navigation bar


def test_a_schedules_generate_now_action(admin_client, history, sync_queue):
    schedule = ReportSchedule.objects.create(name="Web weekly", group=history["web"], every_days=7, deliver=False,
                                             next_run_at=NOW + timedelta(days=3))
    with sync_queue():
        response = admin_client.post(SCHEDULES, {"action": "generate_now", "_selected_action": [schedule.pk]})
    assert response.status_code == 302
    report = Report.objects.get()
    assert (report.schedule, report.scope_name, report.status) == (schedule, "Web servers", ReportStatus.SUCCEEDED)
    schedule.refresh_from_db()
    assert schedule.next_run_at == NOW + timedelta(days=3)  # generating now does not move the schedule


def test_the_dashboard_draws_the_trends_and_switches_to_90_days(admin_client, db, django_assert_max_num_queries):
    today = timezone.localdate()
    for offset in range(45):
        FleetSnapshot.objects.create(day=today - timedelta(days=offset), machines=4, online=3,
                                     outstanding_updates=9, outstanding_security=4 + offset, compliant_machines=3,
                                     compliance_percent=75.0)
    page = admin_client.get("/admin/").content.decode()
    assert "Trends over 30 days" in page
    assert '<title id="rf-trend-compliance-title">Compliance (machines with no overdue security update)</title>' in page
    assert "Security updates from 33 to 4" in page  # 29 days ago → today
    assert 'href="?trend=90#rf-trends"' in page
    page = admin_client.get("/admin/?trend=90").content.decode()
    assert "Trends over 90 days" in page and "Security updates from 48 to 4" in page
    assert "Trends over 30 days" in admin_client.get("/admin/?trend=7; DROP").content.decode()  # anything else: 30


def test_a_group_a_schedule_reports_on_cannot_be_deleted_until_the_schedule_changes(admin_client, history):
    web = history["web"]
    ReportSchedule.objects.create(name="Web weekly", group=web, every_days=7, next_run_at=NOW)
    page = admin_client.get(f"/admin/agents_app/agentgroup/{web.pk}/delete/").content.decode()
    assert "protected" in page and "Web weekly" in page
    admin_client.post(f"/admin/agents_app/agentgroup/{web.pk}/delete/", {"post": "yes"})
    assert type(web).objects.filter(pk=web.pk).exists()


def test_a_viewer_of_one_group_sees_that_groups_reports_and_trends_only(client, django_user_model, history):
    web = history["web"]
    fleet_report = report_generate(report_id=report_request(period_days=7).pk, now=NOW)
    web_report = report_generate(report_id=report_request(group=web, period_days=7).pk, now=NOW)
    today = timezone.localdate()
    FleetSnapshot.objects.create(day=today, machines=4, online=3, outstanding_updates=5, outstanding_security=41,
                                 compliant_machines=2, compliance_percent=50.0)
    FleetSnapshot.objects.create(day=today, group=web, machines=2, online=2, outstanding_updates=3,
                                 outstanding_security=17, compliant_machines=0, compliance_percent=0.0)
    viewer = django_user_model.objects.create_user("web-viewer", password="pw")
    role_grants_replace(user=viewer, grants=[("viewer", ["Web servers"])], actor="admin", source="admin")
    client.force_login(django_user_model.objects.get(pk=viewer.pk))

    listing = client.get(REPORTS).content.decode()
    assert f"{REPORTS}{web_report.pk}/change/" in listing and str(fleet_report.pk) not in listing
    assert client.get(f"{REPORTS}{web_report.pk}/download/csv/").status_code == 200
    assert client.get(f"{REPORTS}{fleet_report.pk}/download/csv/").status_code == 404  # not theirs to see
    dashboard = client.get("/admin/").content.decode()
    assert "Trends over 30 days: Web servers" in dashboard
    assert "Security updates from 17 to 17" in dashboard and "from 41 to 41" not in dashboard
