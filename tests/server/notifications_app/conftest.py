"""Fixtures of the notification tests: destinations and rules made through their write paths."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import Max

from events_app.models import SEQ_NAME, SystemEvent
from notifications_app.choices import DestinationKind
from notifications_app.hooks import wanted
from notifications_app.models import Destination, DispatchCursor, Rule
from notifications_app.services import destination_save, rule_save


def make_destination(name: str, url: str, *, kind: str = DestinationKind.APPRISE, secret: str = "") -> Destination:
    return destination_save(destination=Destination(name=name, kind=kind), url=url, signing_secret=secret,
                            actor="admin")


def make_rule(name: str, destinations, **fields) -> Rule:
    rule = rule_save(rule=Rule(name=name, **fields), actor="admin")
    rule.destinations.set(destinations)
    return rule


def last_seq_handed_out() -> int:
    """PostgreSQL's sequence keeps counting across the tests' rolled-back transactions; SQLite's MAX(seq)+1 does not."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {SEQ_NAME}")
            return cursor.fetchone()[0]
    return SystemEvent.objects.aggregate(top=Max("seq"))["top"] or 0


@pytest.fixture(autouse=True)
def _cursor_after_earlier_tests(db):
    """The dispatch cursor where an install's migration leaves it: after every seq handed out so far, so
    the seqs earlier tests used and rolled back are not holes to wait for."""
    DispatchCursor.objects.update_or_create(pk=1, defaults={"position": last_seq_handed_out(), "done_above": []})


@pytest.fixture(autouse=True)
def _fresh_wanted_types():
    """Each test starts with the post-save hook's per-process copy of the rules forgotten."""
    wanted.forget()
    yield
    wanted.forget()
