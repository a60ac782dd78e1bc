"""Every list at 1366×768, the smallest screen the admin is built for (issue 13): no admin changelist and not
the auditor's history needs horizontal scrolling to reach a column, measured as the browser lays the page out
(each column header's bounding box against the viewport), with a realistic fleet's long names in the rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ, Schedule, Task
from playwright.sync_api import expect

from agents_app.choices import CommandSource
from agents_app.models import Agent, AgentGroup, AgentSubsystem, BulkOperation, PackageUpdate, UpdateLog
from agents_app.services.commands import command_create
from agents_app.services.releases import release_build
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import audit_token_issue, record_event
from redflag.models import ServerSettings
from tests.browser.conftest import LAPTOP, leave_and_wait_for_streams, log_in, screenshot
from tests.server.conftest import machine_hash
from tokens_app.services import token_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "layout-admin-pw"
# Names as long as real ones get: FQDN hostnames, Debian kernel packages, backport versions.
HOSTNAME = "build-runner-07.lab.example.internal"
PACKAGE = "linux-image-6.1.0-28-cloud-amd64-unsigned"
CURRENT, AVAILABLE = "6.1.119-1+deb12u1~bpo11+1", "6.1.123-1+deb12u2~bpo11+1"

# The columns each list exists for (issue 13); the test below checks every column of every list, and these
# by name, so that a renamed or dropped column fails here rather than passing unmeasured.
NAMED_COLUMNS = {
    "agents_app_packageupdate": ("severity", "security", "status", "changed"),
    "agents_app_agent": ("status", "reboot"),
    "tokens_app_registrationtoken": ("status", "created"),
}
STREAM_SECONDS = 4  # the history page's stream ends soon after the test leaves it
# Apps whose every list the fixture fills with a row (an empty list has no table to measure).
FIXTURE_APPS = ("agents_app", "tokens_app", "events_app", "redflag", "auth", "django_q")


@pytest.fixture
def fleet(django_user_model, settings):
    """One row in every admin list, with the longest values the lists have to show."""
    ServerSettings.forget()
    settings.REDFLAG_EVENT_STREAM_SECONDS = STREAM_SECONDS
    user = django_user_model.objects.create_superuser("admin", "admin@example.net", PASSWORD)
    now = timezone.now()
    agent = Agent.objects.create(hostname=HOSTNAME, machine_id_hash=machine_hash(), os_family="linux",
                                 os_name="Red Hat Enterprise Linux", os_version="9.4 (Plow)",
                                 agent_version="0.1.23.5", last_seen_at=now, reboot_required=True,
                                 tags=["production", "eu-west"])
    AgentSubsystem.objects.create(agent=agent, name="apt", next_run_at=now + timedelta(hours=6))
    PackageUpdate.objects.create(agent=agent, package_type="apt", name=PACKAGE, current_version=CURRENT,
                                 available_version=AVAILABLE, severity="important", is_security=True)
    with transaction.atomic():
        command_create(agent=agent, command_type="scan_updates", params={}, source=CommandSource.WEB_UI_BULK,
                       created_by=user)
        record_event(event_type=EventType.AGENT_UPDATE, subtype=EventSubtype.SUCCESS, component=Component.AGENT,
                     severity=Severity.WARNING, agent=agent, hostname=HOSTNAME,
                     message=f"install_updates succeeded: {PACKAGE} {CURRENT} → {AVAILABLE}")
    BulkOperation.objects.create(kind=BulkOperation.Kind.SCAN, requested=120, done=118, failed=2, created_by=user)
    UpdateLog.objects.create(agent=agent, package_type="apt", packages=[PACKAGE], action="install", succeeded=True,
                             exit_code=0, duration_seconds=42.5)
    token_create(label="laptops of the accounting department", max_seats=25, expires_in=timedelta(hours=24),
                 created_by=user)
    audit_token_issue(user=user, label="SIEM export (nightly)", issued_by="admin")
    release_build(version="0.1.23.5", actor="test")
    Group.objects.create(name="Operators")
    AgentGroup.objects.create(name="production build runners", rule_tag="production",
                              rule_hostname_pattern="build-runner-*.lab.example.internal", rule_package_type="apt")
    Schedule.objects.create(name="redflag.retention", func="events_app.tasks.events_purge_task")
    for success in (True, False):
        Task.objects.create(id=f"{int(success):032d}", name="alpha-bravo-charlie-delta", func="agents_app.tasks.x",
                            started=now, stopped=now, success=success, result="done")
    OrmQ.objects.create(key="default", payload="payload")
    return agent


def changelists() -> list[str]:
    return sorted(reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
                  for model in admin.site._registry)


def columns_out_of_view(page) -> list[str]:
    """The column headers of the page's table that end right of the viewport (reachable only by scrolling)."""
    return page.evaluate("""() => {
        const width = document.documentElement.clientWidth;
        return [...document.querySelectorAll("table thead th")]
            .filter(th => th.getBoundingClientRect().right > width + 0.5)
            .map(th => th.innerText.trim() || th.className);
    }""")


def header_texts(page) -> list[str]:
    return [text.strip().lower() for text in page.locator("#result_list thead th").all_inner_texts()]


def test_every_list_fits_a_1366_screen(laptop_page, live_server, fleet, stream_requests):
    page = laptop_page
    log_in(page, "admin", PASSWORD)
    out_of_view, measured = {}, set()
    for url in changelists():
        page.goto(url)
        if not page.url.endswith(url):
            continue  # a one-row model (Server settings) whose list leads straight to its form
        if page.locator("#result_list tbody tr").count() == 0:
            continue  # an empty list shows no table; the fixture fills every list of FIXTURE_APPS (checked below)
        measured.add(url)
        hidden = columns_out_of_view(page)
        if hidden:
            out_of_view[url] = hidden
        screenshot(page, "list" + url.replace("/admin", "").replace("/", "_").rstrip("_"))
        if page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth"):
            out_of_view.setdefault(url, []).append("(the page itself scrolls sideways)")
    assert out_of_view == {}, f"columns out of view at {LAPTOP['width']} px: {out_of_view}"
    unmeasured = {url for url in changelists() if url.split("/")[2] in FIXTURE_APPS} - measured
    assert unmeasured == {"/admin/redflag/serversettings/"}, "lists the fixture left empty, so not measured"

    for url_name, wanted in NAMED_COLUMNS.items():
        page.goto(reverse(f"admin:{url_name}_changelist"))
        headers = header_texts(page)
        for column in wanted:
            assert any(column in header for header in headers), f"{url_name}: no {column!r} column in {headers}"

    # "No reboot needed" is not a failure: no red ✗ for the agent that needs none.
    Agent.objects.filter(pk=fleet.pk).update(reboot_required=False)
    page.goto(reverse("admin:agents_app_agent_changelist"))
    reboot_cell = page.locator("#result_list tbody tr td.field-reboot_flag")
    expect(reboot_cell.locator("img[alt=False]")).to_have_count(0)
    expect(reboot_cell).to_have_text("—")

    # The auditor's history: every column, the message included, on screen.
    page.goto(reverse("events:history"))
    expect(page.locator("#event-rows")).to_contain_text(PACKAGE)
    assert columns_out_of_view(page) == []
    assert not page.evaluate("document.documentElement.scrollWidth > document.documentElement.clientWidth")
    screenshot(page, "audit_history")
    leave_and_wait_for_streams(page, stream_requests, 3 * STREAM_SECONDS)
