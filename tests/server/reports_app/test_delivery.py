"""A scheduled report reaches a real local SMTP server through the notifications, CSV and PDF attached."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from pypdf import PdfReader

from events_app.choices import EventType
from notifications_app.choices import DeliveryStatus
from notifications_app.models import Delivery
from notifications_app.services import delivery_attempt, events_dispatch
from reports_app.models import Report, ReportSchedule
from reports_app.services import report_generate, report_request, report_schedules_run
from tests.server.notifications_app.conftest import make_destination, make_rule
from tests.server.notifications_app.receivers import SmtpReceiver
from tests.server.reports_app.conftest import NOW

pytestmark = pytest.mark.django_db

SMTP_USER, SMTP_PASSWORD = "reports", "Sm7p-pass-word"


def test_a_scheduled_report_is_mailed_with_its_csv_and_pdf(history, django_capture_on_commit_callbacks):
    ReportSchedule.objects.all().delete()
    ReportSchedule.objects.create(name="Weekly", every_days=7, deliver=True, next_run_at=NOW - timedelta(minutes=5))
    with SmtpReceiver(SMTP_USER, SMTP_PASSWORD) as smtp:
        mail = make_destination("ops mail", f"mailto://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{smtp.port}"
                                            "?from=redflag@example.com&to=ops@example.com")
        make_rule("reports", [mail], event_types=[EventType.REPORT])
        [report] = report_schedules_run(now=NOW)
        with django_capture_on_commit_callbacks(execute=True):  # the delivery is queued once the report is stored
            report_generate(report_id=report.pk, now=NOW)
        report.refresh_from_db()
        assert report.delivery == "queued for 1 destination(s)"
        delivery = Delivery.objects.get(event_type=EventType.REPORT, subject__startswith="[RedFlag] Compliance")
        assert delivery_attempt(delivery_id=delivery.pk) == DeliveryStatus.SENT
        # The report's own "requested" and "generated" events do not reach the same rule a second and third time.
        events_dispatch(now=NOW)
        assert Delivery.objects.filter(destination=mail).count() == 1
    [(_, recipients, message)] = [mail for mail in smtp.inbox.messages if "Compliance report" in mail[2]["Subject"]]
    assert recipients == ["ops@example.com"]
    assert message["Subject"] == "[RedFlag] Compliance report: Whole fleet, 50 % compliant"
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert "Critical (deadline 7 days): 3 of 4 compliant (75 %)" in body
    attachments = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(attachments) == {report.filename("csv"), report.filename("pdf")}
    rows = list(csv.DictReader(io.StringIO(attachments[report.filename("csv")].get_content())))
    assert {(row["severity"], row["value"]) for row in rows
            if row["section"] == "compliance" and row["measure"] == "compliance percent"} >= {("critical", "75.0")}
    pdf = PdfReader(io.BytesIO(attachments[report.filename("pdf")].get_content()))
    assert "critical 7 3 of 4 75 %" in " ".join(pdf.pages[0].extract_text().split())


def test_without_a_rule_taking_reports_the_report_says_it_was_not_sent(history, django_capture_on_commit_callbacks):
    report = report_request(period_days=7, deliver=True)
    with django_capture_on_commit_callbacks(execute=True):
        report_generate(report_id=report.pk, now=NOW)
    assert Report.objects.get(pk=report.pk).delivery == "not sent: no enabled notification rule takes reports"
    assert not Delivery.objects.filter(subject__startswith="[RedFlag] Compliance").exists()


def test_a_report_not_asked_to_be_sent_is_not(history, django_capture_on_commit_callbacks):
    make_rule("reports", [make_destination("hook", "ntfy://127.0.0.1:9/topic")], event_types=[EventType.REPORT])
    report = report_request(period_days=7, deliver=False)
    with django_capture_on_commit_callbacks(execute=True):
        report_generate(report_id=report.pk, now=NOW)
    assert Report.objects.get(pk=report.pk).delivery == ""
    assert not Delivery.objects.filter(subject__startswith="[RedFlag] Compliance").exists()
