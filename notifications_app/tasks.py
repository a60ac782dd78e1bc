"""django-q2 entry points (the minute schedule is created by migration 0002)."""

from __future__ import annotations

from notifications_app.services import delivery_attempt, events_dispatch, notifications_tick


def send_delivery(delivery_id: str) -> str | None:
    return delivery_attempt(delivery_id=delivery_id)


def dispatch_events() -> int:
    return events_dispatch()


def tick() -> dict[str, int]:
    return notifications_tick()
