"""The auditor in a real browser: log in, filter, watch a new event arrive live, download a CSV, and be
refused on an admin change page that is not theirs to see."""

from __future__ import annotations

import csv
import io
import re
import time

import pytest

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event
from tests.server.test_audit_helpers import PASSWORD, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STREAM_SECONDS = 4
LIVE_TIMEOUT_MS = 20_000  # SQLite streams poll every second; PostgreSQL ones wake on NOTIFY


def failed_login(name: str):
    return record_event(event_type=EventType.AUTH_FAILURE, subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                        component=Component.SECURITY, message=f"Failed log-in for {name!r}",
                        metadata={"username": name})


@pytest.fixture
def history(settings):
    from redflag.models import ServerSettings

    ServerSettings.forget()
    # Short-lived streams: the page reconnects by itself (Last-Event-ID) during the test, and the
    # last stream has ended (and returned its connection) soon after the page leaves.
    settings.REDFLAG_EVENT_STREAM_SECONDS = STREAM_SECONDS
    make_user("audrey", auditor=True)
    failed_login("bob")
    record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                 message="poll interval changed")


def test_auditor_filters_watches_live_exports_and_is_refused_elsewhere(page, live_server, history):
    from tokens_app.models import RegistrationToken
    from tokens_app.services import token_create
    from datetime import timedelta

    # Log in: the history page sends an anonymous visitor to the admin log-in, and back.
    page.goto("/audit/events/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", "audrey")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/audit/events/$"))
    assert page.locator("#event-rows").inner_text().count("poll interval changed") == 1

    # Filter by type: the filter lands in the URL (shareable) and only matching rows show.
    page.select_option("#id_event_type", "auth_failure")
    page.click("form.filters button[type=submit]")
    page.wait_for_url(re.compile(r"event_type=auth_failure"))
    rows = page.locator("#event-rows")
    assert "Failed log-in for 'bob'" in rows.inner_text()
    assert "poll interval changed" not in rows.inner_text()

    # Live: a new matching event appears without reload; a non-matching one does not.
    page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
    record_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                 message="not for this filter")
    failed_login("mallory")
    page.locator("#event-rows tr.live", has_text="Failed log-in for 'mallory'").wait_for(timeout=LIVE_TIMEOUT_MS)

    # Across the stream's end: EventSource reconnects by itself and the next event still arrives.
    time.sleep(STREAM_SECONDS + 1)
    failed_login("trudy")
    page.locator("#event-rows tr.live", has_text="Failed log-in for 'trudy'").wait_for(timeout=LIVE_TIMEOUT_MS)
    assert rows.inner_text().count("Failed log-in for 'mallory'") == 1, "a resumed stream repeats no row"
    assert "not for this filter" not in rows.inner_text()

    # Export the current filter as CSV.
    with page.expect_download() as download_info:
        page.click("#export-csv")
    download = download_info.value
    assert download.suggested_filename.endswith(".csv")
    exported = list(csv.DictReader(io.StringIO(open(download.path(), encoding="utf-8").read())))
    assert {row["event_type"] for row in exported} == {"auth_failure"}
    assert {row["message"] for row in exported} >= {"Failed log-in for 'bob'", "Failed log-in for 'mallory'"}

    # Refused on an admin change page that is not theirs (tokens are admin business).
    token, _ = token_create(label="fleet", max_seats=1, expires_in=timedelta(hours=1))
    response = page.goto(f"/admin/tokens_app/registrationtoken/{token.pk}/change/")
    assert response.status == 403
    assert RegistrationToken.objects.filter(pk=token.pk, revoked_at__isnull=True).exists()

    # Leave the history page; its stream (a live-server thread) ends within its lifetime.
    page.goto("about:blank")
    time.sleep(STREAM_SECONDS + 2)
