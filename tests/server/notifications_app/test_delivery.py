"""Real deliveries to real local receivers: a webhook receiver checking the signature with the README's
code, an ntfy-style HTTP endpoint (Apprise's ntfy://), and an SMTP server (Apprise's mailto://)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.models import SystemEvent
from events_app.services import record_event, security_violation
from notifications_app.choices import Cadence, DeliveryKind, DeliveryStatus, DestinationKind, Trigger
from notifications_app.models import Delivery, DeliveryAttempt, Destination, DigestEntry
from notifications_app.services import (
    FAILING_THRESHOLD,
    MAX_ATTEMPTS,
    delivery_attempt,
    digests_flush,
    events_dispatch,
    notification_send,
    retry_delay,
)
from tests.server.notifications_app.conftest import make_destination, make_rule
from tests.server.notifications_app.receivers import HttpReceiver, SmtpReceiver, readme_verify

pytestmark = pytest.mark.django_db

SIGNING_SECRET = "whsec-0123456789abcdef-signing"


def warning(message: str, *, event_type=EventType.AGENT_INSTALL, subtype=EventSubtype.FAILED) -> SystemEvent:
    with transaction.atomic():
        return record_event(event_type=event_type, subtype=subtype, component=Component.AGENT,
                            severity=Severity.WARNING, message=message, hostname="web-01")


def send_pending(now=None) -> list[str]:
    return [delivery_attempt(delivery_id=pk, now=now)
            for pk in Delivery.objects.filter(status=DeliveryStatus.QUEUED).values_list("pk", flat=True)]


def test_the_webhook_is_signed_and_the_readme_code_verifies_it():
    with HttpReceiver(secret=SIGNING_SECRET.encode()) as receiver:
        hook = make_destination("siem hook", f"http://127.0.0.1:{receiver.port}/in?token=url-token-9876",
                                kind=DestinationKind.WEBHOOK, secret=SIGNING_SECRET)
        make_rule("violations", [hook], trigger=Trigger.SECURITY_VIOLATION)
        with transaction.atomic():
            event = security_violation("Replayed refresh token for web-01", agent=None, metadata={"family": "f1"})
        assert events_dispatch() == 1
        assert send_pending() == [DeliveryStatus.SENT]
    [request] = receiver.requests
    assert request.verified is True
    assert request.path == "/in?token=url-token-9876"
    payload = json.loads(request.body)
    assert payload["type"] == "event" and payload["rule"] == "violations"
    assert payload["event"]["id"] == str(event.pk) and payload["event"]["event_type"] == "security_violation"
    assert request.headers["X-RedFlag-Delivery"] == payload["delivery_id"]

    # The README's verify refuses what a receiver must refuse: another body, another key, an old timestamp.
    verify, code = readme_verify()
    assert len(code.strip().splitlines()) <= 10
    headers = request.headers
    assert not verify(SIGNING_SECRET.encode(), headers, request.body.replace(b"web-01", b"web-02"))
    assert not verify(b"another-secret-entirely", headers, request.body)
    old = dict(headers, **{"X-RedFlag-Timestamp": str(int(time.time()) - 301)})
    assert not verify(SIGNING_SECRET.encode(), old, request.body)
    assert not verify(SIGNING_SECRET.encode(), {}, request.body)


def test_a_receiver_failing_twice_gets_the_message_on_the_third_attempt_after_back_off():
    with HttpReceiver(statuses=(500, 503, 200)) as ntfy:
        destination = make_destination("phone", f"ntfy://127.0.0.1:{ntfy.port}/ops-alerts")
        make_rule("installs", [destination], trigger=Trigger.INSTALL_FAILED)
        warning("apt upgrade of openssl failed on web-01")
        events_dispatch()
        delivery = Delivery.objects.get()
        start = timezone.now()

        assert delivery_attempt(delivery_id=delivery.pk, now=start) == DeliveryStatus.QUEUED
        delivery.refresh_from_db()
        assert delivery.next_attempt_at == start + retry_delay(1) == start + timedelta(minutes=1)
        # Not due yet: nothing is sent.
        assert delivery_attempt(delivery_id=delivery.pk, now=start + timedelta(seconds=59)) is None

        second = start + timedelta(minutes=1)
        assert delivery_attempt(delivery_id=delivery.pk, now=second) == DeliveryStatus.QUEUED
        delivery.refresh_from_db()
        assert delivery.next_attempt_at == second + timedelta(minutes=2)
        # What the receiver said is kept, without the topic (a secret of ntfy URLs).
        assert "error=503" in delivery.last_error and "ops-alerts" not in delivery.last_error

        third = second + timedelta(minutes=2)
        assert delivery_attempt(delivery_id=delivery.pk, now=third) == DeliveryStatus.SENT
    assert len(ntfy.requests) == 3
    assert all(request.path == "/ops-alerts" or b"ops-alerts" in request.body for request in ntfy.requests)
    assert b"apt upgrade of openssl failed" in ntfy.requests[-1].body
    attempts = list(DeliveryAttempt.objects.order_by("number").values_list("number", "succeeded"))
    assert attempts == [(1, False), (2, False), (3, True)]
    destination.refresh_from_db()
    assert destination.consecutive_failures == 0 and destination.last_success_at == third
    assert [retry_delay(n).total_seconds() / 60 for n in range(1, MAX_ATTEMPTS)] == [1, 2, 4, 8, 16]


def test_a_destination_that_keeps_failing_is_reported_once_and_recovers():
    with HttpReceiver(statuses=(503,)) as broken, HttpReceiver() as healthy:
        failing = make_destination("broken gotify", f"ntfy://127.0.0.1:{broken.port}/down")
        other = make_destination("team ntfy", f"ntfy://127.0.0.1:{healthy.port}/team")
        make_rule("installs to broken", [failing], trigger=Trigger.INSTALL_FAILED)
        for number in range(4):
            warning(f"install {number} failed")
        events_dispatch()
        now = timezone.now()
        # 4 deliveries x 2 attempts = 8 failed attempts, well past the threshold of 5.
        failed = 0
        for round_ in range(2):
            for delivery in Delivery.objects.filter(destination=failing):
                delivery_attempt(delivery_id=delivery.pk, now=now + timedelta(hours=round_))
                failed += 1
                failing.refresh_from_db()
                assert failing.is_failing == (failed >= FAILING_THRESHOLD)
        assert failing.consecutive_failures == 8 and failing.is_failing
        reports = SystemEvent.objects.filter(event_type=EventType.NOTIFICATION, event_subtype=EventSubtype.FAILED)
        assert reports.count() == 1
        assert reports.get().metadata["name"] == "broken gotify"
        notices = Delivery.objects.filter(kind=DeliveryKind.FAILING)
        assert list(notices.values_list("destination_name", flat=True)) == ["team ntfy"]
        assert delivery_attempt(delivery_id=notices.get().pk, now=now + timedelta(hours=2)) == DeliveryStatus.SENT
        assert b"broken gotify is failing" in healthy.requests[0].body

        # The receiver comes back: the next attempt succeeds and clears the mark, recorded once.
        broken.statuses = [200]
        retry = Delivery.objects.filter(destination=failing, status=DeliveryStatus.QUEUED).first()
        assert delivery_attempt(delivery_id=retry.pk, now=now + timedelta(days=1)) == DeliveryStatus.SENT
    failing.refresh_from_db()
    assert not failing.is_failing and failing.consecutive_failures == 0
    assert SystemEvent.objects.filter(event_type=EventType.NOTIFICATION, event_subtype=EventSubtype.SUCCESS,
                                      metadata__state="recovered").count() == 1
    assert Delivery.objects.filter(kind=DeliveryKind.FAILING).count() == 1
    assert other.deliveries.count() == 1


def test_an_hourly_digest_groups_the_hours_events_in_one_message():
    with HttpReceiver() as ntfy:
        destination = make_destination("digest", f"ntfy://127.0.0.1:{ntfy.port}/digest")
        make_rule("hourly installs", [destination], trigger=Trigger.INSTALL_FAILED, cadence=Cadence.HOURLY)
        for host in ("web-01", "web-02", "db-01"):
            warning(f"install failed on {host}")
        warning("an install that worked", subtype=EventSubtype.SUCCESS)
        assert events_dispatch() == 0  # nothing sent at once: three lines wait for the digest
        entries = list(DigestEntry.objects.all())
        assert len(entries) == 3
        due = entries[0].due_at
        assert due.minute == 0 and due.second == 0 and timedelta(0) < due - entries[0].created_at <= timedelta(hours=1)
        assert digests_flush(now=due - timedelta(seconds=1)) == 0
        assert digests_flush(now=due) == 1
        assert digests_flush(now=due) == 0  # folded once
        digest = Delivery.objects.get()
        assert digest.kind == DeliveryKind.DIGEST and "3 events" in digest.subject
        assert delivery_attempt(delivery_id=digest.pk, now=due) == DeliveryStatus.SENT
    [request] = ntfy.requests
    for host in ("web-01", "web-02", "db-01"):
        assert f"install failed on {host}".encode() in request.body
    assert b"an install that worked" not in request.body
    assert not DigestEntry.objects.exists()


def test_notification_send_mails_a_report_with_its_attachment_through_a_real_smtp_server():
    with SmtpReceiver("reports", "Sm7p-pass-word") as smtp:
        mail = make_destination(
            "ops mail", f"mailto://reports:Sm7p-pass-word@127.0.0.1:{smtp.port}"
                        "?from=redflag@example.com&to=ops@example.com")
        webhook = make_destination("hook", "https://hooks.example.com/x", kind=DestinationKind.WEBHOOK,
                                   secret=SIGNING_SECRET)
        make_rule("reports", [mail], event_types=[EventType.REPORT])
        make_rule("only violations", [webhook], event_types=[EventType.SECURITY_VIOLATION])
        csv = b"hostname,compliant\nweb-01,yes\n"
        queued = notification_send(subject="Weekly compliance report", body="92% compliant.",
                                   attachments=[("compliance.csv", csv, "text/csv")])
        assert queued == 1
        delivery = Delivery.objects.get()
        assert delivery.destination == mail and delivery.kind == DeliveryKind.MESSAGE
        assert delivery_attempt(delivery_id=delivery.pk) == DeliveryStatus.SENT
    assert smtp.inbox.logins == [True]
    [(sender, recipients, message)] = smtp.inbox.messages
    assert sender == "redflag@example.com" and recipients == ["ops@example.com"]
    assert message["Subject"] == "Weekly compliance report"
    [attachment] = [part for part in message.iter_attachments()]
    assert attachment.get_filename() == "compliance.csv" and attachment.get_content().encode() == csv
    assert Destination.objects.get(pk=mail.pk).last_success_at is not None
