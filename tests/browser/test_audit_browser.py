"""The auditor in a real browser: log in, filter, watch a new event arrive live, download a CSV, and be
refused on an admin change page that is not theirs to see."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from django.db import transaction
from django.urls import reverse
from playwright.sync_api import expect

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event
from redflag.models import ServerSettings
from tests.browser.conftest import wait_until
from tests.server.events_app.helpers import PASSWORD, make_user
from tokens_app.models import RegistrationToken
from tokens_app.services import token_create

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STREAM_SECONDS = 4
LIVE_TIMEOUT_MS = 20_000  # SQLite streams poll every second; PostgreSQL ones wake on NOTIFY
# From the filtered page's load to its EventSource's reconnect: one stream lifetime, the 2 s retry, and the
# live and mallory steps that run meanwhile.
RECONNECT_TIMEOUT_MS = 2 * LIVE_TIMEOUT_MS
STREAMS_END_TIMEOUT = 3 * STREAM_SECONDS  # a stream ends at its lifetime; SQLite ones look every second


def committed_event(**fields):
    """An event as the server records one: in its own transaction, visible to the streams once committed."""
    with transaction.atomic():
        return record_event(**fields)


def failed_login(name: str):
    return committed_event(event_type=EventType.AUTH_FAILURE, subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                           component=Component.SECURITY, message=f"Failed log-in for {name!r}",
                           metadata={"username": name})


def nth_stream_response(count: int, url_part: str):
    """A predicate for ``page.expect_response``: true from the ``count``-th response of an event stream whose
    URL contains ``url_part`` (the first is the page's EventSource connecting, the next ones its reconnects)."""
    stream_path = reverse("events:stream")
    seen = 0

    def predicate(response) -> bool:
        nonlocal seen
        if stream_path in response.url and url_part in response.url:
            seen += 1
        return seen >= count

    return predicate


@pytest.fixture
def history(settings):
    ServerSettings.forget()
    # Short-lived streams: the page reconnects by itself (Last-Event-ID) during the test, and the
    # last stream has ended (and returned its connection) soon after the page leaves.
    settings.REDFLAG_EVENT_STREAM_SECONDS = STREAM_SECONDS
    make_user("audrey", auditor=True)
    failed_login("bob")
    committed_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                    message="poll interval changed")


def test_auditor_filters_watches_live_exports_and_is_refused_elsewhere(page, live_server, history, stream_requests):
    # Log in: the history page sends an anonymous visitor to the admin log-in, and back.
    page.goto("/audit/events/")
    assert "/admin/login/" in page.url
    page.fill("#id_login", "audrey")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/audit/events/$"))
    assert page.locator("#event-rows").inner_text().count("poll interval changed") == 1

    # Filter by type: the filter lands in the URL (shareable) and only matching rows show. The filtered page's
    # stream connections are counted from its first one on: the second is EventSource reconnecting after the
    # first stream's end (STREAM_SECONDS), whenever that comes during the steps below.
    page.select_option("#id_event_type", "auth_failure")
    with page.expect_response(nth_stream_response(2, "event_type=auth_failure"),
                              timeout=RECONNECT_TIMEOUT_MS) as reconnected:
        page.click("form.rf-filters button[type=submit]")
        page.wait_for_url(re.compile(r"event_type=auth_failure"))
        rows = page.locator("#event-rows")
        assert "Failed log-in for 'bob'" in rows.inner_text()
        assert "poll interval changed" not in rows.inner_text()

        # Live: a new matching event appears without reload; a non-matching one does not.
        page.wait_for_function("document.getElementById('live-status').textContent === 'live'")
        committed_event(event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS,
                        component=Component.CONFIG, message="not for this filter")
        failed_login("mallory")
        page.locator("#event-rows tr.live", has_text="Failed log-in for 'mallory'").wait_for(timeout=LIVE_TIMEOUT_MS)

    # Across the stream's end: EventSource reconnected by itself, resuming after the last event it was sent,
    # and the next event still arrives.
    assert reconnected.value.ok
    assert reconnected.value.request.header_value("last-event-id"), "the reconnect resumes (Last-Event-ID)"
    expect(page.locator("#live-status")).to_have_text("live")
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

    # Leave the history page; every stream it opened (each a live-server thread) ends within its lifetime.
    page.goto("about:blank")
    assert stream_requests.started >= 3, "the unfiltered page's stream, the filtered one's, and its reconnect"
    wait_until(lambda: not stream_requests.serving, STREAMS_END_TIMEOUT, "the live server's event streams end")
