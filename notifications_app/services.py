"""The write paths of notifications: destinations, routing events to deliveries, digests, sending.

How an event reaches a destination (and why this way):

* Events are read back from the SystemEvent table after a stored cursor (``DispatchCursor``, by
  ``seq``), never handed over in memory: an event recorded by any web process, cluster or raw SQL
  load is seen, a crash between commit and hand-over loses nothing, and a dispatcher that was down
  catches up. ``events_dispatch`` runs on commit of an event some rule may want (hooks.py) and every
  minute as a backstop (the "Notifications" schedule).
* Each batch advances the cursor with a conditional UPDATE on its ``version`` in the same transaction
  that creates the deliveries: with several clusters, one commits a batch and the others back off,
  so nothing is sent twice.
* Sending is separate (``delivery_attempt``, a django-q2 task per delivery): a slow or dead
  destination never holds up the cursor or the other destinations.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone
from django_q.tasks import async_task

from agents_app.models import Agent
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.models import SystemEvent
from events_app.rendering import event_record
from events_app.services import SYSTEM_ACTOR, record_event
from notifications_app import hooks, senders, vault
from notifications_app.choices import Cadence, DeliveryKind, DeliveryStatus, DestinationKind, Trigger
from notifications_app.matching import UNROUTED_TYPES, trigger_matches, wanted_types
from notifications_app.models import (
    Delivery,
    DeliveryAttachment,
    DeliveryAttempt,
    Destination,
    DigestEntry,
    DispatchCursor,
    OfflineAlert,
    Rule,
)

SEND_TASK = "notifications_app.tasks.send_delivery"
DISPATCH_BATCH = 500
# A missing seq older than this is a rolled-back insert, not a slow commit: the cursor moves past it.
HOLE_GRACE = timedelta(minutes=10)
MAX_ATTEMPTS = 6
RETRY_BASE = timedelta(minutes=1)
RETRY_CAP = timedelta(hours=1)
FAILING_THRESHOLD = 5
# A worker that claimed a delivery and died: another may take it after this long.
CLAIM_TIMEOUT = timedelta(minutes=5)
OFFLINE_BATCH = 500
SUBJECT_PREFIX = "[RedFlag]"
# A first attempt is the on-commit task's job; the sweep takes it only if that task never ran.
SWEEP_GRACE = timedelta(minutes=1)
MIN_SIGNING_SECRET_LENGTH = 16


# --- destinations -----------------------------------------------------------------------------------


def destination_url_error(kind: str, url: str) -> str | None:
    """Why ``url`` cannot be a destination of ``kind``, or None."""
    url = url.strip()
    if any(ord(ch) < 32 for ch in url):
        return "The URL contains control characters."
    if kind == DestinationKind.WEBHOOK:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "A webhook URL starts with http:// or https:// and names a host."
        return None
    if not senders.apprise_understands(url):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return (f"Apprise does not understand this URL (scheme {scheme!r}): check the scheme and the parts it "
                "needs, e.g. ntfy://host/topic, mailtos://user:password@example.com, tgram://bot_token/chat_id.")
    return None


def destination_save(*, destination: Destination, url: str = "", signing_secret: str = "",
                     actor: str = SYSTEM_ACTOR) -> Destination:
    """Create or change a destination. A blank ``url`` or ``signing_secret`` keeps the stored one.

    Validates the URL for its kind (ValidationError naming the field), stores URL and secret
    encrypted, and records a config_changed event naming only the masked URL.
    """
    adding = destination.pk is None
    if url:
        error = destination_url_error(destination.kind, url)
        if error:
            raise ValidationError({"url": error})
        destination.url_encrypted = vault.encrypt(url.strip())
        destination.url_masked = vault.mask_url(url)
    elif adding or not destination.url_encrypted:
        raise ValidationError({"url": "A destination needs a URL."})
    if destination.kind == DestinationKind.WEBHOOK:
        if signing_secret:
            if len(signing_secret) < MIN_SIGNING_SECRET_LENGTH:
                raise ValidationError({"signing_secret": f"Use at least {MIN_SIGNING_SECRET_LENGTH} characters."})
            destination.signing_secret_encrypted = vault.encrypt(signing_secret)
        elif not destination.signing_secret_encrypted:
            raise ValidationError({"signing_secret": "A webhook needs a signing secret."})
    with transaction.atomic():
        destination.save()
        record_event(
            event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.NOTIFICATION,
            message=f"{actor} {'added' if adding else 'changed'} notification destination {destination.name}",
            metadata={"destination_id": destination.pk, "name": destination.name, "kind": destination.kind,
                      "url": destination.url_masked, "enabled": destination.enabled,
                      "url_changed": bool(url), "signing_secret_changed": bool(signing_secret)},
            actor=actor)
    return destination


def destination_test(*, destination: Destination, actor: str) -> Delivery:
    """Queue a test message to one destination."""
    with transaction.atomic():
        return _queue(destination=destination, kind=DeliveryKind.TEST,
                      subject=f"{SUBJECT_PREFIX} Test notification",
                      body=f"{actor} sent this test from RedFlag to {destination.name}.",
                      payload={"type": "test", "requested_by": actor})


def rule_save(*, rule: Rule, actor: str = SYSTEM_ACTOR) -> Rule:
    """Create or change a rule (its destinations are set by the caller in the same transaction)."""
    adding = rule.pk is None
    with transaction.atomic():
        rule.save()
        record_event(
            event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.NOTIFICATION,
            message=f"{actor} {'added' if adding else 'changed'} notification rule {rule.name}",
            metadata={"rule_id": rule.pk, "name": rule.name, "trigger": rule.trigger, "cadence": rule.cadence,
                      "event_types": rule.event_types, "min_severity": rule.min_severity,
                      "group": rule.group.name if rule.group_id else None, "enabled": rule.enabled},
            actor=actor)
    # This process sees the change at once; the others within hooks.WANTED_TTL_SECONDS.
    hooks.wanted.forget()
    return rule


# --- queueing -----------------------------------------------------------------------------------------


def _enqueue_on_commit(delivery_ids: Iterable) -> None:
    for delivery_id in delivery_ids:
        transaction.on_commit(lambda pk=str(delivery_id): async_task(SEND_TASK, pk, task_name=f"notify-{pk}"))


def _queue(*, destination: Destination, kind: str, subject: str, body: str, payload: dict, rule: Rule | None = None,
           event: SystemEvent | None = None, event_type: str = "",
           attachments: Sequence[tuple[str, bytes, str]] = ()) -> Delivery:
    delivery = Delivery(destination=destination, destination_name=destination.name, rule=rule, kind=kind,
                        event_type=event.event_type if event else event_type, event_id=event.pk if event else None,
                        subject=subject[:250], body=body)
    delivery.payload = {**payload, "delivery_id": str(delivery.pk), "subject": delivery.subject, "body": body}
    delivery.save()
    DeliveryAttachment.objects.bulk_create([
        DeliveryAttachment(delivery=delivery, name=name, content=content, mimetype=mimetype)
        for name, content, mimetype in attachments])
    _enqueue_on_commit([delivery.pk])
    return delivery


def notification_send(*, subject: str, body: str, attachments: Sequence[tuple[str, bytes, str]] = (),
                      event_type: str = EventType.REPORT, group=None) -> int:
    """Queue ``subject``/``body`` (with attachments: (file name, bytes, MIME type)) to every enabled
    destination of the enabled event rules taking ``event_type`` for ``group`` (None: the whole
    fleet; a group's message also goes to the fleet-wide rules). Returns the deliveries queued.

    A message goes at once, whatever the rule's cadence (a digest has no room for attachments), and
    whatever its minimum severity (a message has none).
    """
    rules = Rule.objects.taking_messages(event_type=event_type, group=group)
    destinations = list(Destination.objects.filter(rules__in=rules, enabled=True).distinct())
    with transaction.atomic():
        for destination in destinations:
            _queue(destination=destination, kind=DeliveryKind.MESSAGE, subject=subject, body=body,
                   event_type=event_type, attachments=attachments,
                   payload={"type": "message", "event_type": str(event_type),
                            "group": group.name if group is not None else None})
    return len(destinations)


# --- routing events -------------------------------------------------------------------------------------


def event_subject(event: SystemEvent) -> str:
    where = f" {event.hostname}:" if event.hostname else ""
    return f"{SUBJECT_PREFIX} {event.severity.upper()}{where} {event.message}"[:250]


def event_text(event: SystemEvent) -> str:
    lines = [event.message, "",
             f"Event: {event.event_type}/{event.event_subtype} ({event.severity}), {event.component}",
             f"When: {event.created_at:%Y-%m-%d %H:%M:%S} UTC"]
    if event.hostname:
        lines.append(f"Agent: {event.hostname}")
    return "\n".join(lines)


def digest_due(cadence: str, moment: datetime) -> datetime:
    """The end of the digest period ``moment`` falls in (hours and days in UTC)."""
    moment = moment.astimezone(dt_timezone.utc)
    if cadence == Cadence.DAILY:
        return moment.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    return moment.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _route(rule: Rule, *, kind: str, subject: str, body: str, line: str, record: dict, created_at: datetime,
           event: SystemEvent | None = None) -> int:
    """Queue one matched item for every enabled destination of ``rule``: a delivery now, or a digest line."""
    queued = 0
    for destination in rule.destinations.all():
        if not destination.enabled:
            continue
        if rule.cadence == Cadence.IMMEDIATE:
            _queue(destination=destination, kind=kind, subject=subject, body=body, rule=rule, event=event,
                   payload={"type": kind, "rule": rule.name, "event": record})
            queued += 1
        else:
            DigestEntry.objects.create(rule=rule, destination=destination, event_id=event.pk if event else None,
                                       line=line, record=record, created_at=created_at,
                                       due_at=digest_due(rule.cadence, created_at))
    return queued


def _route_events(rules: list[Rule], events: list[SystemEvent]) -> int:
    agent_ids = {event.agent_id for event in events if event.agent_id}
    members: dict[int, set] = {}
    for rule in rules:
        if rule.group_id is not None and rule.group_id not in members:
            members[rule.group_id] = set(Agent.objects.filter(rule.group.agents_q(), pk__in=agent_ids)
                                         .values_list("pk", flat=True)) if agent_ids else set()
    queued = 0
    for event in events:
        record = event_record(event)
        for rule in rules:
            if rule.group_id is not None and event.agent_id not in members[rule.group_id]:
                continue
            if trigger_matches(rule, event):
                queued += _route(rule, kind=DeliveryKind.EVENT, subject=event_subject(event), body=event_text(event),
                                 line=f"{event.created_at:%H:%M} {event.severity} {event.hostname or '-'}: "
                                      f"{event.message}", record=record, created_at=event.created_at, event=event)
    return queued


def _advance(position: int, done: set[int], rows: list[tuple[int, str, datetime]], now: datetime) -> int:
    """The new watermark: past every handled seq, and past a missing one once the event after it is
    HOLE_GRACE old (its insert was rolled back; a transaction open that long is not coming back)."""
    for seq, _, created_at in rows:
        if seq > position + 1 and now - created_at < HOLE_GRACE:
            break  # a younger hole: its event may still commit
        if seq not in done:
            break
        position = seq
    return position


class _LostRace(Exception):
    """Another dispatcher committed this batch first."""


def events_dispatch(*, now: datetime | None = None, batch: int = DISPATCH_BATCH) -> int:
    """Route new SystemEvents to deliveries and digest lines; returns the deliveries queued.

    1. Read the cursor, then the next (seq, type, time) rows after its position: the narrow read
       every event costs, ``batch`` of them beside those in ``done_above`` (handled already).
    2. Load the enabled event rules; only rows of a type some rule can match are read in full, so
       check-ins cost nothing while no rule asks for them.
    3. In one transaction: advance the cursor with a conditional UPDATE on its version (0 rows:
       another dispatcher has this batch, back off) and create the deliveries and digest lines;
       the send tasks are enqueued on commit.
    4. Repeat while batches come back full.
    """
    now = now or timezone.now()
    queued = 0
    while True:
        cursor, _ = DispatchCursor.objects.get_or_create(pk=1)
        done = set(cursor.done_above)
        # Room for ``batch`` new rows beside those already done above a hole.
        limit = batch + len(done)
        rows = list(SystemEvent.objects.filter(seq__gt=cursor.position).order_by("seq")
                    .values_list("seq", "event_type", "created_at")[:limit])
        fresh = [row for row in rows if row[0] not in done]
        done.update(seq for seq, _, _ in fresh)
        position = _advance(cursor.position, done, rows, now)
        if not fresh and position == cursor.position:
            return queued
        rules = list(Rule.objects.enabled().exclude(trigger=Trigger.AGENT_OFFLINE)
                     .select_related("group").prefetch_related("destinations"))
        wanted = wanted_types(rules) if rules else frozenset()
        seqs = [seq for seq, event_type, _ in fresh
                if event_type not in UNROUTED_TYPES and (wanted is None or event_type in wanted)]
        try:
            with transaction.atomic():
                advanced = DispatchCursor.objects.filter(pk=cursor.pk, version=cursor.version).update(
                    position=position, done_above=sorted(seq for seq in done if seq > position),
                    version=F("version") + 1, updated_at=now)
                if not advanced:
                    raise _LostRace
                if seqs:
                    queued += _route_events(rules, list(SystemEvent.objects.filter(seq__in=seqs).order_by("seq")))
        except _LostRace:
            return queued
        if len(rows) < limit:
            return queued


# --- agents offline for N minutes --------------------------------------------------------------------------


def offline_alerts_check(*, now: datetime | None = None) -> int:
    """Tell each offline-for-N-minutes rule about agents silent that long, once per offline spell.

    A spell is identified by the agent's last_seen_at: the OfflineAlert row (unique per rule, agent
    and last_seen_at) is the claim, so two clusters running this together tell it once.
    """
    now = now or timezone.now()
    queued = 0
    rules = (Rule.objects.enabled().filter(trigger=Trigger.AGENT_OFFLINE, offline_minutes__isnull=False)
             .select_related("group").prefetch_related("destinations"))
    for rule in rules:
        told = OfflineAlert.objects.filter(rule=rule, agent=OuterRef("pk"), last_seen_at=OuterRef("last_seen_at"))
        silent = Agent.objects.filter(last_seen_at__lt=now - timedelta(minutes=rule.offline_minutes),
                                      revoked_at__isnull=True).exclude(Exists(told))
        if rule.group_id is not None:
            silent = silent.filter(rule.group.agents_q())
        for agent in silent.order_by("last_seen_at")[:OFFLINE_BATCH]:
            try:
                with transaction.atomic():
                    OfflineAlert.objects.create(rule=rule, agent=agent, last_seen_at=agent.last_seen_at)
                    minutes = int((now - agent.last_seen_at).total_seconds() // 60)
                    message = f"{agent.hostname} has been offline for {minutes} minutes"
                    record = {"agent_id": str(agent.pk), "hostname": agent.hostname,
                              "last_seen_at": agent.last_seen_at.isoformat(), "offline_minutes": minutes}
                    queued += _route(rule, kind=DeliveryKind.OFFLINE, subject=f"{SUBJECT_PREFIX} {message}",
                                     body=f"{message} (last seen {agent.last_seen_at:%Y-%m-%d %H:%M} UTC).",
                                     line=f"{now:%H:%M} offline {agent.hostname}: {message}", record=record,
                                     created_at=now)
            except IntegrityError:
                continue  # another cluster told this spell
    return queued


# --- digests ----------------------------------------------------------------------------------------------


def digests_flush(*, now: datetime | None = None) -> int:
    """Fold each (rule, destination, period) whose period has ended into one delivery.

    The entries are claimed by a conditional UPDATE (delivery still empty) in the transaction that
    creates the delivery, then deleted: a second flusher finds nothing to claim and rolls back.
    """
    now = now or timezone.now()
    keys = (DigestEntry.objects.filter(delivery__isnull=True, due_at__lte=now)
            .values_list("rule_id", "destination_id", "due_at").distinct())
    made = 0
    for rule_id, destination_id, due_at in list(keys):
        try:
            with transaction.atomic():
                made += _digest_one(rule_id, destination_id, due_at)
        except _LostRace:
            continue
    return made


def _digest_one(rule_id: int, destination_id: int, due_at: datetime) -> int:
    rule = Rule.objects.get(pk=rule_id)
    destination = Destination.objects.get(pk=destination_id)
    delivery = Delivery.objects.create(destination=destination, destination_name=destination.name, rule=rule,
                                       kind=DeliveryKind.DIGEST, subject="", body="")
    if not DigestEntry.objects.filter(rule_id=rule_id, destination_id=destination_id, due_at=due_at,
                                      delivery__isnull=True).update(delivery=delivery):
        raise _LostRace
    entries = list(DigestEntry.objects.filter(delivery=delivery).order_by("created_at", "id"))
    period = "day" if rule.cadence == Cadence.DAILY else "hour"
    delivery.subject = (f"{SUBJECT_PREFIX} {rule.name}: {len(entries)} "
                        f"{'event' if len(entries) == 1 else 'events'} in the {period} to {due_at:%Y-%m-%d %H:%M} UTC")
    delivery.body = "\n".join(entry.line for entry in entries)
    delivery.payload = {"type": "digest", "delivery_id": str(delivery.pk), "rule": rule.name,
                        "period_end": due_at.isoformat(), "subject": delivery.subject, "body": delivery.body,
                        "events": [entry.record for entry in entries]}
    delivery.save(update_fields=["subject", "body", "payload"])
    DigestEntry.objects.filter(delivery=delivery).delete()
    _enqueue_on_commit([delivery.pk])
    return 1


# --- sending ----------------------------------------------------------------------------------------------


def retry_delay(failed_attempts: int) -> timedelta:
    """Exponential back-off: 1, 2, 4, 8, 16 minutes ... capped at an hour."""
    return min(RETRY_BASE * (2 ** max(failed_attempts - 1, 0)), RETRY_CAP)


def deliveries_enqueue_due(*, now: datetime | None = None) -> int:
    """The minute sweep: a send task for each retry that is due, and for any first attempt whose
    on-commit task was lost (queued over a minute ago and never tried)."""
    now = now or timezone.now()
    due = Delivery.objects.due(now).filter(Q(attempts__gt=0) | Q(created_at__lt=now - SWEEP_GRACE))
    ids = list(due.order_by("next_attempt_at").values_list("pk", flat=True)[:1000])
    for delivery_id in ids:
        async_task(SEND_TASK, str(delivery_id), task_name=f"notify-{delivery_id}")
    return len(ids)


def _message(delivery: Delivery) -> senders.Message:
    attachments = [(a.name, bytes(a.content), a.mimetype) for a in delivery.attachments.all()]
    payload = dict(delivery.payload)
    if attachments:
        payload["attachments"] = [{"name": name, "mimetype": mimetype,
                                   "content_base64": base64.b64encode(content).decode()}
                                  for name, content, mimetype in attachments]
    return senders.Message(subject=delivery.subject, body=delivery.body, payload=payload,
                           delivery_id=str(delivery.pk), attachments=attachments)


def delivery_attempt(*, delivery_id, now: datetime | None = None) -> str | None:
    """One try at sending a delivery (the django-q2 task). Returns its new status, None if not claimed.

    1. Claim it with a conditional UPDATE (queued and due, or a dead worker's expired claim).
    2. Send outside any transaction, the destination's URL decrypted only here.
    3. In one transaction: log the attempt (its error scrubbed of the URL's secrets), then mark it
       sent, or queue the retry after an exponential back-off, or give up after MAX_ATTEMPTS; count
       the destination's consecutive failures (notification_failing_report at the threshold).
    """
    now = now or timezone.now()
    if not Delivery.objects.due(now).filter(pk=delivery_id).update(status=DeliveryStatus.SENDING,
                                                                   claimed_until=now + CLAIM_TIMEOUT):
        return None
    delivery = Delivery.objects.select_related("destination").get(pk=delivery_id)
    destination = delivery.destination
    if destination is None or not destination.enabled:
        Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.CANCELLED, claimed_until=None,
                                                       last_error="The destination was removed or disabled.")
        return DeliveryStatus.CANCELLED
    fragments: set[str] = set()
    started = time.monotonic()
    try:
        url = vault.decrypt(destination.url_encrypted)
        secret = vault.decrypt(destination.signing_secret_encrypted) if destination.signing_secret_encrypted else ""
        fragments = vault.secret_fragments(url, secret)
        message = _message(delivery)
        if destination.kind == DestinationKind.WEBHOOK:
            error = senders.send_webhook(url, secret, message)
        else:
            error = senders.send_apprise(url, message)
    except Exception as exc:  # a sender bug must not leave the delivery claimed: log it as a failure
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = int((time.monotonic() - started) * 1000)
    error = vault.scrub(error, fragments)[:2000] if error else None
    return _record_attempt(delivery, destination, error=error, now=now, duration_ms=duration_ms)


def _record_attempt(delivery: Delivery, destination: Destination, *, error: str | None, now: datetime,
                    duration_ms: int) -> str:
    number = delivery.attempts + 1
    with transaction.atomic():
        DeliveryAttempt.objects.create(delivery=delivery, destination=destination, destination_name=destination.name,
                                       number=number, attempted_at=now, succeeded=error is None,
                                       error=error or "", duration_ms=duration_ms)
        if error is None:
            status = DeliveryStatus.SENT
            Delivery.objects.filter(pk=delivery.pk).update(status=status, attempts=number, sent_at=now,
                                                           claimed_until=None, last_error="")
            _destination_succeeded(destination, now)
        else:
            status = DeliveryStatus.FAILED if number >= MAX_ATTEMPTS else DeliveryStatus.QUEUED
            Delivery.objects.filter(pk=delivery.pk).update(status=status, attempts=number, claimed_until=None,
                                                           last_error=error, next_attempt_at=now + retry_delay(number))
            _destination_failed(destination, now, error)
    return status


def _destination_succeeded(destination: Destination, now: datetime) -> None:
    Destination.objects.filter(pk=destination.pk).update(consecutive_failures=0, last_success_at=now)
    if Destination.objects.filter(pk=destination.pk, failing_since__isnull=False).update(failing_since=None):
        record_event(event_type=EventType.NOTIFICATION, subtype=EventSubtype.SUCCESS, component=Component.NOTIFICATION,
                     message=f"Notification destination {destination.name} works again",
                     metadata={"destination_id": destination.pk, "name": destination.name,
                               "url": destination.url_masked, "state": "recovered"})


def _destination_failed(destination: Destination, now: datetime, error: str) -> None:
    Destination.objects.filter(pk=destination.pk).update(consecutive_failures=F("consecutive_failures") + 1,
                                                         last_failure_at=now)
    # The claim on reporting: only the attempt that flips failing_since from empty reports it.
    if Destination.objects.filter(pk=destination.pk, failing_since__isnull=True,
                                  consecutive_failures__gte=FAILING_THRESHOLD).update(failing_since=now):
        notification_failing_report(destination=destination, error=error)


def notification_failing_report(*, destination: Destination, error: str) -> int:
    """Record that ``destination`` is failing (once per failing spell) and tell every other enabled
    destination. Returns the notices queued."""
    message = (f"Notification destination {destination.name} is failing: {FAILING_THRESHOLD} attempts in a row "
               "did not get through")
    record_event(event_type=EventType.NOTIFICATION, subtype=EventSubtype.FAILED, component=Component.NOTIFICATION,
                 severity=Severity.ERROR, message=message,
                 metadata={"destination_id": destination.pk, "name": destination.name, "url": destination.url_masked,
                           "state": "failing", "last_error": error[:500]})
    others = Destination.objects.filter(enabled=True).exclude(pk=destination.pk)
    for other in others:
        _queue(destination=other, kind=DeliveryKind.FAILING, subject=f"{SUBJECT_PREFIX} {message}",
               body=f"{message}.\nLast error: {error[:500]}\nIt is retried with each new notification; "
                    "RedFlag says so here once, not for every message it misses.",
               payload={"type": "destination_failing", "destination": destination.name,
                        "url": destination.url_masked, "last_error": error[:500]})
    return others.count()


def notifications_tick(*, now: datetime | None = None) -> dict[str, int]:
    """Every minute: route new events, check offline agents, fold due digests, send due retries."""
    now = now or timezone.now()
    return {"routed": events_dispatch(now=now), "offline": offline_alerts_check(now=now),
            "digests": digests_flush(now=now), "due": deliveries_enqueue_due(now=now)}
