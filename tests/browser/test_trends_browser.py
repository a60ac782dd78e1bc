"""The dashboard's trend charts in a real browser (seeded daily snapshots, 30 and 90 days), and a report
generated from the admin by a real django-q2 cluster, its page following the task until the downloads appear."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from playwright.sync_api import expect

from agents_app.models import Agent, PackageUpdate
from reports_app.models import FleetSnapshot, Report
from tests.browser.conftest import screenshot
from tests.server.conftest import machine_hash

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-reports-pw"
QUARTER = 90
REPORT_TIMEOUT_MS = 60_000  # cluster start-up (a few seconds) plus one poll and the PDF


def sign_in(page, live_server, user) -> None:
    """Hand the browser a signed-in session (these tests are about reports, not the sign-in page)."""
    client = Client()
    client.force_login(user)
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "url": live_server.url,
                               "value": client.cookies[settings.SESSION_COOKIE_NAME].value}])
    page.goto("/admin/")


@pytest.fixture
def history(django_user_model):
    """90 days of snapshots: compliance climbing from 46 % to 90 %, security updates falling from 89 to 0,
    40 machines of which 30 to 32 online; a gap on days 10 to 12 (the server was down)."""
    today = timezone.localdate()
    FleetSnapshot.objects.bulk_create([
        FleetSnapshot(day=today - timedelta(days=age), machines=40, online=30 + age % 3,
                      outstanding_updates=120 + age, outstanding_security=age, compliant_machines=36 - age * 2 // 5,
                      compliance_percent=round(90 - age / 2, 1))
        for age in range(QUARTER) if age not in (10, 11, 12)
    ])
    return today


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("admin", "admin@example.net", PASSWORD)


def test_the_dashboard_draws_the_fleets_trends(page, live_server, history, admin_user):
    sign_in(page, live_server, admin_user)
    trends = page.locator("#rf-trends")
    expect(trends.locator("h2")).to_have_text("Trends over 30 days")
    charts = trends.locator("figure.rf-trend")
    expect(charts).to_have_count(3)
    compliance = page.locator("#rf-trend-compliance svg")
    expect(compliance).to_be_visible()
    assert compliance.get_attribute("role") == "img"
    expect(compliance.locator("desc")).to_have_text(
        "Compliance (machines with no overdue security update), "
        f"{history - timedelta(days=29):%d %b %Y} to {history:%d %b %Y}: Compliant from 75.5 % to 90 %.")
    # 30 days less the three-day gap: 27 points, and the gap splits the line in two.
    expect(compliance.locator("circle")).to_have_count(27)
    expect(compliance.locator("polyline")).to_have_count(2)
    box = compliance.bounding_box()
    assert box["width"] > 300 and box["height"] > 100  # drawn, not collapsed
    expect(page.locator("#rf-trend-machines circle")).to_have_count(54)  # online and total

    # The numbers behind a chart, in a table.
    page.locator("#rf-trend-security summary").click()
    expect(page.locator("#rf-trend-security table tbody tr").first).to_contain_text("29")
    expect(page.locator("#rf-trend-security table tbody tr").last).to_have_text(f"{history.isoformat()}0")
    screenshot(page, "dashboard_trends_30_days")

    page.locator("#rf-trends").get_by_role("link", name="90 days").click()
    expect(page.locator("#rf-trends h2")).to_have_text("Trends over 90 days")
    expect(page.locator("#rf-trend-compliance circle")).to_have_count(QUARTER - 3)
    expect(page.locator("#rf-trend-security desc")).to_contain_text("Security updates from 89 to 0")
    page.locator("#rf-trends").scroll_into_view_if_needed()
    screenshot(page, "dashboard_trends_90_days")


def test_generate_now_runs_in_the_cluster_and_the_report_downloads(page, live_server, admin_user, qcluster):
    now = timezone.now()
    for index in range(4):
        agent = Agent.objects.create(hostname=f"web-0{index}", machine_id_hash=machine_hash(), os_family="linux",
                                     last_seen_at=now - timedelta(minutes=1))
        if index == 0:
            PackageUpdate.objects.create(agent=agent, package_type="apt", name="openssl", current_version="3.0.11",
                                         available_version="3.0.13", severity="critical", is_security=True,
                                         first_seen_at=now - timedelta(days=8))
    sign_in(page, live_server, admin_user)
    page.get_by_role("link", name="Reports", exact=True).first.click()
    page.click("#rf-generate-report")
    page.fill("#id_period_days", "7")
    page.click("#rf-generate-form [type=submit]")
    expect(page.locator("ul.messagelist")).to_contain_text("Report queued: Whole fleet, last 7 day(s).")
    # The page refreshes itself until the cluster has stored the report.
    expect(page.locator(".field-status_label .readonly")).to_have_text("Succeeded", timeout=REPORT_TIMEOUT_MS)
    expect(page.locator(".field-summary")).to_contain_text("3 (75 %)")
    screenshot(page, "report")
    with page.expect_download() as download_info:
        page.locator("a.rf-download", has_text="CSV").click()
    download = download_info.value
    report = Report.objects.get()
    assert download.suggested_filename == report.filename("csv")
    rows = list(csv.DictReader(io.StringIO(download.path().read_text())))
    assert {row["value"] for row in rows if row["section"] == "compliance" and row["severity"] == "critical"
            and row["measure"] == "compliance percent"} == {"75.0"}
